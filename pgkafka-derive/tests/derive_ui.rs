//! The derive's compile-time diagnostics, each pinned by a `.stderr` file, and code that must
//! compile. Run with `TRYBUILD=overwrite` to accept changed diagnostics after reviewing them.
//!
//! The driver lives in pgkafka-derive rather than pgkafka so trybuild's separate build needs
//! only `pgkafka` with the `derive` feature, not librdkafka and the database clients.

#[test]
fn derive_diagnostics() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/pass/*.rs");
}
