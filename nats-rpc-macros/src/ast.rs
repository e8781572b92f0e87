//! A borrowed model of the handler: the pieces of the `fn` that the expansion needs, extracted
//! only after every rule in [`crate::valid`] has passed.

use syn::{Ident, ItemFn, Type, Visibility};

use crate::args::Args;
use crate::valid;

/// `async fn <ident>(state: &<state>, request: <request>[, subject: Subject<'_> | context:
/// Context<'_>]) -> Result<<response>, <error>>`.
pub struct Handler<'a> {
    pub vis: &'a Visibility,
    pub ident: &'a Ident,
    pub subject: String,
    /// The NATS micro endpoint name: the `name` argument, else the fn's name.
    pub name: String,
    pub state: &'a Type,
    pub request: &'a Type,
    /// What the fn's third parameter, if any, receives.
    pub third: Option<valid::Third>,
    pub response: &'a Type,
    pub error: &'a Type,
}

impl<'a> Handler<'a> {
    /// Checks every rule and reports all violations together, each on the offending token:
    /// the attribute's (`args`, already parsed, possibly with errors) and the fn's alike.
    pub fn from_fn(func: &'a ItemFn, args: syn::Result<Args>) -> syn::Result<Self> {
        let sig = &func.sig;
        let mut errors = None;
        let mut check = |result: syn::Result<()>| {
            if let Err(err) = result {
                valid::fold(&mut errors, err);
            }
        };
        let args = match args {
            Ok(args) => Some(args),
            Err(err) => {
                check(Err(err));
                None
            }
        };
        check(valid::is_async(sig));
        check(valid::plain_fn(sig));
        check(valid::not_generic(sig));
        if let Some(args) = &args {
            check(valid::subject(&args.subject));
            if let Some(name) = &args.name {
                check(valid::endpoint_name(name));
            }
        }
        let params = valid::params(sig);
        let output = valid::output(sig);
        let (params, output, args) = match (params, output, args) {
            (Ok(params), Ok(output), Some(args)) if errors.is_none() => (params, output, args),
            (params, output, _) => {
                for err in [params.err(), output.err()].into_iter().flatten() {
                    valid::fold(&mut errors, err);
                }
                return Err(errors.expect("at least one rule failed"));
            }
        };
        Ok(Handler {
            vis: &func.vis,
            ident: &sig.ident,
            subject: args.subject.value(),
            name: args
                .name
                .map_or_else(|| sig.ident.to_string(), |name| name.value()),
            state: params.state,
            request: params.request,
            third: params.third,
            response: output.0,
            error: output.1,
        })
    }
}
