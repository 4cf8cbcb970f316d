//! A field template and event data, rendered with the bounds of
//! crmbridge_mapping::limits: no input may panic, overflow the stack or
//! allocate past libFuzzer's malloc limit (infra/fuzz.sh sets it far below
//! what an unbounded template reaches).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    crmbridge_mapping::fuzzing::template_render(data);
});
