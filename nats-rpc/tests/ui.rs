//! Compile-time checks of `#[nats_rpc]`: each mistake is an error on the user's own token
//! (tests/ui/*.rs with their .stderr), and valid handlers compile under a bare prelude and
//! strict lints (tests/ui/pass). Bless changes with `TRYBUILD=overwrite` and review the diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
