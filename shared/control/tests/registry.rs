//! Walks the vendor registry and the recipes and checks that each has
//! everything a maintainer needs beside it: for every vendor a folder with
//! its `API.md` (included in its rustdoc), a fake and a contract-suite run
//! when it calls its API, a row in the README's connectors table; for every
//! recipe a `docs/integrations` page. And no file in the repository points
//! outside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use crmbridge_connectors::{Registry, vendors};
use crmbridge_control::recipes::RECIPES;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_vendor_has_its_folder_facts_fake_contract_run_and_readme_row() {
    let root = root();
    let registry = Registry::builtin();
    let mut registered: Vec<&str> = registry.apps().collect();
    let mut folders = vendors::FOLDERS.to_vec();
    registered.sort_unstable();
    folders.sort_unstable();
    assert_eq!(
        registered, folders,
        "every vendor folder is registered, once"
    );

    let readme = read(&root.join("README.md"));
    let contract = read(&root.join("shared/connectors/tests/contract.rs"));
    let mut problems = Vec::new();
    for vendor in registry.vendors() {
        let app = vendor.app;
        let folder = root.join("shared/connectors/src/vendors").join(app);
        let facts = folder.join("API.md");
        match std::fs::read_to_string(&facts) {
            Ok(text) if text.trim().len() > 200 => {}
            _ => problems.push(format!("{app}: no API.md with the vendor facts")),
        }
        if !read(&folder.join("mod.rs")).contains("#![doc = include_str!(\"API.md\")]") {
            problems.push(format!("{app}: API.md is not in its rustdoc"));
        }
        if !readme.contains(&format!("| `{app}` |")) {
            problems.push(format!("{app}: no row in the README's connectors table"));
        }
        let calls_out = vendor.account.is_some()
            || vendor.poller.is_some()
            || vendor.actions().next().is_some();
        if calls_out {
            if !crmbridge_fakes::vendors::FAKED.contains(&app)
                || !root
                    .join("tests/fakes/src/vendors")
                    .join(app)
                    .join("mod.rs")
                    .is_file()
            {
                problems.push(format!(
                    "{app}: calls its API but has no fake in tests/fakes/src/vendors/{app}"
                ));
            }
            if !contract.contains(&format!("contract_suite!({app},")) {
                problems.push(format!(
                    "{app}: no contract_suite! run in shared/connectors/tests/contract.rs"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn every_recipe_has_an_integration_page() {
    let root = root();
    for (name, _) in RECIPES {
        let page = root.join("docs/integrations").join(format!("{name}.md"));
        assert!(page.is_file(), "recipe {name}: no {}", page.display());
        let text = read(&page);
        assert!(
            text.contains(&format!("recipes/{name}.yaml")),
            "docs/integrations/{name}.md does not name the recipe it documents"
        );
    }
}

/// Files a maintainer reads: source, docs, configuration.
fn repository_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(
                name.as_str(),
                "target" | ".git" | ".tools" | "node_modules" | "corpus" | "artifacts"
            ) && !name.starts_with('.')
            {
                repository_files(&path, out);
            }
        } else if [
            ".rs", ".md", ".toml", ".yaml", ".yml", ".sh", ".py", ".json",
        ]
        .iter()
        .any(|ext| name.ends_with(ext))
        {
            out.push(path);
        }
    }
}

/// `path` with `.` and `..` resolved without touching the disk.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn no_file_points_outside_the_repository() {
    let root = root();
    let mut files = Vec::new();
    repository_files(&root, &mut files);
    files.push(root.join(".ci/run"));
    assert!(files.len() > 100, "the walk found the repository");
    // Written in two pieces so this file does not name it either. A
    // relative path is fine when it resolves inside the repository
    // (a crate naming a sibling crate).
    let outside = format!("{}/shared", "..");
    // The research notes outside the repository, named without the `..`.
    let research = format!("{}/apis/", "shared");
    let mut offenders = Vec::new();
    for path in &files {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let dir = path.parent().unwrap();
        for (at, _) in text.match_indices(&outside) {
            let reference: String = text[at..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !"\"'`()<>,;".contains(*c))
                .collect();
            if !normalise(&dir.join(&reference)).starts_with(&root) {
                offenders.push(format!(
                    "{}: {reference}",
                    path.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    for path in &files {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        if text.contains(&research) {
            offenders.push(format!(
                "{}: cites the research notes outside the repository",
                path.strip_prefix(&root).unwrap().display()
            ));
        }
    }
    assert!(
        offenders.is_empty(),
        "files naming a path outside the repository: {offenders:?}"
    );
}
