//! Misuse that must not compile: a mapping or view that outlives the memory or context it
//! depends on, a GL context sent to another thread.

#[test]
fn views_cannot_outlive_their_memory() {
    // trybuild compiles the cases with cargo; a test binary run on its own (the GPU machine runs
    // staged binaries, without a toolchain) has nothing to compile with.
    if std::env::var_os("CARGO").is_none() {
        println!("skipped: not run by cargo, so there is no compiler to check the cases with");
        return;
    }
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
}
