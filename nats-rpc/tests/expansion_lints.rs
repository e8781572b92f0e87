//! The expansion adds no warnings under strict lints (an ordinary test target, so that
//! trybuild has no pass case to build; see expansion_hygiene.rs).
#![deny(
    warnings,
    missing_docs,
    unused,
    unreachable_pub,
    nonstandard_style,
    rust_2018_idioms
)]

use nats_rpc::nats_rpc;

/// State.
pub struct State;

/// Request.
#[derive(serde::Deserialize, schemars::JsonSchema)]
pub struct Req {
    /// Key.
    pub key: String,
}

/// Reply.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Reply {
    /// Whether it worked.
    pub ok: bool,
}

/// Gets.
#[nats_rpc(subject = "strict.get", name = "get-one")]
pub async fn get(_state: &State, request: Req) -> Result<Reply, nats_rpc::Error> {
    Ok(Reply {
        ok: !request.key.is_empty(),
    })
}

/// Gets on a wildcard subject, seeing what the wildcard matched.
#[nats_rpc(subject = "strict.*.get")]
pub async fn scoped_get(
    _state: &State,
    request: Req,
    subject: nats_rpc::Subject<'_>,
) -> Result<Reply, nats_rpc::Error> {
    Ok(Reply {
        ok: subject.wildcard(0) == Some(request.key.as_str()),
    })
}

mod private {
    /// A private handler in a private module: no dead-code warning for its endpoint type.
    #[nats_rpc::nats_rpc(subject = "strict.private")]
    pub(crate) async fn hidden(
        _state: &super::State,
        _request: super::Req,
    ) -> Result<super::Reply, nats_rpc::Error> {
        Ok(super::Reply { ok: true })
    }
}

#[test]
fn expands_without_warnings_under_strict_lints() {
    use nats_rpc::Endpoint;
    assert_eq!(<get as Endpoint>::NAME, "get-one");
    assert_eq!(<private::hidden as Endpoint>::SUBJECT, "strict.private");
}
