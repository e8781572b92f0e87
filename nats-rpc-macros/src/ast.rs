//! The handler as written, read from the `fn` and the attribute without judging it, as
//! thiserror's `ast` does: every piece that could be read is there, whatever else is wrong.
//! [`crate::valid`] checks it, [`crate::expand`] renders it once it is valid, and
//! [`crate::fallback`] renders a stand-in endpoint type from what could be read.

use syn::{FnArg, GenericArgument, Ident, ItemFn, PathArguments, ReturnType, Type, Visibility};

use crate::args::Args;

/// `async fn <ident>(state: &<state>, request: <request>[, subject: Subject<'_> | context:
/// Context<'_>]) -> Result<<response>, <error>>`, as far as it is written so.
pub struct Handler<'a> {
    pub func: &'a ItemFn,
    /// The attribute's arguments, as far as they could be read.
    pub args: Args,
    /// The types of the typed parameters, in order (a `self` receiver is not one).
    pub params: Vec<&'a Type>,
    /// `Response` and `Error` of `-> Result<Response, Error>`, when the return type is written
    /// so.
    pub result: Option<(&'a Type, &'a Type)>,
}

/// What a handler's third parameter receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Third {
    /// `nats_rpc::Subject<'_>`: the subject the request arrived on.
    Subject,
    /// `nats_rpc::Context<'_>`: the subject, the headers and the deadline.
    Context,
}

impl<'a> Handler<'a> {
    pub fn from_syn(func: &'a ItemFn, args: Args) -> Self {
        let params = func
            .sig
            .inputs
            .iter()
            .filter_map(|arg| match arg {
                FnArg::Typed(pat) => Some(&*pat.ty),
                FnArg::Receiver(_) => None,
            })
            .collect();
        Handler {
            func,
            args,
            params,
            result: result_types(&func.sig.output),
        }
    }

    pub fn vis(&self) -> &'a Visibility {
        &self.func.vis
    }

    pub fn ident(&self) -> &'a Ident {
        &self.func.sig.ident
    }

    /// The state's type: what the first parameter borrows.
    pub fn state(&self) -> Option<&'a Type> {
        match self.params.first()? {
            Type::Reference(reference) => Some(&reference.elem),
            _ => None,
        }
    }

    /// `(request: Request, state: &State)`: the first parameter by value and the second by
    /// reference, read as the two the other way round (checked once, told once).
    pub fn swapped(&self) -> bool {
        matches!(self.params[..], [first, Type::Reference(_), ..] if !matches!(first, Type::Reference(_)))
    }

    /// The request's type: the second parameter's.
    pub fn request(&self) -> Option<&'a Type> {
        self.params.get(1).copied()
    }

    /// What the third parameter receives, when there is one of a known kind.
    pub fn third(&self) -> Option<Third> {
        self.params.get(2).and_then(|ty| Third::of(ty))
    }

    /// The `subject` argument's value.
    pub fn subject(&self) -> Option<String> {
        self.args.subject.as_ref().map(syn::LitStr::value)
    }

    /// The NATS micro endpoint name: the `name` argument, else the fn's name.
    pub fn name(&self) -> String {
        match &self.args.name {
            Some(name) => name.value(),
            None => self.ident().to_string(),
        }
    }
}

impl Third {
    /// `Subject<'_>` or `Context<'_>`, by the last segment of the type's path.
    pub fn of(ty: &Type) -> Option<Third> {
        let Type::Path(path) = ty else {
            return None;
        };
        let last = &path.path.segments.last()?.ident;
        if last == "Subject" {
            Some(Third::Subject)
        } else if last == "Context" {
            Some(Third::Context)
        } else {
            None
        }
    }
}

/// `(Response, Error)` of `-> Result<Response, Error>`: a path ending in `Result` with exactly
/// two type arguments.
fn result_types(output: &ReturnType) -> Option<(&Type, &Type)> {
    let ReturnType::Type(_, ty) = output else {
        return None;
    };
    let Type::Path(path) = &**ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    let PathArguments::AngleBracketed(generics) = &last.arguments else {
        return None;
    };
    if last.ident != "Result" || generics.args.len() != 2 {
        return None;
    }
    let mut types = generics.args.iter().map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    Some((types.next()??, types.next()??))
}

#[cfg(test)]
mod tests {
    use quote::ToTokens;
    use syn::{ItemFn, parse_quote};

    use super::{Handler, Third};
    use crate::args::Args;

    fn text(ty: Option<&syn::Type>) -> Option<String> {
        ty.map(|ty| ty.to_token_stream().to_string())
    }

    #[test]
    fn reads_a_valid_handler() {
        let func: ItemFn = parse_quote! {
            pub async fn set(state: &Db, request: SetRequest, context: nats_rpc::Context<'_>)
                -> Result<SetReply, KvError> { todo!() }
        };
        let handler = Handler::from_syn(&func, Args::default());
        assert_eq!(text(handler.state()).as_deref(), Some("Db"));
        assert_eq!(text(handler.request()).as_deref(), Some("SetRequest"));
        assert_eq!(handler.third(), Some(Third::Context));
        let (response, error) = handler.result.expect("a Result");
        assert_eq!(text(Some(response)).as_deref(), Some("SetReply"));
        assert_eq!(text(Some(error)).as_deref(), Some("KvError"));
        assert_eq!(handler.name(), "set");
        assert_eq!(handler.subject(), None);
    }

    #[test]
    fn reads_what_it_can_of_a_broken_one() {
        // Not async, a method, the state by value, a third parameter of no known kind, and a
        // Result with one type: the pieces that are there are still read.
        let func: ItemFn = parse_quote! {
            fn get(&self, state: Db, request: &GetRequest, extra: u8) -> Result<GetReply> {}
        };
        let handler = Handler::from_syn(&func, Args::default());
        assert_eq!(handler.params.len(), 3);
        assert!(handler.state().is_none());
        assert_eq!(text(handler.request()).as_deref(), Some("& GetRequest"));
        assert_eq!(handler.third(), None);
        assert!(handler.result.is_none());

        let func: ItemFn = parse_quote! { async fn f(s: &S, r: R) -> std::result::Result<A, B> {} };
        assert!(Handler::from_syn(&func, Args::default()).result.is_some());
        let func: ItemFn = parse_quote! { async fn f(s: &S, r: R) -> Option<A> {} };
        assert!(Handler::from_syn(&func, Args::default()).result.is_none());
        let func: ItemFn = parse_quote! { async fn f(s: &S, r: R, x: Subject<'_>) {} };
        assert_eq!(
            Handler::from_syn(&func, Args::default()).third(),
            Some(Third::Subject)
        );
    }
}
