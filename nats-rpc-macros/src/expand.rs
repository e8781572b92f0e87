//! Renders a valid handler: the fn exactly as written, plus a type of the same name that
//! implements `::nats_rpc::Endpoint` by calling it. Everything else (decoding, validation,
//! the envelope, replies) is runtime generics, so the glue stays a few lines.

use proc_macro2::TokenStream;
use quote::quote;

use crate::ast::{Handler, Third};

/// Renders a handler [`crate::valid::check`] accepted.
pub fn render(handler: &Handler<'_>) -> TokenStream {
    const CHECKED: &str = "checked by valid::check";
    let func = handler.func;
    let ident = handler.ident();
    let subject = handler.subject().expect(CHECKED);
    let name = handler.name();
    let state = handler.state().expect(CHECKED);
    let request = handler.request().expect(CHECKED);
    let (response, error) = handler.result.expect(CHECKED);
    // The glue's own names are prefixed: a handler may itself be called `state`, `request` or
    // `context`, and a plain parameter of that name would shadow it.
    let call = match handler.third() {
        Some(Third::Subject) => quote! {
            #ident(__nats_rpc_state, __nats_rpc_request, __nats_rpc_context.subject())
        },
        Some(Third::Context) => quote! {
            #ident(__nats_rpc_state, __nats_rpc_request, __nats_rpc_context)
        },
        None => quote! {
            let _ = __nats_rpc_context;
            #ident(__nats_rpc_state, __nats_rpc_request)
        },
    };
    let doc = format!(
        "The `{subject}` endpoint, served by [`fn@{ident}`].\n\n\
         Register it with `Service::builder(..).endpoint::<{ident}>()` and call it with \
         `Client::call::<{ident}>(..)`."
    );
    let endpoint = endpoint_type(EndpointType {
        doc: Some(&doc),
        vis: handler.vis(),
        ident,
        subject: &subject,
        name: &name,
        state: quote!(#state),
        request: quote!(#request),
        response: quote!(#response),
        error: quote!(#error),
        call,
    });
    quote! {
        #func
        #endpoint
    }
}

/// What the endpoint type is made of; the same for a valid handler and for the stand-in
/// [`crate::fallback`] emits after an error.
pub struct EndpointType<'a> {
    pub doc: Option<&'a str>,
    pub vis: &'a syn::Visibility,
    pub ident: &'a syn::Ident,
    pub subject: &'a str,
    pub name: &'a str,
    pub state: TokenStream,
    pub request: TokenStream,
    pub response: TokenStream,
    pub error: TokenStream,
    /// The body of `Endpoint::call`, with `__nats_rpc_state`, `__nats_rpc_request` and
    /// `__nats_rpc_context` in scope.
    pub call: TokenStream,
}

/// `struct <ident> {}` and its `::nats_rpc::Endpoint` impl.
pub fn endpoint_type(endpoint: EndpointType<'_>) -> TokenStream {
    let EndpointType {
        doc,
        vis,
        ident,
        subject,
        name,
        state,
        request,
        response,
        error,
        call,
    } = endpoint;
    let doc = doc.map(|doc| quote!(#[doc = #doc]));
    quote! {
        #doc
        #[allow(non_camel_case_types, dead_code)]
        #vis struct #ident {}

        #[automatically_derived]
        impl ::nats_rpc::Endpoint for #ident {
            const SUBJECT: &'static ::core::primitive::str = #subject;
            const NAME: &'static ::core::primitive::str = #name;
            type State = #state;
            type Request = #request;
            type Response = #response;
            type Error = #error;

            fn call<'__nats_rpc_a>(
                __nats_rpc_state: &'__nats_rpc_a Self::State,
                __nats_rpc_request: Self::Request,
                __nats_rpc_context: ::nats_rpc::Context<'__nats_rpc_a>,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<Self::Response, Self::Error>,
            > + ::core::marker::Send + '__nats_rpc_a {
                #call
            }
        }
    }
}
