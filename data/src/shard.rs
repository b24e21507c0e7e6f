//! Token shards on disk: `NAME.bin`, a flat little-endian array of rows × row_len token ids (u16 when
//! the vocabulary fits, else u32), and `NAME.json`, its header. A prepared dataset directory also has
//! `dataset.json`, naming the shards of each split.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const FORMAT: &str = "muninn-tokens";
pub const VERSION: u32 = 1;
pub const INDEX_FILE: &str = "dataset.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    U16,
    U32,
}

impl TokenDtype {
    /// The narrowest type that holds every id below `vocab_size`.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            TokenDtype::U16
        } else {
            TokenDtype::U32
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }

    pub fn max_vocab(self) -> usize {
        match self {
            TokenDtype::U16 => 1 << 16,
            TokenDtype::U32 => 1 << 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardHeader {
    pub format: String,
    pub version: u32,
    pub dtype: TokenDtype,
    /// Tokens per row: block_size + 1 (inputs are row[..B], targets row[1..]).
    pub row_len: usize,
    pub rows: u64,
    pub vocab_size: usize,
    pub tokenizer_sha256: String,
    /// sha256 of the `.bin` file's bytes.
    pub tokens_sha256: String,
}

/// What `muninn data prepare` wrote, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetIndex {
    pub format: String,
    pub version: u32,
    pub block_size: usize,
    pub row_len: usize,
    pub dtype: TokenDtype,
    pub vocab_size: usize,
    pub tokenizer_sha256: String,
    pub seed: u64,
    pub packing: String,
    pub documents: usize,
    /// Tokens of all documents, bos/eos included, before packing.
    pub tokens: u64,
    /// Split name → shard names (without extension), in order.
    pub splits: BTreeMap<String, Vec<String>>,
}

impl DatasetIndex {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(INDEX_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is {} a prepared dataset?)",
                path.display(),
                dir.display()
            )
        })?;
        let index: DatasetIndex =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        ensure!(
            index.format == FORMAT && index.version == VERSION,
            "{}: format {} v{} is not {FORMAT} v{VERSION}",
            path.display(),
            index.format,
            index.version
        );
        Ok(index)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(INDEX_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Writes `rows` (each `row_len` ids) as shard `name` in `dir`.
pub fn write_shard(
    dir: &Path,
    name: &str,
    rows: &[&[u32]],
    dtype: TokenDtype,
    vocab_size: usize,
    tokenizer_sha256: &str,
) -> Result<ShardHeader> {
    let row_len = rows.first().map_or(0, |r| r.len());
    let mut w = ShardWriter::create(dir, name, row_len, dtype, vocab_size, tokenizer_sha256)?;
    for row in rows {
        w.push(row)?;
    }
    w.finish()
}

/// A shard written row by row: the `.bin` grows as rows arrive (its checksum computed on the
/// way), and `finish` writes the `.json` header. Memory: one row.
pub struct ShardWriter {
    bin: PathBuf,
    json: PathBuf,
    file: std::io::BufWriter<File>,
    hasher: Sha256,
    header: ShardHeader,
    bytes: Vec<u8>,
}

impl ShardWriter {
    pub fn create(
        dir: &Path,
        name: &str,
        row_len: usize,
        dtype: TokenDtype,
        vocab_size: usize,
        tokenizer_sha256: &str,
    ) -> Result<Self> {
        let bin = dir.join(format!("{name}.bin"));
        let file = File::create(&bin).with_context(|| format!("creating {}", bin.display()))?;
        Ok(ShardWriter {
            json: dir.join(format!("{name}.json")),
            bin,
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            header: ShardHeader {
                format: FORMAT.to_string(),
                version: VERSION,
                dtype,
                row_len,
                rows: 0,
                vocab_size,
                tokenizer_sha256: tokenizer_sha256.to_string(),
                tokens_sha256: String::new(),
            },
            bytes: Vec::with_capacity(row_len * dtype.bytes()),
        })
    }

    pub fn rows(&self) -> u64 {
        self.header.rows
    }

    pub fn push(&mut self, row: &[u32]) -> Result<()> {
        let h = &self.header;
        ensure!(
            row.len() == h.row_len,
            "internal: ragged rows in shard {}",
            self.bin.display()
        );
        self.bytes.clear();
        for &t in row {
            ensure!(
                (t as usize) < h.vocab_size,
                "token id {t} is outside the vocabulary of {}",
                h.vocab_size
            );
            match h.dtype {
                TokenDtype::U16 => self.bytes.extend_from_slice(&(t as u16).to_le_bytes()),
                TokenDtype::U32 => self.bytes.extend_from_slice(&t.to_le_bytes()),
            }
        }
        self.hasher.update(&self.bytes);
        self.file
            .write_all(&self.bytes)
            .with_context(|| format!("writing {}", self.bin.display()))?;
        self.header.rows += 1;
        Ok(())
    }

    /// Flushes and syncs the `.bin`, then writes the header.
    pub fn finish(self) -> Result<ShardHeader> {
        let ShardWriter {
            bin,
            json,
            file,
            hasher,
            mut header,
            ..
        } = self;
        let file = file
            .into_inner()
            .map_err(|e| anyhow::anyhow!("writing {}: {}", bin.display(), e.error()))?;
        file.sync_all()
            .with_context(|| format!("writing {}", bin.display()))?;
        header.tokens_sha256 = format!("{:x}", hasher.finalize());
        std::fs::write(&json, serde_json::to_string_pretty(&header)?)
            .with_context(|| format!("writing {}", json.display()))?;
        Ok(header)
    }
}

/// A memory-mapped shard whose header and checksum were verified.
pub struct Shard {
    pub header: ShardHeader,
    pub path: PathBuf,
    mmap: Mmap,
}

impl Shard {
    /// Opens `dir/name.{bin,json}` and checks the header against the bytes (size and sha256).
    pub fn open(dir: &Path, name: &str) -> Result<Self> {
        let json = dir.join(format!("{name}.json"));
        let path = dir.join(format!("{name}.bin"));
        let text = std::fs::read_to_string(&json)
            .with_context(|| format!("reading shard header {}", json.display()))?;
        let header: ShardHeader = serde_json::from_str(&text)
            .with_context(|| format!("shard header {} is malformed", json.display()))?;
        ensure!(
            header.format == FORMAT && header.version == VERSION,
            "{}: format {} v{} is not {FORMAT} v{VERSION}",
            json.display(),
            header.format,
            header.version
        );
        ensure!(
            header.vocab_size <= header.dtype.max_vocab(),
            "{}: a vocabulary of {} ids does not fit dtype {:?}",
            json.display(),
            header.vocab_size,
            header.dtype
        );
        let file =
            File::open(&path).with_context(|| format!("opening shard {}", path.display()))?;
        // SAFETY: shards are written once and never modified in place; the mapping is read-only.
        let mmap =
            unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        let expected = header.rows as usize * header.row_len * header.dtype.bytes();
        ensure!(
            mmap.len() == expected,
            "shard {} has {} bytes, its header {} says {} rows × {} tokens × {} bytes = {expected}",
            path.display(),
            mmap.len(),
            json.display(),
            header.rows,
            header.row_len,
            header.dtype.bytes()
        );
        let actual = sha256_hex(&mmap);
        if actual != header.tokens_sha256 {
            bail!(
                "shard {} does not match the checksum in {} (sha256 {actual}, header {}): the file is corrupt or was changed",
                path.display(),
                json.display(),
                header.tokens_sha256
            );
        }
        Ok(Shard { header, path, mmap })
    }

    /// Row `i` as token ids.
    pub fn row(&self, i: u64, out: &mut Vec<u32>) {
        let n = self.header.row_len;
        let b = self.header.dtype.bytes();
        let bytes = &self.mmap[i as usize * n * b..(i as usize + 1) * n * b];
        out.clear();
        match self.header.dtype {
            TokenDtype::U16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32),
            ),
            TokenDtype::U32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
        }
    }
}
