//! Replays every saved input of the `automation_parse` and
//! `template_render` fuzz targets (`shared/fuzz/corpus/<target>/`: the seeds;
//! `shared/fuzz/regressions/<target>/`: inputs that once crashed) through the
//! functions the targets call, so they are checked by every test run, on
//! stable, without libFuzzer. A crash there fails here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::{Path, PathBuf};

use crmbridge_mapping::RenderLimit;
use crmbridge_mapping::fuzzing::{self, TemplateOutcome};

/// The files saved for `target`, corpus and regressions.
fn saved_inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
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
fn automation_corpus_replays() {
    let inputs = saved_inputs("automation_parse");
    assert!(inputs.len() >= 10, "the corpus is missing: {inputs:?}");
    let catalog = common::catalog();
    let mut compiled = 0;
    for path in &inputs {
        let outcome = fuzzing::automation_parse(&std::fs::read(path).unwrap(), &catalog);
        compiled += usize::from(outcome.compiled);
    }
    // The seeds are real automations: most of them compile.
    assert!(
        compiled * 2 > inputs.len(),
        "{compiled} of {} compiled",
        inputs.len()
    );
}

#[test]
fn template_corpus_replays() {
    let inputs = saved_inputs("template_render");
    assert!(inputs.len() >= 10, "the corpus is missing: {inputs:?}");
    let mut outcomes = Vec::new();
    for path in &inputs {
        let outcome = fuzzing::template_render(&std::fs::read(path).unwrap());
        outcomes.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            outcome,
        ));
    }
    // The seeds cover rendering, refusing and the bounds.
    let outcome_of = |name: &str| {
        outcomes
            .iter()
            .find(|(file, _)| file == name)
            .map(|(_, outcome)| *outcome)
    };
    assert_eq!(outcome_of("phone.bin"), Some(TemplateOutcome::Rendered));
    assert_eq!(
        outcome_of("items-loop.bin"),
        Some(TemplateOutcome::Rendered)
    );
    assert_eq!(
        outcome_of("incident-repeat.bin"),
        Some(TemplateOutcome::Limit(RenderLimit::ValueSize))
    );
    assert_eq!(
        outcome_of("huge-range.bin"),
        Some(TemplateOutcome::Limit(RenderLimit::ListLength))
    );
    assert_eq!(
        outcome_of("macro-recursion.bin"),
        Some(TemplateOutcome::Refused)
    );
    assert_eq!(outcome_of("long-chain.bin"), Some(TemplateOutcome::Refused));
}
