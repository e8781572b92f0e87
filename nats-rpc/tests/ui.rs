//! Compile-time checks of `#[nats_rpc]`: each mistake is an error on the user's own token
//! (tests/ui/*.rs with their .stderr). Bless changes with `TRYBUILD=overwrite` and review the
//! diff. Valid handlers under a bare prelude and strict lints are ordinary test targets
//! (expansion_hygiene.rs, expansion_lints.rs): with compile-fail cases only, trybuild runs
//! `cargo check`, so its private copy of the dependency tree is checked, not built (about
//! half the time, with the same diagnostics).

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
