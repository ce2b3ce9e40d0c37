//! Tidy checks: repository-wide rules that are cheap to state and easy to forget.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn all_rust_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["crates", "tests", "xtask"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(
        files.len() > 10,
        "found only {} files; is the root right?",
        files.len()
    );
    files
}

/// Every Rust file opens with a `//!` comment saying what it is for.
#[test]
fn every_file_has_a_module_header() {
    let missing: Vec<_> = all_rust_files()
        .into_iter()
        .filter(|f| {
            !std::fs::read_to_string(f)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! header: {missing:#?}"
    );
}

/// Every `unsafe` block or impl is preceded by a `// SAFETY:` comment.
#[test]
fn every_unsafe_has_a_safety_comment() {
    // Built at run time so that this file does not match its own patterns.
    let (block, imp) = (["unsafe", " {"].concat(), ["unsafe", " impl"].concat());
    let mut bad = Vec::new();
    for f in all_rust_files() {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if !(code.contains(&block) || code.contains(&imp)) {
                continue;
            }
            let window = &lines[i.saturating_sub(4)..=i];
            if !window.iter().any(|l| l.contains("SAFETY:")) {
                bad.push(format!("{}:{}", f.display(), i + 1));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "unsafe without a // SAFETY: comment: {bad:#?}"
    );
}

/// docs/ARCHITECTURE.md's code map names every crate.
#[test]
fn the_code_map_names_every_crate() {
    let arch = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            arch.contains(&format!("`crates/{name}`")),
            "docs/ARCHITECTURE.md has no code-map entry for crates/{name}"
        );
    }
}
