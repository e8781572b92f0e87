//! Renders a valid handler: the fn exactly as written, plus a type of the same name that
//! implements `::nats_rpc::Endpoint` by calling it. Everything else (decoding, validation,
//! the envelope, replies) is runtime generics, so the glue stays a few lines.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;

use crate::ast::Handler;

pub fn render(func: &ItemFn, handler: &Handler<'_>) -> TokenStream {
    let Handler {
        vis,
        ident,
        subject,
        name,
        state,
        request,
        takes_subject,
        response,
        error,
    } = handler;
    let call = if *takes_subject {
        quote! { #ident(state, request, subject) }
    } else {
        quote! {
            let _ = subject;
            #ident(state, request)
        }
    };
    let doc = format!(
        "The `{subject}` endpoint, served by [`fn@{ident}`].\n\n\
         Register it with `Service::builder(..).endpoint::<{ident}>()` and call it with \
         `Client::call::<{ident}>(..)`."
    );
    quote! {
        #func

        #[doc = #doc]
        #[allow(non_camel_case_types, dead_code)]
        #vis struct #ident {}

        impl ::nats_rpc::Endpoint for #ident {
            const SUBJECT: &'static ::core::primitive::str = #subject;
            const NAME: &'static ::core::primitive::str = #name;
            type State = #state;
            type Request = #request;
            type Response = #response;
            type Error = #error;

            fn call<'__nats_rpc_a>(
                state: &'__nats_rpc_a Self::State,
                request: Self::Request,
                subject: ::nats_rpc::Subject<'__nats_rpc_a>,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<Self::Response, Self::Error>,
            > + ::core::marker::Send + '__nats_rpc_a {
                #call
            }
        }
    }
}
