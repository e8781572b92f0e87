//! The rules a handler must follow, checked on the model [`crate::ast`] read, one small fn
//! each. Every error points at the user's own token and says what to write instead (lowercase,
//! no trailing period, code in backticks), and [`check`] reports every one in one build.

use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, LitStr, PathArguments, ReturnType, Signature, Type};

use crate::args::Args;
use crate::ast::{Handler, Third};

const SHAPE: &str = "`async fn name(state: &State, request: Request) -> Result<Response, Error>`";
const SUBJECT_PARAM: &str = "`subject: nats_rpc::Subject<'_>` or `context: nats_rpc::Context<'_>`";

/// Checks every rule and reports all violations together, each on the offending token: the
/// attribute's (`args_error`, from reading it) first, then the fn's.
pub fn check(handler: &Handler<'_>, args_error: Option<syn::Error>) -> syn::Result<()> {
    let sig = &handler.func.sig;
    let mut errors = args_error;
    let mut check = |result: syn::Result<()>| {
        if let Err(err) = result {
            fold(&mut errors, err);
        }
    };
    check(is_async(sig));
    check(plain_fn(sig));
    check(not_generic(sig));
    arguments(&handler.args).for_each(|err| check(Err(err)));
    check(params(sig, handler.swapped()));
    check(output(sig, handler.result));
    errors.map_or(Ok(()), Err)
}

/// The mistakes of the `subject` and `name` the attribute gives (where it gives them), against
/// their rules: on a fn, and on an item that is not one.
pub fn arguments(args: &Args) -> impl Iterator<Item = syn::Error> {
    [
        args.subject.as_ref().map(subject),
        args.name.as_ref().map(endpoint_name),
    ]
    .into_iter()
    .flatten()
    .filter_map(Result::err)
}

/// Adds `err` to the errors collected so far, so the user sees every mistake in one build.
pub fn fold(errors: &mut Option<syn::Error>, err: syn::Error) {
    match errors {
        Some(all) => all.combine(err),
        None => *errors = Some(err),
    }
}

fn is_async(sig: &Signature) -> syn::Result<()> {
    match sig.asyncness {
        Some(_) => Ok(()),
        None => Err(syn::Error::new(
            sig.fn_token.span,
            "`#[nats_rpc]` handler must be an `async fn`",
        )),
    }
}

/// No `const`, `unsafe`, `extern` or variadics: the runtime calls the handler like any async fn.
/// Every one present is reported.
fn plain_fn(sig: &Signature) -> syn::Result<()> {
    let mut errors = None;
    if let Some(token) = &sig.constness {
        fold(
            &mut errors,
            syn::Error::new(
                token.span,
                "`#[nats_rpc]` handler cannot be `const`, remove `const`",
            ),
        );
    }
    if let syn::Safety::Unsafe(token) = &sig.safety {
        fold(
            &mut errors,
            syn::Error::new(
                token.span,
                "`#[nats_rpc]` handler cannot be `unsafe`: the runtime calls it for every \
                 request, remove `unsafe` and keep the unsafe block inside",
            ),
        );
    }
    if let Some(abi) = &sig.abi {
        fold(
            &mut errors,
            syn::Error::new_spanned(abi, "`#[nats_rpc]` handler cannot have an ABI, remove it"),
        );
    }
    if let Some(variadic) = &sig.variadic {
        fold(
            &mut errors,
            syn::Error::new_spanned(
                variadic,
                format!("`#[nats_rpc]` handler cannot be variadic, write {SHAPE}"),
            ),
        );
    }
    errors.map_or(Ok(()), Err)
}

fn not_generic(sig: &Signature) -> syn::Result<()> {
    if sig.generics.params.is_empty() && sig.generics.where_clause.is_none() {
        return Ok(());
    }
    let lifetimes_only = sig.generics.where_clause.is_none()
        && sig
            .generics
            .params
            .iter()
            .all(|param| matches!(param, syn::GenericParam::Lifetime(_)));
    if lifetimes_only {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "`#[nats_rpc]` handler takes no lifetime parameters: remove them and write \
             `state: &State` (and `Context<'_>`), the borrows' lifetimes are the call's",
        ));
    }
    Err(syn::Error::new_spanned(
        &sig.generics,
        "`#[nats_rpc]` handler cannot be generic: each endpoint has one concrete request, \
         response and error type, so its schema is known; name the types",
    ))
}

