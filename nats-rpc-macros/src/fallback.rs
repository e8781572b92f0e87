//! On any error: the item exactly as written, the `compile_error!`s, and, when the item is a
//! fn, the endpoint type of the same name with a stand-in `Endpoint` impl. Keeping the fn means
//! code that calls it still type-checks, and keeping the type means code that registers it
//! (`Service::builder(..).endpoint::<get>()`) does too: the user sees only the real mistakes,
//! never "expected type, found function" on top.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{FnArg, GenericArgument, ItemFn, PathArguments, ReturnType, Type};

pub fn render(item: TokenStream, func: Option<&ItemFn>, err: syn::Error) -> TokenStream {
    let errors = err.to_compile_error();
    // A method sits in an `impl`, where no type can be declared: nothing to stand in for.
    let endpoint = func
        .filter(|func| func.sig.receiver().is_none())
        .map(stand_in);
    quote! {
        #item
        #errors
        #endpoint
    }
}

/// The endpoint type with what could be read of the handler's types (so calls elsewhere still
/// line up), `()` and `nats_rpc::Error` where nothing usable could; its `call` never runs, as
/// the build fails on the errors above.
fn stand_in(func: &ItemFn) -> TokenStream {
    let vis = &func.vis;
    let ident = &func.sig.ident;
    let unit: Type = syn::parse_quote!(());
    if !func.sig.generics.params.is_empty() {
        // Its types may name the fn's own generic parameters, unknown out here.
        return stand_in_with(vis, ident, &unit, &unit, &unit, quote!(::nats_rpc::Error));
    }
    let typed: Vec<&Type> = func
        .sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(pat) => Some(&*pat.ty),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let state = typed
        .first()
        .and_then(|ty| match ty {
            Type::Reference(reference) => usable(&reference.elem),
            _ => None,
        })
        .unwrap_or(&unit);
    let request = typed
        .get(1)
        .and_then(|ty| match ty {
            Type::Reference(reference) => usable(&reference.elem),
            other => usable(other),
        })
        .unwrap_or(&unit);
    let (response, error) = result_types(&func.sig.output);
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

/// `(Response, Error)` of `-> Result<Response, Error>`, each if usable.
fn result_types(output: &ReturnType) -> (Option<&Type>, Option<&Type>) {
    let ReturnType::Type(_, ty) = output else {
        return (None, None);
    };
    let Type::Path(path) = &**ty else {
        return (None, None);
    };
    let Some(last) = path.path.segments.last() else {
        return (None, None);
    };
    let PathArguments::AngleBracketed(generics) = &last.arguments else {
        return (None, None);
    };
    if last.ident != "Result" {
        return (None, None);
    }
    let mut types = generics.args.iter().filter_map(|arg| match arg {
        GenericArgument::Type(ty) => usable(ty),
        _ => None,
    });
    (types.next(), types.next())
}
