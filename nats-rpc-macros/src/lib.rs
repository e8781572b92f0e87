//! Implementation detail of `nats-rpc`: the `#[nats_rpc]` attribute. Depend on `nats-rpc`, which
//! re-exports it and documents it.
//!
//! The macro is a pipeline, shaped like thiserror's: `args` parses the attribute, `ast` reads a
//! model of the handler from the `fn` without judging it, `valid` checks the model against every
//! rule, `expand` renders the glue for a valid model, and `fallback` renders the fn as written
//! (less a reported `const`), the errors and a stand-in endpoint type built from what the model
//! could read, so a mistake shows up once, on the user's own token, and never as a cascade
//! from half-generated code or from code that registers the endpoint.

mod args;
mod ast;
mod expand;
mod fallback;
mod valid;

use proc_macro::TokenStream;

/// See `nats_rpc::nats_rpc` for the documentation.
#[proc_macro_attribute]
pub fn nats_rpc(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let func: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(not_fn) => {
            // The arguments' own mistakes are reported too, so fixing the item finds no more.
            let (args, mut errors) = args::Args::parse(attr.into());
            valid::arguments(&args).for_each(|err| valid::fold(&mut errors, err));
            valid::fold(&mut errors, not_fn);
            valid::fold(
                &mut errors,
                syn::Error::new(
                    proc_macro2::Span::call_site(),
                    "`#[nats_rpc]` goes on an `async fn` handler",
                ),
            );
            let errors = errors.expect("the item's error is there");
            return fallback::render(item, None, errors).into();
        }
    };
    let (args, args_error) = args::Args::parse(attr.into());
    let handler = ast::Handler::from_syn(&func, args);
    match valid::check(&handler, args_error) {
        Ok(()) => expand::render(&handler).into(),
        Err(err) => {
            // The fn is emitted as written, so what uses it still resolves, but without a
            // `const` (already reported): rustc's checks of a const fn (a destructor it cannot
            // run, E0493) would only add errors the fix removes.
            let mut written = func.clone();
            written.sig.constness = None;
            let item = quote::ToTokens::into_token_stream(&written);
            fallback::render(item, Some(&handler), err).into()
        }
    }
}
