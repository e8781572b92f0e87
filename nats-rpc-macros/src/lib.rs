//! Implementation detail of `nats-rpc`: the `#[nats_rpc]` attribute. Depend on `nats-rpc`, which
//! re-exports it and documents it.
//!
//! The macro is a pipeline: `args` parses the attribute, `ast` borrows a model of the handler
//! from the `fn` and checks it against the rules in `valid`, `expand` renders the glue, and
//! `fallback` renders the fn untouched, the errors and a stand-in endpoint type when anything
//! was wrong, so a mistake shows up once, on the user's own token, and never as a cascade from
//! half-generated code or from code that registers the endpoint.

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
        Err(err) => {
            let mut err = err;
            err.combine(syn::Error::new(
                proc_macro2::Span::call_site(),
                "`#[nats_rpc]` goes on an `async fn` handler",
            ));
            return fallback::render(item, None, err).into();
        }
    };
    let args = syn::parse::Parser::parse(args::Args::parse_terminated, attr);
    match ast::Handler::from_fn(&func, args) {
        Ok(handler) => expand::render(&func, &handler).into(),
        Err(err) => {
            fallback::render(quote::ToTokens::into_token_stream(&func), Some(&func), err).into()
        }
    }
}
