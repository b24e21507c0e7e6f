//! Reading raw text, one document at a time: `.txt` files (one document each), JSON lines (one
//! document per line, in a string field, `text` by default), plain or compressed (`.jsonl`, `.json`,
//! `.jsonl.zst`, `.json.zst`, `.jsonl.gz`, `.json.gz`), and Parquet files (a string column of that
//! name, e.g. FineWeb-Edu's `text`). Directories are walked recursively; files are read in sorted path
//! order so the document order never depends on the file system. Nothing holds more than one
//! document (and one Parquet row group's pages) at a time.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

/// One document and where it came from (for error messages).
pub struct Document {
    pub text: String,
    pub source: String,
}

/// How a corpus file is read, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    JsonLines(Compression),
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
    Gzip,
}

/// The suffixes a corpus file may have.
pub const SUFFIXES: &str =
    ".txt, .jsonl, .json, .jsonl.zst, .json.zst, .jsonl.gz, .json.gz, .parquet";

impl Format {
    pub fn of(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?;
        let json = |rest: &str| rest.ends_with(".jsonl") || rest.ends_with(".json");
        Some(if name.ends_with(".txt") {
            Format::Text
        } else if name.ends_with(".parquet") {
            Format::Parquet
        } else if let Some(rest) = name.strip_suffix(".zst").filter(|r| json(r)) {
            let _ = rest;
            Format::JsonLines(Compression::Zstd)
        } else if let Some(rest) = name.strip_suffix(".gz").filter(|r| json(r)) {
            let _ = rest;
            Format::JsonLines(Compression::Gzip)
        } else if json(name) {
            Format::JsonLines(Compression::None)
        } else {
            return None;
        })
    }
}

/// Expands files and directories into a sorted list of corpus files.
pub fn input_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    ensure!(
        !inputs.is_empty(),
        "no input given: name at least one corpus file ({SUFFIXES}) or directory"
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
                "input directory {} holds no corpus files ({SUFFIXES})",
                input.display()
            );
        } else {
            ensure!(
                Format::of(input).is_some(),
                "input {}: expected a corpus file ({SUFFIXES}) or a directory of them",
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
        } else if Format::of(&path).is_some() {
            out.push(path);
        }
    }
    Ok(())
}

/// Calls `each` with every non-empty document of `file`, in order. Empty files, non-UTF-8 bytes,
/// bad JSON, a missing or non-string text field or column, and a file without a single document
/// are errors that name the file (and line or row).
pub fn for_each_document(
    file: &Path,
    text_field: &str,
    each: &mut dyn FnMut(Document) -> Result<()>,
) -> Result<()> {
    let format = Format::of(file)
        .with_context(|| format!("{}: not a corpus file ({SUFFIXES})", file.display()))?;
    let count = match format {
        Format::Text => {
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let text = utf8(bytes, &file.display().to_string())?;
            ensure!(!text.trim().is_empty(), "{} is empty", file.display());
            each(Document {
                text,
                source: file.display().to_string(),
            })?;
            1
        }
        Format::JsonLines(c) => json_lines(file, c, text_field, each)?,
        Format::Parquet => parquet_column(file, text_field, each)?,
    };
    ensure!(
        count > 0,
        "{} holds no non-empty `{text_field}` values",
        file.display()
    );
    Ok(())
}

