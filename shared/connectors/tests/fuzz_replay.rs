//! Replays every saved input of the `webhook_decoders` fuzz target
//! (`shared/fuzz/corpus/webhook_decoders/`: the seeds; `shared/fuzz/regressions/
//! webhook_decoders/`: inputs that once crashed) through the target's own
//! harness, so they are checked by every `cargo test --workspace`, on
//! stable, without libFuzzer. It needs no new dependency: the harness uses
//! crmbridge_connectors, serde_json and form_urlencoded only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

#[path = "../../fuzz/harness/webhook_decoders.rs"]
mod harness;

/// The files saved for the target, corpus and regressions.
fn saved_inputs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join("webhook_decoders")) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let hidden = path
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with('.'));
            if path.is_file() && !hidden {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn webhook_corpus_replays() {
    let inputs = saved_inputs();
    assert!(inputs.len() >= 10, "the corpus is missing: {inputs:?}");
    let mut decoded = std::collections::BTreeMap::<&str, usize>::new();
    for path in &inputs {
        // Panics (the harness's invariants included) fail the test.
        for (app, events) in harness::decode(&std::fs::read(path).unwrap()) {
            *decoded.entry(app).or_default() += events;
        }
    }
    // The seeds are the connectors' own test payloads: each connector that
    // takes webhooks decodes some of them.
    for app in [
        "generic",
        "calltouch",
        "moysklad",
        "ringostat",
        "worksection",
    ] {
        assert!(
            decoded.get(app).copied().unwrap_or(0) > 0,
            "{app}: {decoded:?}"
        );
    }
}

#[test]
fn the_harness_reads_a_delivery_as_documented() {
    let delivery = harness::parse(b"calltouch 1 GET\na=1&b=%D0%B4\napplication/json\n{\"x\":\n1}");
    assert_eq!(delivery.app.as_deref(), Some("calltouch"));
    assert_eq!(delivery.variant, 1);
    assert_eq!(delivery.method, "GET");
    assert_eq!(
        delivery.query,
        vec![
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "д".to_owned())
        ]
    );
    assert_eq!(delivery.content_type.as_deref(), Some("application/json"));
    assert_eq!(delivery.body, b"{\"x\":\n1}");
    let empty = harness::parse(b"");
    assert_eq!(
        (empty.app, empty.variant, empty.method.as_str()),
        (None, 0, "POST")
    );
    // Every connector, with settings its validate_settings accepts (the
    // harness checks them when it first builds the registry).
    assert_eq!(harness::decode(b"*\n\n\n{}").len(), 11);
}
