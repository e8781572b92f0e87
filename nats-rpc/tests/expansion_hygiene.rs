//! The expansion names everything by absolute path: it compiles with no prelude and with local
//! modules shadowing `core`, `std`, `serde` and `nats_rpc`. (An ordinary test target rather than
//! a trybuild pass case: compiling it is the check, and without pass cases trybuild only has to
//! `cargo check` its copy of the dependencies instead of building them.)

pub struct State;

#[derive(serde::Deserialize, schemars::JsonSchema)]
pub struct Req {
    pub key: String,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Reply {
    pub ok: bool,
}

mod strict {
    #![no_implicit_prelude]
    #![allow(dead_code)]

    mod core {}
    mod std {}
    mod serde {}
    mod nats_rpc {}
    mod schemars {}

    #[::nats_rpc::nats_rpc(subject = "strict.get")]
    pub async fn get(
        _state: &super::State,
        request: super::Req,
    ) -> ::core::result::Result<super::Reply, ::nats_rpc::Error> {
        ::core::result::Result::Ok(super::Reply {
            ok: !request.key.is_empty(),
        })
    }
}

#[test]
fn expands_with_no_prelude_and_shadowed_crate_names() {
    fn assert_endpoint<E: nats_rpc::Endpoint>() -> &'static str {
        E::SUBJECT
    }
    assert_eq!(assert_endpoint::<strict::get>(), "strict.get");
}
