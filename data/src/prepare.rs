//! `muninn data prepare`: documents → bos/eos-wrapped token streams → rows of block_size + 1 tokens →
//! a seeded train/val split → shards. Parallel tokenisation; everything order-dependent is sequential
//! and seeded, so the output is byte-identical for any number of threads.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::corpus;
use crate::shard::{self, DatasetIndex, TokenDtype};
use crate::tokenizer::TokenizerInfo;

/// How documents become rows (reference §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// Concatenate every document and cut the stream into rows; only the last partial row is lost.
    /// What Megatron, litgpt and nanoGPT do, and the default.
    Concat,
    /// Huginn's packer: per batch of 4096 documents, fill a buffer, emit its first row once it is long
    /// enough and discard the rest, so rows start at document boundaries. Loses most of any document
    /// longer than a row.
    Incinerate,
}

impl std::str::FromStr for Packing {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "concat" => Ok(Packing::Concat),
            "incinerate" => Ok(Packing::Incinerate),
            other => bail!("unknown packing `{other}` (expected concat or incinerate)"),
        }
    }
}

impl std::fmt::Display for Packing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Packing::Concat => "concat",
            Packing::Incinerate => "incinerate",
        })
    }
}

/// One of N processes preparing a corpus together (`--part i/N`): it reads the input files whose
/// index in sorted order is i modulo N and writes `OUT/parts/i-of-N/`; `muninn data merge OUT`
/// joins the parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub index: usize,
    pub count: usize,
}

impl Part {
    pub const WHOLE: Part = Part { index: 0, count: 1 };

    pub fn name(self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }
}

impl std::str::FromStr for Part {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let parse = || -> Option<Part> {
            let (i, n) = s.split_once('/')?;
            Some(Part {
                index: i.trim().parse().ok()?,
                count: n.trim().parse().ok()?,
            })
        };
        match parse() {
            Some(p) if p.count >= 1 && p.index < p.count => Ok(p),
            _ => bail!("--part {s}: expected i/N with 0 <= i < N, e.g. 3/16"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub block_size: usize,
    pub val_fraction: f64,
    pub seed: u64,
    pub text_field: String,
    pub packing: Packing,
    /// Rows per shard file.
    pub shard_rows: usize,
    /// Tokenisation threads (None: rayon's default, one per core).
    pub threads: Option<usize>,
    pub progress: bool,
    /// Bytes of document text read before they are tokenized, shuffled, packed and written: the
    /// bound on memory, whatever the corpus size.
    pub buffer_bytes: usize,
    /// Which part of a multi-process preparation this is; `None` writes a whole dataset at `out`.
    pub part: Option<Part>,
    /// The part's directory name under `out/parts/` instead of `i-of-N`: a later addition to a
    /// dataset (e.g. another corpus), merged with the rest.
    pub part_name: Option<String>,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            block_size: 4096,
            val_fraction: 0.05,
            seed: 233,
            text_field: "text".into(),
            packing: Packing::Concat,
            shard_rows: 1 << 16,
            threads: None,
            progress: false,
            buffer_bytes: 1 << 30,
            part: None,
            part_name: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PrepareReport {
    pub documents: usize,
    pub tokens: u64,
    pub train_rows: u64,
    pub val_rows: u64,
    pub dropped_tokens: u64,
    pub tokenize_seconds: f64,
    pub total_seconds: f64,
}

impl PrepareReport {
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.tokenize_seconds.max(1e-9)
    }
}

/// In-place Fisher–Yates with a ChaCha8 stream of `seed`.
fn shuffle<T>(items: &mut [T], seed: u64, stream: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// Packs token streams into rows of `row_len`. Returns the flat rows and how many tokens were dropped.
pub fn pack<'a>(
    docs: impl Iterator<Item = &'a [u32]>,
    row_len: usize,
    packing: Packing,
) -> (Vec<u32>, u64) {
    let mut packer = Packer {
        row_len,
        packing,
        buf: Vec::new(),
        docs_seen: 0,
        dropped: 0,
    };
    let mut rows = Vec::new();
    packer.pack(docs, &mut rows);
    (rows, packer.dropped + packer.buf.len() as u64)
}

/// Where packing stands between buffers: the tokens not yet in a row, and for incinerate packing
/// the index of the next document (its batches of 4096 run across buffers).
struct Packer {
    row_len: usize,
    packing: Packing,
    buf: Vec<u32>,
    docs_seen: usize,
    dropped: u64,
}

impl Packer {
    /// Appends the rows `docs` complete to `rows`.
    fn pack<'a>(&mut self, docs: impl Iterator<Item = &'a [u32]>, rows: &mut Vec<u32>) {
        let row_len = self.row_len;
        for doc in docs {
            match self.packing {
                Packing::Concat => {
                    self.buf.extend_from_slice(doc);
                    let full = self.buf.len() / row_len * row_len;
                    rows.extend_from_slice(&self.buf[..full]);
                    self.buf.drain(..full);
                }
                Packing::Incinerate => {
                    if self.docs_seen % 4096 == 0 {
                        self.dropped += self.buf.len() as u64;
                        self.buf.clear();
                    }
                    self.buf.extend_from_slice(doc);
                    if self.buf.len() >= row_len {
                        rows.extend_from_slice(&self.buf[..row_len]);
                        self.dropped += (self.buf.len() - row_len) as u64;
                        self.buf.clear();
                    }
                }
            }
            self.docs_seen += 1;
        }
    }
}

/// A split's shards, written as rows arrive: a new shard every `shard_rows` rows.
struct SplitWriter<'a> {
    dir: &'a Path,
    split: &'static str,
    shard_rows: usize,
    dtype: TokenDtype,
    tok: &'a TokenizerInfo,
    open: Option<shard::ShardWriter>,
    names: Vec<String>,
    rows: u64,
}

