//! The rules a handler must follow, one small fn each. Every error points at the user's own
//! token and says what to write instead (lowercase, no trailing period, code in backticks).

use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, LitStr, PathArguments, ReturnType, Signature, Type};

const SHAPE: &str = "`async fn name(state: &State, request: Request) -> Result<Response, Error>`";
const SUBJECT_PARAM: &str = "`subject: nats_rpc::Subject<'_>` or `context: nats_rpc::Context<'_>`";

/// Adds `err` to the errors collected so far, so the user sees every mistake in one build.
pub fn fold(errors: &mut Option<syn::Error>, err: syn::Error) {
    match errors {
        Some(all) => all.combine(err),
        None => *errors = Some(err),
    }
}

pub fn is_async(sig: &Signature) -> syn::Result<()> {
    match sig.asyncness {
        Some(_) => Ok(()),
        None => Err(syn::Error::new(
            sig.fn_token.span,
            "`#[nats_rpc]` handler must be an `async fn`",
        )),
    }
}

/// No `const`, `unsafe`, `extern` or variadics: the runtime calls the handler like any async fn.
pub fn plain_fn(sig: &Signature) -> syn::Result<()> {
    if let Some(token) = &sig.constness {
        return Err(syn::Error::new(
            token.span,
            "`#[nats_rpc]` handler cannot be `const`, remove `const`",
        ));
    }
    if let syn::Safety::Unsafe(token) = &sig.safety {
        return Err(syn::Error::new(
            token.span,
            "`#[nats_rpc]` handler cannot be `unsafe`: the runtime calls it for every request, \
             remove `unsafe` and keep the unsafe block inside",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new_spanned(
            abi,
            "`#[nats_rpc]` handler cannot have an ABI, remove it",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            variadic,
            format!("`#[nats_rpc]` handler cannot be variadic, write {SHAPE}"),
        ));
    }
    Ok(())
}

pub fn not_generic(sig: &Signature) -> syn::Result<()> {
    if sig.generics.params.is_empty() && sig.generics.where_clause.is_none() {
        return Ok(());
    }
    Err(syn::Error::new_spanned(
        &sig.generics,
        "`#[nats_rpc]` handler cannot be generic: each endpoint has one concrete request, \
         response and error type, so its schema is known; name the types",
    ))
}

/// NATS subject syntax: dot-separated non-empty tokens, no whitespace, wildcards only as whole
/// tokens and `>` only last.
pub fn subject(lit: &LitStr) -> syn::Result<()> {
    let subject = lit.value();
    let fail = |message: String| Err(syn::Error::new(lit.span(), message));
    if subject.is_empty() {
        return fail("subject must not be empty, write e.g. `subject = \"svc.op\"`".into());
    }
    if subject.chars().any(char::is_whitespace) {
        return fail(format!("subject `{subject}` must not contain whitespace"));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    if tokens.iter().any(|token| token.is_empty()) {
        return fail(format!(
            "subject `{subject}` has an empty token, separate tokens with single dots \
             and do not start or end with a dot"
        ));
    }
    for (index, token) in tokens.iter().enumerate() {
        for wildcard in ['*', '>'] {
            if token.contains(wildcard) && token.len() != 1 {
                return fail(format!(
                    "wildcard `{wildcard}` must be a whole token in subject `{subject}`, \
                     write `.{wildcard}.` or `.{wildcard}` at the end"
                ));
            }
        }
        if *token == ">" && index + 1 != tokens.len() {
            return fail(format!(
                "`>` must be the last token of subject `{subject}`, use `*` to match one token"
            ));
        }
    }
    Ok(())
}

/// NATS micro endpoint names are `[A-Za-z0-9_-]+`.
pub fn endpoint_name(lit: &LitStr) -> syn::Result<()> {
    let name = lit.value();
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Ok(());
    }
    Err(syn::Error::new(
        lit.span(),
        format!("endpoint name `{name}` must be non-empty and use only `A-Z a-z 0-9 _ -`"),
    ))
}

/// What the handler's parameters name: the state's referent, the request type, and what its
/// optional third parameter receives.
pub struct Params<'a> {
    pub state: &'a Type,
    pub request: &'a Type,
    pub third: Option<Third>,
}

/// What a handler's third parameter receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Third {
    /// `nats_rpc::Subject<'_>`: the subject the request arrived on.
    Subject,
    /// `nats_rpc::Context<'_>`: the subject, the headers and the deadline.
    Context,
}