/// NATS subject syntax: dot-separated non-empty tokens, no whitespace, wildcards only as whole
/// tokens and `>` only last.
fn subject(lit: &LitStr) -> syn::Result<()> {
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
fn endpoint_name(lit: &LitStr) -> syn::Result<()> {
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

/// `(state: &State, request: Request)`, optionally followed by `subject: nats_rpc::Subject<'_>`
/// or `context: nats_rpc::Context<'_>`. Every mistake among the parameters is reported.
fn params(sig: &Signature, swapped: bool) -> syn::Result<()> {
    let mut errors = None;
    let mut typed = Vec::with_capacity(3);
    for (index, arg) in sig.inputs.iter().enumerate() {
        match arg {
            FnArg::Receiver(receiver) => fold(
                &mut errors,
                syn::Error::new_spanned(
                    receiver,
                    format!(
                        "`#[nats_rpc]` handler is a free fn, not a method: move it out of the \
                         `impl` and take the state as a parameter, {SHAPE}"
                    ),
                ),
            ),
            FnArg::Typed(pat) if index >= 3 => fold(
                &mut errors,
                syn::Error::new_spanned(
                    pat,
                    format!(
                        "unexpected parameter: a handler takes the state, the request and \
                         optionally {SUBJECT_PARAM}, {SHAPE}"
                    ),
                ),
            ),
            FnArg::Typed(pat) => typed.push(&*pat.ty),
        }
    }
    let (state, request, third) = match typed[..] {
        [state, request] => (state, request, None),
        [state, request, third] => (state, request, Some(third)),
        _ if errors.is_some() => return Err(errors.expect("checked")),
        _ => {
            return Err(syn::Error::new(
                sig.paren_token.span.join(),
                format!("handler takes two parameters, the state and the request: {SHAPE}"),
            ));
        }
    };
    let mut check = |result: syn::Result<()>| {
        if let Err(err) = result {
            fold(&mut errors, err);
        }
    };
    if swapped {
        check(Err(syn::Error::new(
            sig.paren_token.span.join(),
            format!(
                "the state comes first, by reference, then the request, by value (swap these \
                 two if they are the other way round): {SHAPE}"
            ),
        )));
        if let Some(third) = third {
            check(third_param(third));
        }
        return errors.map_or(Ok(()), Err);
    }
    match state {
        Type::Reference(reference) => {
            if let Some(token) = &reference.mutability {
                check(Err(syn::Error::new(
                    token.span,
                    "requests run concurrently and share the state: take `&State`, not \
                     `&mut State`, and use interior mutability (a `Mutex`, an atomic) inside",
                )));
            }
            check(concrete(&reference.elem));
        }
        other => check(Err(syn::Error::new_spanned(
            other,
            "the first parameter is the service state, shared by reference: write \
             `state: &State`",
        ))),
    }
    if let Type::Reference(reference) = request {
        check(Err(syn::Error::new(
            reference.and_token.span,
            "the request is decoded for each call and owned by the handler: take it by \
             value, remove the `&`",
        )));
    }
    check(concrete(request));
    if let Some(third) = third {
        check(third_param(third));
    }
    errors.map_or(Ok(()), Err)
}

/// The third parameter, when there is one, receives the request's subject or its whole
/// context, by value.
fn third_param(ty: &Type) -> syn::Result<()> {
    match Third::of(ty) {
        Some(third) => match named_lifetime(ty) {
            Some(lifetime) => Err(syn::Error::new_spanned(
                lifetime,
                format!(
                    "the {} borrows from the request for this call only: write `'_` here",
                    match third {
                        Third::Subject => "subject",
                        Third::Context => "context",
                    }
                ),
            )),
            None => Ok(()),
        },
        None => Err(syn::Error::new_spanned(
            ty,
            format!(
                "the third parameter receives the subject the request arrived on, or its whole \
                 context (subject, headers, deadline): write {SUBJECT_PARAM}, or remove it"
            ),
        )),
    }
}

/// A lifetime other than `'_` among the type's generic arguments (`Context<'static>`).
fn named_lifetime(ty: &Type) -> Option<&syn::Lifetime> {
    let Type::Path(path) = ty else {
        return None;
    };
    let PathArguments::AngleBracketed(generics) = &path.path.segments.last()?.arguments else {
        return None;
    };
    generics.args.iter().find_map(|arg| match arg {
        GenericArgument::Lifetime(lifetime) if lifetime.ident != "_" => Some(lifetime),
        _ => None,
    })
}

/// `Result<Response, Error>` (read as `result`), both types named.
fn output(sig: &Signature, result: Option<(&Type, &Type)>) -> syn::Result<()> {
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
    let Some((response, error)) = result else {
        let one_argument = match ty {
            Type::Path(path) => path.path.segments.last().is_some_and(|last| {
                last.ident == "Result"
                    && matches!(&last.arguments, PathArguments::AngleBracketed(generics)
                        if generics.args.len() == 1)
            }),
            _ => false,
        };
        if one_argument {
            return Err(syn::Error::new_spanned(
                ty,
                format!(
                    "{MESSAGE} with both types written, e.g. `Result<Response, nats_rpc::Error>`: \
                     the macro reads the tokens and cannot see through a `Result<T>` alias"
                ),
            ));
        }
        return Err(syn::Error::new_spanned(ty, MESSAGE));
    };
    let mut errors = None;
    for ty in [response, error] {
        if let Err(err) = concrete(ty) {
            fold(&mut errors, err);
        }
    }
    errors.map_or(Ok(()), Err)
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

#[cfg(test)]
mod tests {
    use syn::{LitStr, parse_quote};

    use super::{endpoint_name, subject};

    fn subject_error(text: &str) -> Option<String> {
        let lit: LitStr = parse_quote!(#text);
        subject(&lit).err().map(|err| err.to_string())
    }

    #[test]
    fn subjects_follow_nats_syntax() {
        for ok in [
            "a",
            "rosey.db.kv.set",
            "a.*.c",
            "a.>",
            "*",
            ">",
            "a.*.>",
            "a-b_c.d",
        ] {
            assert_eq!(subject_error(ok), None, "{ok}");
        }
        for (bad, says) in [
            ("", "must not be empty"),
            ("a b", "must not contain whitespace"),
            ("a.\tb", "must not contain whitespace"),
            ("a..b", "has an empty token"),
            (".a", "has an empty token"),
            ("a.", "has an empty token"),
            ("a*", "wildcard `*` must be a whole token"),
            ("a.b*.c", "wildcard `*` must be a whole token"),
            ("a.>b", "wildcard `>` must be a whole token"),
            ("a.>.b", "`>` must be the last token"),
        ] {
            let error = subject_error(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(error.contains(says), "{bad:?}: {error}");
        }
    }

    #[test]
    fn endpoint_names_are_micro_names() {
        for ok in ["get", "get-one", "Get_2"] {
            let lit: LitStr = parse_quote!(#ok);
            assert!(endpoint_name(&lit).is_ok(), "{ok}");
        }
        for bad in ["", "get one", "get.one", "gét", "a/b"] {
            let lit: LitStr = parse_quote!(#bad);
            let error = endpoint_name(&lit).unwrap_err().to_string();
            assert!(
                error.contains("must be non-empty and use only"),
                "{bad:?}: {error}"
            );
        }
    }
}

#[cfg(test)]
mod check_tests {
    use syn::{ItemFn, parse_quote};

    use super::check;
    use crate::args::Args;
    use crate::ast::Handler;

    fn errors(func: ItemFn) -> Vec<String> {
        let handler = Handler::from_syn(&func, Args::default());
        match check(&handler, None) {
            Ok(()) => Vec::new(),
            Err(err) => err.into_iter().map(|err| err.to_string()).collect(),
        }
    }

    #[test]
    fn a_valid_handler_passes() {
        let func: ItemFn =
            parse_quote! { async fn get(s: &S, r: R, c: Context<'_>) -> Result<A, B> {} };
        assert_eq!(errors(func), Vec::<String>::new());
    }

    #[test]
    fn a_wrong_argument_does_not_hide_the_subject_rules() {
        let func: ItemFn = parse_quote! { async fn get(s: &S, r: R) -> Result<A, B> {} };
        let (args, args_error) = Args::parse(quote::quote!(subject = "a*", nmae = "x"));
        let handler = Handler::from_syn(&func, args);
        let found: Vec<String> = check(&handler, args_error)
            .expect_err("two mistakes")
            .into_iter()
            .map(|err| err.to_string())
            .collect();
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(
            found[0].starts_with("unknown argument `nmae`"),
            "{found:#?}"
        );
        assert!(found[1].contains("`*`"), "{found:#?}");
    }

    #[test]
    fn every_mistake_is_reported_in_order() {
        let func: ItemFn = parse_quote! {
            const unsafe fn get(state: &mut S, request: &R) -> Result<impl Trait, _> {}
        };
        let found = errors(func);
        let expected = [
            "must be an `async fn`",
            "cannot be `const`",
            "cannot be `unsafe`",
            "not `&mut State`",
            "take it by value",
            "name a concrete type",
            "name a concrete type",
        ];
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        for (error, says) in found.iter().zip(expected) {
            assert!(error.contains(says), "{error} (expected: {says})");
        }
    }
}
