//! Bytes as a JSON and a YAML automation, validated against the built-in
//! connectors' catalog and compiled (crmbridge_mapping::fuzzing).
#![no_main]

use std::sync::LazyLock;

use crmbridge_connectors::Registry;
use libfuzzer_sys::fuzz_target;

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::builtin);

fuzz_target!(|data: &[u8]| {
    crmbridge_mapping::fuzzing::automation_parse(data, REGISTRY.catalog());
});
