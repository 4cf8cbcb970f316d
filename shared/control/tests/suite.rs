//! Every integration test of this crate, linked into one binary: one link
//! and one executable instead of one per file, which keeps a cold CI build
//! short and small. Cargo builds only this file (`autotests = false`), so
//! `every_file_under_tests_is_a_suite` fails when a new file is not listed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

macro_rules! suites {
    ($($name:ident),* $(,)?) => {
        $(mod $name;)*
        const SUITES: &[&str] = &[$(stringify!($name)),*];
    };
}

suites!(engine, exactly_once, oauth, registry, write_budget,);

#[test]
fn every_file_under_tests_is_a_suite() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = name.strip_suffix(".rs") {
            assert!(
                stem == "suite" || SUITES.contains(&stem),
                "tests/{name} is not listed in tests/suite.rs, so it never runs"
            );
        }
    }
}
