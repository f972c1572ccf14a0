//! Misuses of `#[derive(DomainEvent)]` fail to compile with a precise message at the right span.
//! The expected compiler output is in `tests/ui/*.stderr` (regenerate with `TRYBUILD=overwrite`
//! after a compiler upgrade, then read every changed file).

#[test]
fn misuse_is_a_compile_error() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
