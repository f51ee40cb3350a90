//! The module layering, checked on the source text: `core_types` imports
//! nothing of ours, `error` only `core_types`, and nothing under `backend/`
//! reaches up into the tensor, autograd, ops or anything built on them. A
//! kernel added to a backend therefore never depends on `Tensor`, and the
//! tensor/backend import circle of earlier versions cannot come back.

use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules of ours that `text` names: every `crate::<module>` path (also
/// inside `use crate::{a, b}` groups) and `super::` paths, which in a
/// top-level module would also reach a sibling.
fn crate_modules_named(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

fn violations(files: &[PathBuf], allowed: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).expect("read source");
        for module in crate_modules_named(&text) {
            if !allowed.contains(&module.as_str()) {
                bad.push(format!("{} names crate::{module}", file.display()));
            }
        }
    }
    bad
}

#[test]
fn the_scanner_sees_plain_and_grouped_paths() {
    let text = "use crate::tensor::Tensor;\nuse crate::{error, ops::relu};\n// crate::nn in a comment\nlet x = crate::autograd::no_grad;";
    assert_eq!(
        crate_modules_named(text),
        ["tensor", "error", "ops", "autograd"]
    );
}

#[test]
fn backends_import_nothing_above_them() {
    let mut files = Vec::new();
    rust_files(&src().join("backend"), &mut files);
    assert!(files.len() > 10, "found only {files:?}");
    let bad = violations(&files, &["backend", "core_types", "error"]);
    assert!(
        bad.is_empty(),
        "backend/ reaches above itself:\n{}",
        bad.join("\n")
    );
}

#[test]
fn core_types_and_error_are_leaves() {
    let core = [src().join("core_types.rs")];
    let bad = violations(&core, &[]);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    let text = std::fs::read_to_string(&core[0]).expect("read core_types.rs");
    assert!(!text.contains("super::"), "core_types.rs names super::");

    let bad = violations(&[src().join("error.rs")], &["core_types"]);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
