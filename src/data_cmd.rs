//! `muninn data …`: tokenizer training, shard preparation, verification.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Subcommand;
use muninn_data::prepare::Part;
use muninn_data::{
    corpus, prepare, tokenizer, Loader, Packing, PrepareOptions, TokenDataset, TokenizerInfo,
};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Train a byte-level BPE tokenizer with Huginn's special tokens at the top of the vocabulary.
    Tokenizer {
        /// Corpus files (.txt, .jsonl, .json, .jsonl.zst, .json.zst, .jsonl.gz, .json.gz, .parquet)
        /// or directories of them.
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        /// Vocabulary size, special tokens included.
        #[arg(long)]
        vocab_size: usize,
        /// JSON field (or Parquet column) holding the text.
        #[arg(long, default_value = "text")]
        text_field: String,
        /// Output tokenizer.json (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Tokenize, pack into rows of block_size + 1, split train/val, shuffle and write shards.
    Prepare {
        /// tokenizer.json (trained by `muninn data tokenizer`, or any with <|begin_text|>, <|end_text|>, <|pad|>).
        #[arg(long)]
        tokenizer: PathBuf,
        /// Corpus files (.txt, .jsonl, .json, .jsonl.zst, .json.zst, .jsonl.gz, .json.gz, .parquet)
        /// or directories of them.
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        /// Tokens per training sequence; rows hold block_size + 1.
        #[arg(long)]
        block_size: usize,
        /// Output dataset directory (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Fraction of rows held out for validation.
        #[arg(long, default_value_t = 0.05)]
        val_fraction: f64,
        /// Seed of the document and row shuffles.
        #[arg(long, default_value_t = 233)]
        seed: u64,
        /// concat (every token kept; default) or incinerate (Huginn's packer, rows start at documents).
        #[arg(long, default_value = "concat")]
        packing: Packing,
        /// Rows per shard file.
        #[arg(long, default_value_t = 65536)]
        shard_rows: usize,
        /// Tokenizer threads [default: one per core]. The output does not depend on it.
        #[arg(long)]
        threads: Option<usize>,
        /// JSON field (or Parquet column) holding the text.
        #[arg(long, default_value = "text")]
        text_field: String,
        /// MB of text read, tokenized, shuffled and packed at a time: the bound on memory. A corpus
        /// within one buffer is shuffled as a whole.
        #[arg(long, default_value_t = 1024.0)]
        buffer_mb: f64,
        /// Prepare part i of N (every N-th input file from the i-th, in sorted order) into
        /// OUT/parts/i-of-N/; `muninn data merge OUT` joins the parts.
        #[arg(long)]
        part: Option<Part>,
        /// Name of this part's directory under OUT/parts/ (e.g. another corpus added later).
        #[arg(long)]
        part_name: Option<String>,
    },
    /// A sudoku dataset for TRM (OUT/puzzles.json, train.csv, test.csv in the Sudoku-Extreme
    /// layout): generated minimal puzzles with a unique solution, or imported with --from-csv.
    Sudoku {
        /// Box shape RxC (N = R·C) to generate: 2x2 (4×4 grids), 2x3 (6×6), 3x3 (9×9).
        #[arg(long = "box", required_unless_present = "from_csv")]
        boxes: Option<muninn_data::sudoku::Boxes>,
        /// Import training puzzles from a CSV in the Sudoku-Extreme layout instead (e.g. the real
        /// sudoku-extreme train.csv); needs --test-csv.
        #[arg(long, requires = "test_csv", conflicts_with = "boxes")]
        from_csv: Option<PathBuf>,
        /// The held-out puzzles of an import (every row is kept).
        #[arg(long)]
        test_csv: Option<PathBuf>,
        /// Of an import, keep this many training puzzles drawn by --seed (the reference takes
        /// 1000, unseeded) [default: all].
        #[arg(long)]
        subsample: Option<usize>,
        /// Of an import, refuse puzzles with more than one solution (slow for 9×9 at scale).
        #[arg(long)]
        check_unique: bool,
        /// Training puzzles.
        #[arg(long, default_value_t = 1000)]
        train: usize,
        /// Held-out puzzles (drawn from their own stream: independent of --train).
        #[arg(long, default_value_t = 500)]
        test: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// New output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Join the parts of OUT/parts/ (written by `prepare --part`) into one dataset: writes
    /// OUT/dataset.json naming every part's shards. Run again after adding parts.
    Merge { dir: PathBuf },
    /// Check a prepared dataset (headers, checksums, tokenizer) and read every row through the loader.
    Verify {
        dir: PathBuf,
        /// The tokenizer the dataset must have been prepared with.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Micro-batch size for the loader pass.
        #[arg(long, default_value_t = 8)]
        micro_batch: usize,
    },
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Tokenizer {
            input,
            vocab_size,
            text_field,
            out,
        } => {
            anyhow::ensure!(
                !out.exists(),
                "{} already exists; choose a new output path",
                out.display()
            );
            let files = corpus::input_files(&input)?;
            let docs = corpus::read_documents(&files, &text_field)?;
            let start = Instant::now();
            let tok =
                tokenizer::train(docs.iter().map(|d| d.text.as_str()), vocab_size, console())?;
            tok.save(&out)?;
            println!(
                "wrote {} ({} ids, bos {} eos {} pad {}; {} documents from {} files in {:.1} s)",
                out.display(),
                tok.vocab_size,
                tok.specials.bos,
                tok.specials.eos,
                tok.specials.pad,
                docs.len(),
                files.len(),
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
        DataCommand::Prepare {
            tokenizer,
            input,
            block_size,
            out,
            val_fraction,
            seed,
            packing,
            shard_rows,
            threads,
            text_field,
            buffer_mb,
            part,
            part_name,
        } => {
            anyhow::ensure!(
                buffer_mb > 0.0 && buffer_mb.is_finite(),
                "--buffer-mb must be positive"
            );
            let tok = TokenizerInfo::load(&tokenizer)?;
            let opts = PrepareOptions {
                block_size,
                val_fraction,
                seed,
                text_field,
                packing,
                shard_rows,
                threads,
                progress: console(),
                buffer_bytes: (buffer_mb * 1e6) as usize,
                part,
                part_name: part_name.clone(),
            };
            let r = prepare(&tok, &input, &out, &opts)
                .with_context(|| format!("preparing {}", out.display()))?;
            let written = match (part, &part_name) {
                (None, None) => out.clone(),
                (p, name) => out.join(muninn_data::prepare::PARTS_DIR).join(
                    name.clone()
                        .unwrap_or_else(|| p.unwrap_or(Part::WHOLE).name()),
                ),
            };
            println!(
                "wrote {}: {} documents, {} tokens → {} train + {} val rows of {} tokens ({} tokens dropped by {} packing)",
                written.display(),
                r.documents,
                r.tokens,
                r.train_rows,
                r.val_rows,
                block_size + 1,
                r.dropped_tokens,
                packing
            );
            println!(
                "tokenized at {:.0} tokens/s ({} threads); total {:.2} s",
                r.tokens_per_second(),
                threads.map_or_else(|| rayon_default_threads().to_string(), |n| n.to_string()),
                r.total_seconds
            );
            Ok(())
        }
        DataCommand::Sudoku {
            from_csv: Some(from),
            test_csv,
            subsample,
            check_unique,
            seed,
            out,
            ..
        } => {
            use muninn_data::sudoku::{PuzzleData, PuzzleSet};
            let start = Instant::now();
            let test_csv = test_csv.context("--from-csv needs --test-csv")?;
            let mut train = PuzzleSet::open_csv(&from, check_unique)?;
            let test = PuzzleSet::open_csv(&test_csv, check_unique)?;
            if let Some(k) = subsample {
                let n = train.pairs.len() as u64;
                anyhow::ensure!(
                    k >= 1 && k as u64 <= n,
                    "--subsample {k}: {} has {n} puzzles",
                    from.display()
                );
                let perm = muninn_data::perm::Permutation::new(n, seed, 0);
                let rows: Vec<usize> = (0..k as u64).map(|i| perm.apply(i) as usize).collect();
                train.pairs = rows.iter().map(|&r| train.pairs[r].clone()).collect();
            }
            PuzzleData::write(&out, &train, &test, None)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {}: {} training puzzles from {} and {} test puzzles from {} ({n}×{n}) in {:.1} s",
                out.display(),
                train.pairs.len(),
                from.display(),
                test.pairs.len(),
                test_csv.display(),
                start.elapsed().as_secs_f64(),
                n = train.boxes.n()
            );
            Ok(())
        }
        DataCommand::Sudoku {
            boxes,
            train,
            test,
            seed,
            out,
            ..
        } => {
            let boxes = boxes.context("--box RxC (or --from-csv)")?;
            let start = Instant::now();
            let spec = muninn_data::sudoku::GenerateSpec {
                sudoku: boxes,
                train,
                test,
                seed,
            };
            muninn_data::sudoku::write_generated(&out, &spec)
                .with_context(|| format!("generating {}", out.display()))?;
            println!(
                "wrote {}: {train} training and {test} test {n}×{n} puzzles ({}x{} boxes, seed {seed}) in {:.1} s",
                out.display(),
                boxes.rows,
                boxes.cols,
                start.elapsed().as_secs_f64(),
                n = boxes.n()
            );
            Ok(())
        }
        DataCommand::Merge { dir } => {
            let index = muninn_data::prepare::merge(&dir)
                .with_context(|| format!("merging the parts of {}", dir.display()))?;
            let shards = |s: &str| index.splits.get(s).map_or(0, Vec::len);
            println!(
                "wrote {}: {} documents, {} tokens in {} train and {} val shards",
                dir.join(muninn_data::shard::INDEX_FILE).display(),
                index.documents,
                index.tokens,
                shards("train"),
                shards("val")
            );
            Ok(())
        }
        DataCommand::Verify {
            dir,
            tokenizer,
            micro_batch,
        } => {
            anyhow::ensure!(micro_batch > 0, "--micro-batch must be positive");
            let tok = tokenizer.as_deref().map(TokenizerInfo::load).transpose()?;
            for split in ["train", "val"] {
                let start = Instant::now();
                let ds = TokenDataset::open(&dir, split, tok.as_ref())?;
                let opened = start.elapsed().as_secs_f64();
                let mut loader = Loader::new(&ds, ds.index.seed);
                let start = Instant::now();
                let (mut rows, mut checksum) = (0u64, 0i64);
                while rows < ds.rows() {
                    let b = loader.next_batch(0, 1, micro_batch);
                    checksum = checksum.wrapping_add(b.inputs.iter().sum::<i64>());
                    rows += b.rows as u64;
                }
                let secs = start.elapsed().as_secs_f64();
                println!(
                    "{split}: {} rows of {} tokens verified in {opened:.2} s; loader read them at {:.0} rows/s (token sum {checksum})",
                    ds.rows(),
                    ds.block_size() + 1,
                    rows as f64 / secs.max(1e-9)
                );
            }
            Ok(())
        }
    }
}

fn rayon_default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Progress bars only for a person at a terminal; indicatif hides them otherwise anyway.
fn console() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}