impl<'a> SplitWriter<'a> {
    fn push(&mut self, row: &[u32]) -> Result<()> {
        if self
            .open
            .as_ref()
            .is_some_and(|w| w.rows() as usize >= self.shard_rows)
        {
            self.open.take().expect("open").finish()?;
        }
        if self.open.is_none() {
            let name = format!("{}-{:05}", self.split, self.names.len());
            self.open = Some(shard::ShardWriter::create(
                self.dir,
                &name,
                row.len(),
                self.dtype,
                self.tok.vocab_size,
                &self.tok.sha256,
            )?);
            self.names.push(name);
        }
        self.open.as_mut().expect("open").push(row)?;
        self.rows += 1;
        Ok(())
    }

    fn finish(mut self) -> Result<(Vec<String>, u64)> {
        if let Some(w) = self.open.take() {
            w.finish()?;
        }
        Ok((self.names, self.rows))
    }
}

/// Prepares a dataset from `inputs` at `out` (or, with `opts.part`, one part of it at
/// `out/parts/i-of-N/`), streaming: documents are read into a buffer of `opts.buffer_bytes`;
/// each full buffer is tokenized in parallel, its documents shuffled (ChaCha8 of the seed, stream
/// 2b for buffer b), packed (the remainder carried into the next buffer), its rows shuffled (stream
/// 2b + 1), and its first round(val_fraction · rows) rows (at least one) go to the validation split,
/// the rest to train. A corpus within one buffer is therefore shuffled as a whole; the loader's
/// permutation over all rows shuffles across buffers and parts.
pub fn prepare(
    tok: &TokenizerInfo,
    inputs: &[PathBuf],
    out: &Path,
    opts: &PrepareOptions,
) -> Result<PrepareReport> {
    let start = Instant::now();
    ensure!(opts.block_size >= 1, "--block-size must be at least 1");
    ensure!(
        (0.0..1.0).contains(&opts.val_fraction),
        "--val-fraction {} must be in [0, 1)",
        opts.val_fraction
    );
    ensure!(opts.shard_rows >= 1, "--shard-rows must be at least 1");
    ensure!(opts.buffer_bytes >= 1, "--buffer-mb must be positive");
    let (target, part) = match (opts.part, &opts.part_name) {
        (None, None) => (out.to_path_buf(), Part::WHOLE),
        (p, name) => {
            let p = p.unwrap_or(Part::WHOLE);
            let dir_name = name.clone().unwrap_or_else(|| p.name());
            ensure!(
                !dir_name.is_empty() && !dir_name.contains('/') && !dir_name.starts_with('.'),
                "--part-name `{dir_name}` must be a plain directory name"
            );
            ensure!(
                !out.join(shard::INDEX_FILE).is_file() || out.join(PARTS_DIR).is_dir(),
                "{} is a dataset prepared as one part; parts go into a new directory (or one prepared with --part)",
                out.display()
            );
            (out.join(PARTS_DIR).join(dir_name), p)
        }
    };
    ensure!(
        !target.exists(),
        "{} already exists; choose a new output directory",
        target.display()
    );
    let files: Vec<PathBuf> = corpus::input_files(inputs)?
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % part.count == part.index)
        .map(|(_, f)| f)
        .collect();
    ensure!(
        !files.is_empty(),
        "part {} has no input files: only {} file(s) for {} parts",
        part.name(),
        corpus::input_files(inputs)?.len(),
        part.count
    );
    let dtype = TokenDtype::for_vocab(tok.vocab_size);
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = opts.threads {
        pool = pool.num_threads(n);
    }
    let pool = pool.build().context("starting the tokenizer threads")?;
    let total_bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    let bar = if opts.progress {
        ProgressBar::new(total_bytes)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "preparing {bar:40} {bytes}/{total_bytes} of input [{elapsed_precise}, eta {eta}]",
        )
        .expect("static template"),
    );
    let row_len = opts.block_size + 1;
    let (bos, eos) = (tok.specials.bos, tok.specials.eos);
    let mut report = PrepareReport {
        documents: 0,
        tokens: 0,
        train_rows: 0,
        val_rows: 0,
        dropped_tokens: 0,
        tokenize_seconds: 0.0,
        total_seconds: 0.0,
    };
    crate::atomic::write_new_dir(&target, |dir| {
        let split = |name| SplitWriter {
            dir,
            split: name,
            shard_rows: opts.shard_rows,
            dtype,
            tok,
            open: None,
            names: Vec::new(),
            rows: 0,
        };
        let (mut train, mut val) = (split("train"), split("val"));
        let mut packer = Packer {
            row_len,
            packing: opts.packing,
            buf: Vec::new(),
            docs_seen: 0,
            dropped: 0,
        };
        let (mut buffer, mut buffered, mut b) = (Vec::new(), 0usize, 0u64);
        // Tokenize, shuffle, pack and write one buffer of documents.
        let mut flush = |docs: &mut Vec<corpus::Document>, b: u64| -> Result<()> {
            let t0 = Instant::now();
            let streams: Vec<Vec<u32>> = pool.install(|| {
                docs.par_iter()
                    .map(|d| {
                        let mut ids = Vec::with_capacity(d.text.len() / 3 + 2);
                        ids.push(bos);
                        ids.extend(
                            tok.encode(&d.text)
                                .with_context(|| format!("tokenizing {}", d.source))?,
                        );
                        ids.push(eos);
                        Ok(ids)
                    })
                    .collect::<Result<_>>()
            })?;
            report.tokenize_seconds += t0.elapsed().as_secs_f64();
            report.documents += docs.len();
            report.tokens += streams.iter().map(|s| s.len() as u64).sum::<u64>();
            docs.clear();
            let mut order: Vec<usize> = (0..streams.len()).collect();
            shuffle(&mut order, opts.seed, 2 * b);
            let mut flat = Vec::new();
            packer.pack(order.iter().map(|&i| streams[i].as_slice()), &mut flat);
            let mut rows: Vec<&[u32]> = flat.chunks_exact(row_len).collect();
            shuffle(&mut rows, opts.seed, 2 * b + 1);
            let n_val = match opts.val_fraction > 0.0 && !rows.is_empty() {
                true => ((opts.val_fraction * rows.len() as f64).round() as usize).max(1),
                false => 0,
            };
            for (i, row) in rows.iter().enumerate() {
                match i < n_val {
                    true => val.push(row)?,
                    false => train.push(row)?,
                }
            }
            Ok(())
        };
        for file in &files {
            corpus::for_each_document(file, &opts.text_field, &mut |d| {
                buffered += d.text.len();
                buffer.push(d);
                if buffered >= opts.buffer_bytes {
                    flush(&mut buffer, b)?;
                    (buffered, b) = (0, b + 1);
                }
                Ok(())
            })?;
            bar.inc(std::fs::metadata(file).map_or(0, |m| m.len()));
        }
        if !buffer.is_empty() {
            flush(&mut buffer, b)?;
        }
        bar.finish_and_clear();
        report.dropped_tokens = packer.dropped + packer.buf.len() as u64;
        let (train_names, train_rows) = train.finish()?;
        let (val_names, val_rows) = val.finish()?;
        ensure!(
            train_rows + val_rows >= 1,
            "the corpus yields no complete row: {} tokens, but one row needs block_size + 1 = {row_len} (with {} packing); lower --block-size",
            report.tokens,
            opts.packing
        );
        ensure!(
            train_rows >= 1,
            "the corpus yields only {} rows of {row_len} tokens: too few to split off a validation set; lower --block-size or --val-fraction",
            train_rows + val_rows
        );
        (report.train_rows, report.val_rows) = (train_rows, val_rows);
        let mut index = DatasetIndex {
            format: shard::FORMAT.into(),
            version: shard::VERSION,
            block_size: opts.block_size,
            row_len,
            dtype,
            vocab_size: tok.vocab_size,
            tokenizer_sha256: tok.sha256.clone(),
            seed: opts.seed,
            packing: opts.packing.to_string(),
            documents: report.documents,
            tokens: report.tokens,
            splits: Default::default(),
        };
        index.splits.insert("train".into(), train_names);
        index.splits.insert("val".into(), val_names);
        index.write(dir)
    })?;
    report.total_seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Where `--part` preparations write inside a dataset directory.
