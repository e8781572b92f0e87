//! The attribute's arguments: `subject = "..."` (required) and `name = "..."` (optional).
//! Literals are kept as `LitStr` so every later error can point at the string the user wrote.

use syn::parse::ParseStream;
use syn::{Ident, LitStr, Token};

/// The parsed `#[nats_rpc(...)]` arguments.
pub struct Args {
    pub subject: LitStr,
    pub name: Option<LitStr>,
}

const EXPECTED: &str = "expected `subject` or `name`";

impl Args {
    /// Parses `key = "literal", ...`, reporting every unknown, duplicate or malformed argument
    /// at once rather than stopping at the first.
    pub fn parse_terminated(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut subject: Option<LitStr> = None;
        let mut name: Option<LitStr> = None;
        let mut errors: Option<syn::Error> = None;
        let mut push = |err: syn::Error| crate::valid::fold(&mut errors, err);

        while !input.is_empty() {
            if input.peek(LitStr) {
                // `#[nats_rpc("svc.op")]`: the subject, unnamed. Reported with what to write;
                // the other arguments are still read and checked.
                let lit: LitStr = input.parse()?;
                push(syn::Error::new(
                    lit.span(),
                    format!("name the argument: write `subject = \"{}\"`", lit.value()),
                ));
                if input.is_empty() {
                    break;
                }
                input.parse::<Token![,]>()?;
                continue;
            }
            let key: Ident = input.call(syn::ext::IdentExt::parse_any)?;
            if !input.peek(Token![=]) {
                return Err(syn::Error::new(
                    key.span(),
                    format!("expected `{key} = \"...\"`"),
                ));
            }
            input.parse::<Token![=]>()?;
            let value: syn::Expr = input.parse()?;
            let lit = match value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(lit),
                    ..
                }) => Some(lit),
                other => {
                    push(syn::Error::new_spanned(
                        other,
                        format!("`{key}` takes a string literal, e.g. `{key} = \"svc.op\"`"),
                    ));
                    None
                }
            };
            let slot = match key.to_string().as_str() {
                "subject" => Some(&mut subject),
                "name" => Some(&mut name),
                other => {
                    push(syn::Error::new(
                        key.span(),
                        format!("unknown argument `{other}`, {EXPECTED}"),
                    ));
                    None
                }
            };
            if let (Some(slot), Some(lit)) = (slot, lit) {
                if slot.is_some() {
                    push(syn::Error::new(
                        key.span(),
                        format!("duplicate argument `{key}`"),
                    ));
                } else {
                    *slot = Some(lit);
                }
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }

        if let Some(err) = errors {
            return Err(err);
        }
        let subject = subject.ok_or_else(|| {
            syn::Error::new(
                proc_macro2::Span::call_site(),
                "missing argument `subject`, write `#[nats_rpc(subject = \"svc.op\")]`",
            )
        })?;
        Ok(Args { subject, name })
    }
}
