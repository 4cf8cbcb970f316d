//! A webhook delivery (method, query, content type, body) fed to every
//! built-in connector's decoder; see harness/webhook_decoders.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness/webhook_decoders.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::decode(data);
});