/// `(state: &State, request: Request)`, optionally followed by `subject: nats_rpc::Subject<'_>`
/// or `context: nats_rpc::Context<'_>`.
pub fn params(sig: &Signature) -> syn::Result<Params<'_>> {
    let mut typed = Vec::with_capacity(3);
    for (index, arg) in sig.inputs.iter().enumerate() {
        match arg {
            FnArg::Receiver(receiver) => {
                return Err(syn::Error::new_spanned(
                    receiver,
                    format!(
                        "`#[nats_rpc]` handler is a free fn, not a method: move it out of the \
                         `impl` and take the state as a parameter, {SHAPE}"
                    ),
                ));
            }
            FnArg::Typed(pat) if index >= 3 => {
                return Err(syn::Error::new_spanned(
                    pat,
                    format!(
                        "unexpected parameter: a handler takes the state, the request and \
                         optionally {SUBJECT_PARAM}, {SHAPE}"
                    ),
                ));
            }
            FnArg::Typed(pat) => typed.push(&*pat.ty),
        }
    }
    let (state, request, subject) = match typed[..] {
        [state, request] => (state, request, None),
        [state, request, subject] => (state, request, Some(subject)),
        _ => {
            return Err(syn::Error::new(
                sig.paren_token.span.join(),
                format!("handler takes two parameters, the state and the request: {SHAPE}"),
            ));
        }
    };
    let state = match state {
        Type::Reference(reference) => {
            if let Some(token) = &reference.mutability {
                return Err(syn::Error::new(
                    token.span,
                    "requests run concurrently and share the state: take `&State`, not \
                     `&mut State`, and use interior mutability (a `Mutex`, an atomic) inside",
                ));
            }
            &*reference.elem
        }
        other => {
            return Err(syn::Error::new_spanned(
                other,
                "the first parameter is the service state, shared by reference: write \
                 `state: &State`",
            ));
        }
    };
    if let Type::Reference(reference) = request {
        return Err(syn::Error::new(
            reference.and_token.span,
            "the request is decoded for each call and owned by the handler: take it by value, \
             remove the `&`",
        ));
    }
    let third = subject.map(third_param).transpose()?;
    concrete(state)?;
    concrete(request)?;
    Ok(Params {
        state,
        request,
        third,
    })
}

/// The third parameter, when there is one, receives the request's subject or its whole
/// context, by value.
fn third_param(ty: &Type) -> syn::Result<Third> {
    let last = match ty {
        Type::Path(path) => path.path.segments.last().map(|last| &last.ident),
        _ => None,
    };
    match last {
        Some(ident) if ident == "Subject" => Ok(Third::Subject),
        Some(ident) if ident == "Context" => Ok(Third::Context),
        _ => Err(syn::Error::new_spanned(
            ty,
            format!(
                "the third parameter receives the subject the request arrived on, or its whole \
                 context (subject, headers, deadline): write {SUBJECT_PARAM}, or remove it"
            ),
        )),
    }
}

/// `Result<Response, Error>`: returns both type arguments.
pub fn output(sig: &Signature) -> syn::Result<(&Type, &Type)> {
    const MESSAGE: &str = "handler must return `Result<Response, Error>`";
    let ty = match &sig.output {
        ReturnType::Type(_, ty) => &**ty,
        ReturnType::Default => {
            return Err(syn::Error::new(
                sig.paren_token.span.close(),
                format!("{MESSAGE}, add `-> Result<Response, Error>`"),
            ));
        }
    };
    let wrong = || Err(syn::Error::new_spanned(ty, MESSAGE));
    let Type::Path(path) = ty else {
        return wrong();
    };
    let Some(last) = path.path.segments.last() else {
        return wrong();
    };
    let PathArguments::AngleBracketed(generics) = &last.arguments else {
        return wrong();
    };
    let types: Vec<&Type> = generics
        .args
        .iter()
        .filter_map(|arg| match arg {
            GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
        .collect();
    match (last.ident == "Result", &types[..], generics.args.len()) {
        (true, &[response, error], 2) => {
            concrete(response)?;
            concrete(error)?;
            Ok((response, error))
        }
        _ => wrong(),
    }
}

/// Rejects `impl Trait` and `_`: an endpoint's types are named so its schema can be derived.
fn concrete(ty: &Type) -> syn::Result<()> {
    match ty {
        Type::ImplTrait(_) | Type::Infer(_) => Err(syn::Error::new(
            ty.span(),
            "name a concrete type here: the endpoint's schema is derived from it",
        )),
        _ => Ok(()),
    }
}
