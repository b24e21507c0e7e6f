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
    let mut rows = Vec::new();
    let mut buf: Vec<u32> = Vec::new();
    let mut dropped = 0u64;
    match packing {
        Packing::Concat => {
            for doc in docs {
                buf.extend_from_slice(doc);
                let full = buf.len() / row_len * row_len;
                rows.extend_from_slice(&buf[..full]);
                buf.drain(..full);
            }
        }
        Packing::Incinerate => {
            for (i, doc) in docs.enumerate() {
                if i % 4096 == 0 {
                    dropped += buf.len() as u64;
                    buf.clear();
                }
                buf.extend_from_slice(doc);
                if buf.len() >= row_len {
                    rows.extend_from_slice(&buf[..row_len]);
                    dropped += (buf.len() - row_len) as u64;
                    buf.clear();
                }
            }
        }
    }
    dropped += buf.len() as u64;
    (rows, dropped)
}

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
    ensure!(
        !out.exists(),
        "{} already exists; choose a new output directory",
        out.display()
    );
    let files = corpus::input_files(inputs)?;
    let docs = corpus::read_documents(&files, &opts.text_field)?;
    let dtype = TokenDtype::for_vocab(tok.vocab_size);

    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = opts.threads {
        pool = pool.num_threads(n);
    }
    let pool = pool.build().context("starting the tokenizer threads")?;
    let bar = if opts.progress {
        ProgressBar::new(docs.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "tokenizing {bar:40} {pos}/{len} documents [{elapsed_precise}, eta {eta}]",
        )
        .expect("static template"),
    );
    let tokenize_start = Instant::now();
    let (bos, eos) = (tok.specials.bos, tok.specials.eos);
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
                bar.inc(1);
                Ok(ids)
            })
            .collect::<Result<_>>()
    })?;
    bar.finish_and_clear();
    let tokenize_seconds = tokenize_start.elapsed().as_secs_f64();
    let tokens: u64 = streams.iter().map(|s| s.len() as u64).sum();

    let mut order: Vec<usize> = (0..streams.len()).collect();
    shuffle(&mut order, opts.seed, 0);
    let row_len = opts.block_size + 1;
    let (flat, dropped) = pack(
        order.iter().map(|&i| streams[i].as_slice()),
        row_len,
        opts.packing,
    );
    let n_rows = flat.len() / row_len;
    ensure!(
        n_rows >= 1,
        "the corpus yields no complete row: {tokens} tokens, but one row needs block_size + 1 = {row_len} (with {} packing); lower --block-size",
        opts.packing
    );
    let mut rows: Vec<&[u32]> = flat.chunks_exact(row_len).collect();
    shuffle(&mut rows, opts.seed, 1);
    let n_val = (opts.val_fraction * n_rows as f64).round() as usize;
    let n_val = if opts.val_fraction > 0.0 {
        n_val.max(1)
    } else {
        0
    };
    ensure!(
        n_val < n_rows,
        "the corpus yields only {n_rows} rows of {row_len} tokens: too few to split off a validation set; lower --block-size or --val-fraction"
    );
    let (val, train) = rows.split_at(n_val);

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
        documents: docs.len(),
        tokens,
        splits: Default::default(),
    };
    crate::atomic::write_new_dir(out, |dir| {
        for (split, rows) in [("train", train), ("val", val)] {
            let mut names = Vec::new();
            for (i, chunk) in rows.chunks(opts.shard_rows).enumerate() {
                let name = format!("{split}-{i:05}");
                shard::write_shard(dir, &name, chunk, dtype, tok.vocab_size, &tok.sha256)?;
                names.push(name);
            }
            index.splits.insert(split.to_string(), names);
        }
        index.write(dir)
    })?;
    Ok(PrepareReport {
        documents: docs.len(),
        tokens,
        train_rows: train.len() as u64,
        val_rows: val.len() as u64,
        dropped_tokens: dropped,
        tokenize_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
    })
}