fn utf8(bytes: Vec<u8>, source: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{source} is not valid UTF-8 (first bad byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

fn json_lines(
    file: &Path,
    compression: Compression,
    text_field: &str,
    each: &mut dyn FnMut(Document) -> Result<()>,
) -> Result<usize> {
    let raw = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(raw),
        Compression::Zstd => Box::new(
            zstd::Decoder::new(raw)
                .with_context(|| format!("{}: not zstd-compressed", file.display()))?,
        ),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
    };
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let (mut line, mut bytes, mut count, mut n) = (String::new(), Vec::new(), 0, 0);
    loop {
        bytes.clear();
        let read = reader
            .read_until(b'\n', &mut bytes)
            .with_context(|| format!("reading {} (line {})", file.display(), n + 1))?;
        if read == 0 {
            break;
        }
        n += 1;
        line.clear();
        line.push_str(std::str::from_utf8(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}:{n}: not valid UTF-8 (first bad byte at offset {})",
                file.display(),
                e.valid_up_to()
            )
        })?);
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{n}: not a JSON object", file.display()))?;
        let Some(field) = value.get(text_field) else {
            bail!(
                "{}:{n}: no `{text_field}` field (choose another with --text-field)",
                file.display()
            );
        };
        let Some(s) = field.as_str() else {
            bail!("{}:{n}: `{text_field}` is not a string", file.display());
        };
        if !s.is_empty() {
            count += 1;
            each(Document {
                text: s.to_string(),
                source: format!("{}:{n}", file.display()),
            })?;
        }
    }
    ensure!(n > 0, "{} is empty", file.display());
    Ok(count)
}

/// The string column `column` of a Parquet file, row group by row group; nulls and empty strings
/// are skipped.
fn parquet_column(
    file: &Path,
    column: &str,
    each: &mut dyn FnMut(Document) -> Result<()>,
) -> Result<usize> {
    use parquet::basic::{ConvertedType, LogicalType, Type as Physical};
    use parquet::column::reader::ColumnReader;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let reader = SerializedFileReader::new(f)
        .with_context(|| format!("{}: not a Parquet file", file.display()))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let Some(index) =
        (0..schema.num_columns()).find(|&i| schema.column(i).path().string() == column)
    else {
        let names: Vec<String> = (0..schema.num_columns())
            .map(|i| schema.column(i).path().string())
            .collect();
        bail!(
            "{}: no column `{column}` (it has {}; choose one with --text-field)",
            file.display(),
            names.join(", ")
        );
    };
    let desc = schema.column(index);
    let stringy = desc.physical_type() == Physical::BYTE_ARRAY
        && (matches!(desc.logical_type_ref(), Some(LogicalType::String))
            || desc.converted_type() == ConvertedType::UTF8
            || desc.logical_type_ref().is_none());
    ensure!(
        stringy && desc.max_rep_level() == 0,
        "{}: column `{column}` is not a string column ({:?})",
        file.display(),
        desc.physical_type()
    );
    let (mut count, mut row) = (0usize, 0u64);
    const BATCH: usize = 1024;
    for g in 0..reader.num_row_groups() {
        let group = reader
            .get_row_group(g)
            .with_context(|| format!("{}: row group {g}", file.display()))?;
        let ColumnReader::ByteArrayColumnReader(mut col) = group
            .get_column_reader(index)
            .with_context(|| format!("{}: row group {g}", file.display()))?
        else {
            unreachable!("a BYTE_ARRAY column has a byte-array reader");
        };
        let (mut values, mut defs) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
        loop {
            values.clear();
            defs.clear();
            let (records, _, _) = col
                .read_records(BATCH, Some(&mut defs), None, &mut values)
                .with_context(|| format!("{}: reading row group {g}", file.display()))?;
            if records == 0 {
                break;
            }
            let mut v = values.iter();
            for r in 0..records {
                // A required column has no definition levels; an optional one has one per record.
                let present =
                    desc.max_def_level() == 0 || defs.get(r) == Some(&desc.max_def_level());
                row += 1;
                if !present {
                    continue; // null
                }
                let bytes = v.next().expect("one value per defined record").data();
                let text = std::str::from_utf8(bytes).map_err(|e| {
                    anyhow::anyhow!(
                        "{} row {row}: `{column}` is not valid UTF-8 (offset {})",
                        file.display(),
                        e.valid_up_to()
                    )
                })?;
                if !text.is_empty() {
                    count += 1;
                    each(Document {
                        text: text.to_string(),
                        source: format!("{} row {row}", file.display()),
                    })?;
                }
            }
        }
    }
    Ok(count)
}

/// Every document of `files`, in order, in memory (tokenizer training, and small corpora).
pub fn read_documents(files: &[PathBuf], text_field: &str) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for file in files {
        for_each_document(file, text_field, &mut |d| {
            docs.push(d);
            Ok(())
        })?;
    }
    Ok(docs)
}