pub const PARTS_DIR: &str = "parts";

/// Joins the parts under `dir/parts/` into one dataset: writes `dir/dataset.json` naming every
/// part's shards (parts in name order), nothing else. The parts must agree on block size, dtype,
/// vocabulary and tokenizer; every `i-of-N` part of an N must be there. Run again after adding a part.
pub fn merge(dir: &Path) -> Result<DatasetIndex> {
    let parts_dir = dir.join(PARTS_DIR);
    ensure!(
        parts_dir.is_dir(),
        "{} has no {PARTS_DIR}/ directory: nothing to merge (prepare with --part i/N)",
        dir.display()
    );
    let mut names: Vec<String> = std::fs::read_dir(&parts_dir)
        .with_context(|| format!("reading {}", parts_dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(shard::INDEX_FILE).is_file())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    names.sort_by_key(|n| part_sort_key(n));
    ensure!(
        !names.is_empty(),
        "{} holds no complete part (a part is complete once its dataset.json is written)",
        parts_dir.display()
    );
    // Every part of an i-of-N family must be present.
    let mut families: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for n in &names {
        if let Some((i, count)) = parse_part(n) {
            families.entry(count).or_default().push(i);
        }
    }
    for (count, have) in &families {
        let missing: Vec<usize> = (0..*count).filter(|i| !have.contains(i)).collect();
        ensure!(
            missing.is_empty(),
            "{}: parts {missing:?} of {count} are missing or incomplete",
            parts_dir.display()
        );
    }
    let mut merged: Option<DatasetIndex> = None;
    for n in &names {
        let part = DatasetIndex::read(&parts_dir.join(n))?;
        let prefix = format!("{PARTS_DIR}/{n}/");
        let m = merged.get_or_insert_with(|| DatasetIndex {
            documents: 0,
            tokens: 0,
            splits: Default::default(),
            ..part.clone()
        });
        for (what, a, b) in [
            ("block_size", m.block_size, part.block_size),
            ("vocab_size", m.vocab_size, part.vocab_size),
        ] {
            ensure!(a == b, "part {n} has {what} {b}, the first part {a}");
        }
        ensure!(
            m.dtype == part.dtype && m.tokenizer_sha256 == part.tokenizer_sha256,
            "part {n} was prepared with another tokenizer than the first part"
        );
        m.documents += part.documents;
        m.tokens += part.tokens;
        for (split, shards) in &part.splits {
            m.splits
                .entry(split.clone())
                .or_default()
                .extend(shards.iter().map(|s| format!("{prefix}{s}")));
        }
    }
    let index = merged.expect("at least one part");
    let bytes = serde_json::to_string_pretty(&index)?;
    crate::atomic::write_file(&dir.join(shard::INDEX_FILE), bytes.as_bytes())?;
    Ok(index)
}

fn parse_part(name: &str) -> Option<(usize, usize)> {
    let (i, n) = name.split_once("-of-")?;
    Some((i.parse().ok()?, n.parse().ok()?))
}

/// i-of-N parts by (N, i), other names after them alphabetically.
fn part_sort_key(name: &str) -> (u8, usize, usize, String) {
    match parse_part(name) {
        Some((i, n)) => (0, n, i, String::new()),
        None => (1, 0, 0, name.to_string()),
    }
}
