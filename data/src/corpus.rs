//! Reading raw text: `.txt` files (one document each) and `.jsonl` files (one document per line, in a
//! string field, `text` by default). Directories are walked recursively; files are read in sorted path
//! order so the document order never depends on the file system.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

/// One document and where it came from (for error messages).
pub struct Document {
    pub text: String,
    pub source: String,
}

fn is_text_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("txt" | "jsonl")
    )
}

/// Expands files and directories into a sorted list of `.txt` / `.jsonl` files.
pub fn input_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    ensure!(
        !inputs.is_empty(),
        "no input given: name at least one .txt/.jsonl file or directory"
    );
    let mut files = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input)
            .with_context(|| format!("input {} does not exist", input.display()))?;
        if meta.is_dir() {
            let before = files.len();
            walk(input, &mut files)?;
            ensure!(
                files.len() > before,
                "input directory {} holds no .txt or .jsonl files",
                input.display()
            );
        } else {
            ensure!(
                is_text_file(input),
                "input {}: expected a .txt or .jsonl file (or a directory of them)",
                input.display()
            );
            files.push(input.clone());
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading directory {}", dir.display()))?
            .path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_text_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads every document of `files`, in order. Empty files, non-UTF-8 bytes, bad JSON and missing or
/// non-string text fields are errors that name the file (and line).
pub fn read_documents(files: &[PathBuf], text_field: &str) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for file in files {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is not valid UTF-8 (first bad byte at offset {})",
                file.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        ensure!(!text.trim().is_empty(), "{} is empty", file.display());
        if file.extension().is_some_and(|e| e == "jsonl") {
            let before = docs.len();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let value: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("{}:{}: not a JSON object", file.display(), i + 1))?;
                let Some(field) = value.get(text_field) else {
                    bail!(
                        "{}:{}: no `{text_field}` field (choose another with --text-field)",
                        file.display(),
                        i + 1
                    );
                };
                let Some(s) = field.as_str() else {
                    bail!(
                        "{}:{}: `{text_field}` is not a string",
                        file.display(),
                        i + 1
                    );
                };
                if !s.is_empty() {
                    docs.push(Document {
                        text: s.to_string(),
                        source: format!("{}:{}", file.display(), i + 1),
                    });
                }
            }
            ensure!(
                docs.len() > before,
                "{} holds no non-empty `{text_field}` values",
                file.display()
            );
        } else {
            docs.push(Document {
                text,
                source: file.display().to_string(),
            });
        }
    }
    Ok(docs)
}
