//! On any error: the item as written (a fn without its `const`, already reported, whose own
//! checks would only add errors), the `compile_error!`s, and, when the item is a
//! fn, the endpoint type of the same name with a stand-in `Endpoint` impl. Keeping the fn means
//! code that calls it still type-checks, and keeping the type means code that registers it
//! (`Service::builder(..).endpoint::<get>()`) does too: the user sees only the real mistakes,
//! never "expected type, found function" on top.

use proc_macro2::TokenStream;
use quote::quote;
use syn::Type;

use crate::ast::Handler;

pub fn render(item: TokenStream, handler: Option<&Handler<'_>>, err: syn::Error) -> TokenStream {
    let errors = err.to_compile_error();
    // A method sits in an `impl`, where no type can be declared: nothing to stand in for.
    let endpoint = handler
        .filter(|handler| handler.func.sig.receiver().is_none())
        .map(stand_in);
    quote! {
        #item
        #errors
        #endpoint
    }
}

/// The endpoint type with what the model could read of the handler's types (so calls elsewhere
/// still line up), `()` and `nats_rpc::Error` where nothing usable could; its `call` never runs,
/// as the build fails on the errors above.
fn stand_in(handler: &Handler<'_>) -> TokenStream {
    let unit: Type = syn::parse_quote!(());
    let (vis, ident) = (handler.vis(), handler.ident());
    if !handler.func.sig.generics.params.is_empty() {
        // Its types may name the fn's own generic parameters, unknown out here.
        return stand_in_with(vis, ident, &unit, &unit, &unit, quote!(::nats_rpc::Error));
    }
    // Swapped parameters are read as meant, so only the swap is reported (not the state's
    // missing `Deserialize` and `JsonSchema` too).
    let (state, request) = match handler.params[..] {
        [request, Type::Reference(state), ..] if handler.swapped() => {
            (usable(&state.elem), usable(request))
        }
        _ => (
            handler.state().and_then(usable),
            handler.request().and_then(|ty| match ty {
                Type::Reference(reference) => usable(&reference.elem),
                other => usable(other),
            }),
        ),
    };
    let (state, request) = (state.unwrap_or(&unit), request.unwrap_or(&unit));
    let (response, error) = match handler.result {
        Some((response, error)) => (usable(response), usable(error)),
        None => (None, None),
    };
    let response = response.unwrap_or(&unit);
    let error: TokenStream = match error {
        Some(error) => quote!(#error),
        None => quote!(::nats_rpc::Error),
    };
    stand_in_with(vis, ident, state, request, response, error)
}

fn stand_in_with(
    vis: &syn::Visibility,
    ident: &syn::Ident,
    state: &Type,
    request: &Type,
    response: &Type,
    error: TokenStream,
) -> TokenStream {
    crate::expand::endpoint_type(crate::expand::EndpointType {
        doc: None,
        vis,
        ident,
        subject: "",
        name: "",
        state: quote!(#state),
        request: quote!(#request),
        response: quote!(#response),
        error,
        call: quote! {
            let _ = (__nats_rpc_state, __nats_rpc_request, __nats_rpc_context);
            async { ::core::unreachable!("`#[nats_rpc]` reported errors for this handler") }
        },
    })
}

/// A type an associated type can be: not `impl Trait`, not `_`, not borrowed.
fn usable(ty: &Type) -> Option<&Type> {
    match ty {
        Type::ImplTrait(_) | Type::Infer(_) | Type::Reference(_) => None,
        other => Some(other),
    }
}
