//! The attribute's arguments: `subject = "..."` (required) and `name = "..."` (optional).
//! Literals are kept as `LitStr` so every later error can point at the string the user wrote.

use syn::parse::ParseStream;
use syn::{Ident, LitStr, Token};

/// The `#[nats_rpc(...)]` arguments, as far as they could be read: a well-formed `subject`
/// or `name` is kept even when another argument is wrong, so its own rules are still checked.
#[derive(Default)]
pub struct Args {
    pub subject: Option<LitStr>,
    pub name: Option<LitStr>,
}

const EXPECTED: &str = "expected `subject` or `name`";

impl Args {
    /// Reads `key = "literal", ...`, collecting every unknown, duplicate or malformed argument
    /// rather than stopping at the first. A syntax error (a missing `=` or `,`) ends the
    /// reading, and is reported with what was collected before it; `subject` is only called
    /// missing when everything was read and no unknown argument could have been it misspelt.
    pub fn parse(attr: proc_macro2::TokenStream) -> (Args, Option<syn::Error>) {
        let mut args = Args::default();
        let mut errors: Option<syn::Error> = None;
        let read = |input: ParseStream<'_>| {
            let read = args.read(input, &mut errors);
            if read.is_err() {
                // What follows the syntax error is not read; syn would call it unexpected.
                input.parse::<proc_macro2::TokenStream>()?;
            }
            Ok(read)
        };
        let missing = match syn::parse::Parser::parse2(read, attr).and_then(|read| read) {
            Ok(maybe_subject) => (!maybe_subject).then(|| {
                syn::Error::new(
                    proc_macro2::Span::call_site(),
                    "missing argument `subject`, write `#[nats_rpc(subject = \"svc.op\")]`",
                )
            }),
            Err(syntax) => Some(syntax),
        };
        if let Some(err) = missing {
            crate::valid::fold(&mut errors, err);
        }
        (args, errors)
    }

    /// Reads the arguments into `self` and their mistakes into `errors`; `Err` for a syntax
    /// error, which ends the reading, else whether an argument that may be the subject was met
    /// (`subject` itself, an unknown one, or an unnamed literal).
    fn read(
        &mut self,
        input: ParseStream<'_>,
        errors: &mut Option<syn::Error>,
    ) -> syn::Result<bool> {
        let mut push = |err: syn::Error| crate::valid::fold(errors, err);
        let mut maybe_subject = false;
        while !input.is_empty() {
            if input.peek(LitStr) {
                // `#[nats_rpc("svc.op")]`: the subject, unnamed. Reported with what to write;
                // the other arguments are still read and checked.
                let lit: LitStr = input.parse()?;
                push(syn::Error::new(
                    lit.span(),
                    format!("name the argument: write `subject = \"{}\"`", lit.value()),
                ));
                maybe_subject = true;
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
                "subject" => Some(&mut self.subject),
                "name" => Some(&mut self.name),
                other => {
                    push(syn::Error::new(
                        key.span(),
                        format!("unknown argument `{other}`, {EXPECTED}"),
                    ));
                    maybe_subject = true;
                    None
                }
            };
            if key == "subject" {
                // Written, if wrongly: reported above, not called missing too.
                maybe_subject = true;
            }
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
        Ok(maybe_subject)
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::Args;

    /// Every message the arguments gave, in order.
    fn read(attr: proc_macro2::TokenStream) -> (Args, Vec<String>) {
        let (args, errors) = Args::parse(attr);
        let messages = errors
            .into_iter()
            .flat_map(|err| err.into_iter().map(|one| one.to_string()))
            .collect();
        (args, messages)
    }

    #[test]
    fn a_syntax_error_keeps_the_mistakes_read_before_it() {
        let (_, messages) = read(quote!(subjct = "a" name = "b"));
        assert_eq!(
            messages,
            [
                "unknown argument `subjct`, expected `subject` or `name`",
                "expected `,`"
            ]
        );
    }

    #[test]
    fn a_good_subject_is_kept_beside_a_wrong_argument() {
        let (args, messages) = read(quote!(subject = "a*", nmae = "x"));
        assert_eq!(args.subject.map(|lit| lit.value()).as_deref(), Some("a*"));
        assert_eq!(
            messages,
            ["unknown argument `nmae`, expected `subject` or `name`"]
        );
    }

    #[test]
    fn subject_is_missing_only_when_nothing_could_have_been_it() {
        let (_, messages) = read(quote!(name = "x"));
        assert_eq!(
            messages,
            ["missing argument `subject`, write `#[nats_rpc(subject = \"svc.op\")]`"]
        );
        for written in [
            quote!(subjet = "kv.get"),
            quote!(subject = 5),
            quote!("kv.get"),
        ] {
            let (_, messages) = read(written);
            assert_eq!(messages.len(), 1, "{messages:?}");
            assert!(!messages[0].starts_with("missing"), "{messages:?}");
        }
        let (_, messages) = read(quote!(name = 5));
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[1].starts_with("missing argument `subject`"));
    }
}
