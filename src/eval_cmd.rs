//! Test-time scaling: `muninn eval` (validation loss by depth), `muninn generate` (KV-cached
//! sampling with adaptive exit) and `muninn latents` (how the latent state converges).

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use muninn_data::{atomic, loader, TokenDataset, TokenizerInfo};
use muninn_model::decode::{self, Budget, GenerateOptions, Generation, Sampling, Start};
use muninn_model::gpt_family::GptFamily;
use muninn_model::tidar::{self, LmObjective, Recompute, TidarOptions};
use muninn_model::{checkpoint, latents, ExitCriterion, Model, Precision};
use muninn_trainer::config::RawRunConfig;
use muninn_trainer::eval::{depth_losses, validate, ValBatch};
use serde_json::json;
use tch::{Kind, Tensor};

use crate::plot::{self, Heatmap, Panel, Series};

/// Options every command here shares: where the model runs.
#[derive(Args)]
pub struct RunOn {
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// f32 or bf16-mixed.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// libtorch CPU threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
}

impl RunOn {
    fn load(&self, checkpoint: &Path) -> Result<Model> {
        if self.threads > 0 {
            tch::set_num_threads(self.threads);
        }
        let device = muninn_trainer::parse_device(&self.device)?;
        checkpoint::load_any(checkpoint, device, self.precision)
    }
}

#[derive(Args)]
pub struct EvalArgs {
    checkpoint: PathBuf,
    /// A prepared dataset directory; its `val` split is evaluated [default: the data of the run that
    /// wrote the checkpoint].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Test-time depths r (core iterations) [default: 1,2,4,8,16,32,64]; Huginn only.
    #[arg(long, value_delimiter = ',')]
    depths: Option<Vec<i64>>,
    /// Validation rows, from the start of the split [default: the run's eval.max_rows, else 256].
    #[arg(long)]
    max_rows: Option<u64>,
    /// Rows per forward pass; each batch's s0 is seeded by its index [default: the run's
    /// train.micro_batch_size, as its validation, else 8].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Seed of the random initial states [default: the run's train.seed, as its validation].
    #[arg(long)]
    seed: Option<u64>,
    /// Output directory for eval.json and eval.png [default: RUN/eval/<checkpoint name>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// TRM: puzzles to solve, a CSV in the Sudoku-Extreme layout (`question,answer,rating`, `.` for
    /// a blank) [default: test.csv of --data, else of the run's data.dir].
    #[arg(long)]
    puzzles: Option<PathBuf>,
    /// COCONUT (any arm): a JSON list of {question, steps, answer} to answer greedily; reports
    /// accuracy (the text after the last `#`, commas dropped, equal to the answer) and the mean
    /// number of generated tokens.
    #[arg(long)]
    pub qa: Option<PathBuf>,
    /// With --qa: the curriculum stage whose thoughts the prompts hold [default: the arm's final].
    #[arg(long)]
    pub stage: Option<usize>,
    /// With --qa: the most tokens generated per question.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    #[command(flatten)]
    on: RunOn,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum StartArg {
    /// The model's `state_init` (Huginn: random like-init), seeded by --seed.
    Config,
    Zero,
    Random,
}

impl From<StartArg> for Start {
    fn from(s: StartArg) -> Start {
        match s {
            StartArg::Config => Start::Config,
            StartArg::Zero => Start::Zero,
            StartArg::Random => Start::Random,
        }
    }
}

/// A prompt and the tokenizer that reads it.
#[derive(Args)]
pub struct PromptArgs {
    /// Text; encoded as <|begin_text|> followed by the text.
    #[arg(long)]
    prompt: String,
    /// tokenizer.json [default: the checkpoint's own, else the one of the run that wrote it].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Where each token's recurrence starts.
    #[arg(long, value_enum, default_value = "config")]
    init_state: StartArg,
    /// Seed of torch's RNG (initial states and sampling).
    #[arg(long, default_value_t = 0)]
    seed: i64,
}

#[derive(Args)]
pub struct GenerateArgs {
    checkpoint: PathBuf,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Core iterations per token; with --exit, the most [default: the model's mean_recurrence].
    #[arg(long)]
    depth: Option<i64>,
    /// Per-token adaptive exit: kl[:1e-3], latent-diff[:0.03], entropy-diff[:1e-3] or argmax[:5].
    #[arg(long)]
    exit: Option<ExitCriterion>,
    /// With --exit: never stop a token before this many iterations.
    #[arg(long, default_value_t = 0)]
    min_steps: i64,
    /// Tokens to generate (fewer if the model emits <|end_text|> or fills its block_size).
    #[arg(long, default_value_t = 48)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Continuous compute: each token's recurrence starts from the previous token's final state.
    #[arg(long)]
    continuous: bool,
    /// Recompute the whole sequence for every token (greedy, fixed depth, no cache): the slow
    /// reference that cached decoding must match with --init-state zero.
    #[arg(long)]
    no_kv_cache: bool,
    /// Print one JSON object instead of text: `text`, `tokens` (the generated ids), `forwards`,
    /// `tokens_per_forward`, `tokens_per_s` and the options.
    #[arg(long)]
    json: bool,
    /// COCONUT checkpoints: continuous thoughts after the question [default: the final stage's
    /// count, max_latent_stage · c_thought; 0 for arms without thoughts].
    #[arg(long)]
    thoughts: Option<usize>,
    /// TiDAR decoding (a checkpoint trained with `[objective] kind = "tidar"`): each forward
    /// verifies the drafts of the last one and drafts the next block from mask tokens.
    #[arg(long)]
    tidar: bool,
    /// With --tidar: the draft length k [default: the objective's block].
    #[arg(long)]
    draft: Option<i64>,
    /// With --tidar: trust in the AR head, verification logits β·AR + (1−β)·diffusion; 1 decodes
    /// exactly as plain AR of the same model.
    #[arg(long, default_value_t = 1.0)]
    beta: f64,
    #[command(flatten)]
    on: RunOn,
}

#[derive(Args)]
pub struct LatentsArgs {
    checkpoint: PathBuf,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Core iterations.
    #[arg(long)]
    depth: i64,
    /// Token positions (0 is <|begin_text|>) whose trajectories the PCA plot shows [default: four
    /// spread over the prompt].
    #[arg(long, value_delimiter = ',')]
    pca_tokens: Vec<usize>,
    /// Output directory for convergence.png, pca.png and latents.json.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    on: RunOn,
}

/// The run that wrote a checkpoint at `RUN/checkpoints/step-N/`, from its frozen `config.toml`
/// (parsed, not checked against this machine: its data may be elsewhere).
fn run_of(checkpoint: &Path) -> Result<Option<(PathBuf, RawRunConfig)>> {
    let Some(run_dir) = muninn_trainer::ckpt::run_of(checkpoint) else {
        return Ok(None);
    };
    let path = run_dir.join("config.toml");
    let cfg = RawRunConfig::parse_file(&path).with_context(|| {
        format!(
            "reading {}, the config of the run that wrote {}",
            path.display(),
            checkpoint.display()
        )
    })?;
    Ok(Some((run_dir, cfg)))
}

/// Where `muninn eval` writes its report: --out, else RUN/eval/<checkpoint name>; created.
fn report_dir(a: &EvalArgs, run: &Option<(PathBuf, RawRunConfig)>) -> Result<PathBuf> {
    let out = match (&a.out, run) {
        (Some(o), _) => o.clone(),
        (None, Some((dir, _))) => dir.join("eval").join(
            a.checkpoint
                .file_name()
                .context("the checkpoint path has no name")?,
        ),
        (None, None) => bail!("pass --out DIR for the report"),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    Ok(out)
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let model = a.on.load(&a.checkpoint)?;
    if let Some(qa) = &a.qa {
        let run = run_of(&a.checkpoint)?;
        let out = report_dir(&a, &run)?;
        let opts = crate::coconut_cmd::QaOptions {
            file: qa.clone(),
            stage: a.stage,
            max_new_tokens: a.max_new_tokens,
            max_rows: a.max_rows,
            batch_size: a.batch_size.unwrap_or(32),
            out,
        };
        let tokenizer = checkpoint_tokenizer(&a.checkpoint)?;
        return crate::coconut_cmd::eval_qa(
            &a.checkpoint,
            model,
            run.map(|r| r.1),
            &tokenizer,
            &opts,
        );
    }
    ensure!(
        a.stage.is_none(),
        "--stage is for --qa (COCONUT's thoughts in the prompt)"
    );
    let model = match model {
        Model::Trm(m) => return eval_puzzles(&a, &m),
        other => other,
    };
    ensure!(
        a.puzzles.is_none(),
        "--puzzles: {} is a {} model; puzzles are for trm",
        a.checkpoint.display(),
        model.family().name()
    );
    let depths = match (&model, &a.depths) {
        (Model::Gpt(_), Some(_)) => bail!(
            "--depths: {} is a gpt model, which has no recurrence",
            a.checkpoint.display()
        ),
        (_, Some(d)) => d.clone(),
        (_, None) => vec![1, 2, 4, 8, 16, 32, 64],
    };
    ensure!(!depths.is_empty(), "--depths is empty");
    if let Some(bad) = depths.iter().find(|&&r| r < 1) {
        bail!("--depths: {bad} is not a depth (at least one core iteration)");
    }
    let shape = model.config();
    let run = run_of(&a.checkpoint)?;
    let data = match (&a.data, &run) {
        (Some(d), _) => d.clone(),
        (None, Some((_, rc))) if !rc.data.dir.is_dir() => bail!(
            "the run that wrote {} read its data from {}, which is not here: pass --data DIR",
            a.checkpoint.display(),
            rc.data.dir.display()
        ),
        (None, Some((_, rc))) => rc.data.dir.clone(),
        (None, None) => bail!(
            "{} is not inside a run directory (RUN/checkpoints/step-N with RUN/config.toml): pass --data DIR",
            a.checkpoint.display()
        ),
    };
    let ds = TokenDataset::open(&data, "val", None)
        .with_context(|| format!("opening the validation split of {}", data.display()))?;
    ensure!(
        ds.index.vocab_size as i64 <= shape.vocab_size(),
        "{} holds ids of a {}-id tokenizer, more than the model's vocab_size {}",
        data.display(),
        ds.index.vocab_size,
        shape.vocab_size()
    );
    ensure!(
        ds.block_size() as i64 <= shape.block_size(),
        "{} holds {}-token rows, longer than the model's block_size {}",
        data.display(),
        ds.block_size(),
        shape.block_size()
    );
    let max_rows = a
        .max_rows
        .or(run.as_ref().map(|(_, rc)| rc.eval.max_rows))
        .unwrap_or(256);
    let seed = a
        .seed
        .or(run.as_ref().map(|(_, rc)| rc.train.seed))
        .unwrap_or(0);
    let out = report_dir(&a, &run)?;

    let batch_size = a
        .batch_size
        .or(run.as_ref().map(|(_, rc)| rc.train.micro_batch_size))
        .unwrap_or(8);
    ensure!(batch_size >= 1, "--batch-size must be at least 1");
    ensure!(max_rows >= 1, "--max-rows must be at least 1");
    let batches: Vec<ValBatch> = loader::val_batches(&ds, batch_size, max_rows, 0, 1)
        .iter()
        .enumerate()
        .map(|(i, b)| ValBatch::new(i, b, model.device()))
        .collect();
    let rows: i64 = batches.iter().map(ValBatch::rows).sum();
    let model = match model {
        Model::Huginn(m) => m,
        Model::Trm(_) => unreachable!("handled above"),
        Model::Gpt(m) => {
            // No depth: one loss.
            println!(
                "eval {}: {} validation rows of {} tokens from {} (gpt)",
                a.checkpoint.display(),
                rows,
                ds.block_size(),
                data.display()
            );
            let family = GptFamily {
                model: m,
                tidar: None,
                coconut: None,
            };
            let [(_, loss)] = validate(&family, &batches, &mut |_| Ok(()))?[..] else {
                unreachable!("the gpt family has one validation metric")
            };
            ensure!(loss.is_finite(), "the validation loss is not finite");
            println!("{:>9}  {:>10}", "val loss", "perplexity");
            println!("{loss:>9.4}  {:>10.2}", loss.exp());
            let report = json!({
                "checkpoint": a.checkpoint,
                "data": data,
                "split": "val",
                "rows": rows,
                "tokens_per_row": ds.block_size(),
                "family": "gpt",
                "loss": loss,
                "ppl": loss.exp(),
            });
            let json_path = out.join("eval.json");
            atomic::write_file(
                &json_path,
                serde_json::to_string_pretty(&report)?.as_bytes(),
            )?;
            println!("wrote {}", json_path.display());
            return Ok(());
        }
    };
    let cfg = model.config().clone();
    println!(
        "eval {}: {} validation rows of {} tokens from {}, s0 seed {seed}, trained at mean depth {}",
        a.checkpoint.display(),
        rows,
        ds.block_size(),
        data.display(),
        cfg.mean_recurrence
    );
    println!("{:>6}  {:>9}  {:>10}", "depth", "val loss", "perplexity");
    let mut results = Vec::new();
    for &r in &depths {
        let [(_, loss)] = depth_losses(&model, &batches, &[r], seed, &mut |_| Ok(()))?[..] else {
            unreachable!("one depth in, one loss out")
        };
        ensure!(
            loss.is_finite(),
            "the validation loss at depth {r} is not finite"
        );
        let mark = match r == cfg.mean_recurrence {
            true => "  <- training mean depth",
            false => "",
        };
        println!("{r:>6}  {loss:>9.4}  {:>10.2}{mark}", loss.exp());
        results.push((r, loss));
    }

    let report = json!({
        "checkpoint": a.checkpoint,
        "data": data,
        "split": "val",
        "rows": rows,
        "tokens_per_row": ds.block_size(),
        "seed": seed,
        "mean_recurrence": cfg.mean_recurrence,
        "mean_backprop_depth": cfg.mean_backprop_depth,
        "depths": results.iter().map(|(r, l)| json!({"depth": r, "loss": l, "ppl": l.exp()})).collect::<Vec<_>>(),
    });
    let json_path = out.join("eval.json");
    atomic::write_file(
        &json_path,
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    let png = out.join("eval.png");
    let (lo, hi) = results
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(_, l)| {
            (a.min(l), b.max(l))
        });
    let mut series = vec![Series {
        label: "validation loss".into(),
        points: results.iter().map(|&(r, l)| (r as f64, l)).collect(),
    }];
    let r_bar = cfg.mean_recurrence;
    let (first, last) = (
        depths.iter().min().copied().unwrap_or(1),
        depths.iter().max().copied().unwrap_or(1),
    );
    if (first..=last).contains(&r_bar) {
        let r_bar = r_bar as f64;
        series.push(Series {
            label: format!("training mean depth {}", cfg.mean_recurrence),
            points: vec![(r_bar, lo), (r_bar, hi)],
        });
    }
    atomic::write_file_with(&png, |p| {
        plot::line_panels(
            p,
            &[Panel {
                title: format!(
                    "{}: validation loss by test-time depth",
                    a.checkpoint
                        .file_name()
                        .map_or(String::new(), |n| n.to_string_lossy().into_owned())
                ),
                x_label: "core iterations r (log scale)".into(),
                y_label: "validation loss (nats/token)".into(),
                log2_x: true,
                series,
            }],
            900,
            560,
        )
    })?;
    println!("wrote {} and {}", json_path.display(), png.display());
    Ok(())
}

/// `muninn eval` of a TRM checkpoint: every puzzle from the initial carry through all N_sup
/// supervision steps with the checkpoint's EMA weights (where it has them), as the reference
/// evaluates; exact accuracy (every cell right), per-cell accuracy, the halting head's accuracy,
/// and for ARC pass@1 and pass@2 over the augmented copies' votes (with `submission.json`).
fn eval_puzzles(a: &EvalArgs, m: &muninn_model::trm::Trm) -> Result<()> {
    use muninn_data::puzzles::{Dataset, PuzzleSet};
    ensure!(
        a.depths.is_none(),
        "--depths: {} is a trm model; it always runs model.halt_max_steps supervision steps",
        a.checkpoint.display()
    );
    let run = run_of(&a.checkpoint)?;
    let (source, data) = match (&a.puzzles, &a.data, &run) {
        (Some(f), _, _) => (f.clone(), Dataset::test_csv(PuzzleSet::open_csv(f, false)?)),
        (None, Some(d), _) => (d.clone(), Dataset::open(d)?),
        (None, None, Some((_, rc))) => (rc.data.dir.clone(), Dataset::open(&rc.data.dir)?),
        (None, None, None) => bail!(
            "{} is not inside a run directory: pass --puzzles FILE.csv or --data DIR",
            a.checkpoint.display()
        ),
    };
    let c = m.config();
    ensure!(
        data.seq_len() as i64 == c.seq_len && data.vocab_size() == c.vocab_size,
        "{} holds {} ({} cells, vocabulary {}); the model was trained on {} cells with a vocabulary of {}",
        source.display(),
        data.describe(),
        data.seq_len(),
        data.vocab_size(),
        c.seq_len,
        c.vocab_size,
    );
    ensure!(
        data.num_puzzle_identifiers() as i64 <= c.num_puzzle_identifiers,
        "{} needs {} puzzle identifiers; the model's table has {}",
        source.display(),
        data.num_puzzle_identifiers(),
        c.num_puzzle_identifiers
    );
    let max_rows = a.max_rows.unwrap_or(u64::MAX);
    let batch_size = a.batch_size.unwrap_or(256);
    ensure!(batch_size >= 1, "--batch-size must be at least 1");
    let mut sums = muninn_model::trm_family::PuzzleSums::default();
    let mut votes = muninn_data::arc::Votes::default();
    for b in &data.val_batches(batch_size, max_rows, 0, 1) {
        let vb = ValBatch::new(0, b, m.params().device());
        let ids = vb.puzzle_ids.as_ref().context("puzzle rows carry ids")?;
        let (s, step) =
            muninn_model::trm_family::evaluate_puzzles(m, &vb.inputs, &vb.targets, ids)?;
        sums += s;
        if let Dataset::Arc(arc) = &data {
            let preds = Vec::<i64>::try_from(step.logits.argmax(-1, false).flatten(0, -1))?;
            let q = Vec::<f64>::try_from(step.q_halt.to_kind(Kind::Double))?;
            for (i, row) in b.row_ids.iter().enumerate() {
                let cells = &preds[i * b.block..(i + 1) * b.block];
                votes.add(arc, *row as usize, cells, q[i])?;
            }
        }
    }
    ensure!(
        sums.rows > 0.0,
        "{} has no puzzles to evaluate",
        source.display()
    );
    let per = |x: f64| x / sums.rows;
    let ema = a
        .checkpoint
        .join(muninn_model::checkpoint::EMA_FILE)
        .is_file();
    println!(
        "eval {}: {} puzzles of {} from {}, {} supervision steps, {} weights",
        a.checkpoint.display(),
        sums.rows,
        data.describe(),
        source.display(),
        c.halt_max_steps,
        if ema { "EMA" } else { "trained" }
    );
    println!(
        "{:>14}  {:>9}  {:>15}  {:>7}  {:>8}",
        "exact_accuracy", "accuracy", "q_halt_accuracy", "steps", "lm_loss"
    );
    println!(
        "{:>14.4}  {:>9.4}  {:>15.4}  {:>7.2}  {:>8.4}",
        per(sums.exact),
        per(sums.accuracy),
        per(sums.q_halt_right),
        per(sums.steps),
        per(sums.lm_loss)
    );
    let out = report_dir(a, &run)?;
    let mut report = json!({
        "checkpoint": a.checkpoint,
        "puzzles": source,
        "kind": data.describe(),
        "family": "trm",
        "weights": if ema { "ema" } else { "trained" },
        "rows": sums.rows,
        "supervision_steps": c.halt_max_steps,
        "exact_accuracy": per(sums.exact),
        "accuracy": per(sums.accuracy),
        "q_halt_accuracy": per(sums.q_halt_right),
        "steps": per(sums.steps),
        "lm_loss": per(sums.lm_loss),
    });
    if let Dataset::Arc(arc) = &data {
        let scores = votes.score(arc, &[1, 2]);
        println!(
            "ARC, {} evaluation tasks (every copy votes; ties by mean sigmoid(q_halt)): pass@1 {:.4}, pass@2 {:.4}",
            scores.tasks, scores.pass[0].1, scores.pass[1].1
        );
        for (k, p) in &scores.pass {
            report[format!("pass@{k}")] = json!(p);
        }
        report["tasks"] = json!(scores.tasks);
        let sub = out.join("submission.json");
        atomic::write_file(&sub, serde_json::to_string(&scores.submission)?.as_bytes())?;
        println!("wrote {}", sub.display());
    }
    let json_path = out.join("eval.json");
    atomic::write_file(
        &json_path,
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    println!("wrote {}", json_path.display());
    Ok(())
}

/// The tokenizer a checkpoint carries (`tokenizer.json`, copied in by training), else the one
/// its run recorded.
pub fn checkpoint_tokenizer(checkpoint: &Path) -> Result<PathBuf> {
    let own = checkpoint.join(muninn_trainer::ckpt::TOKENIZER_FILE);
    if own.is_file() {
        return Ok(own);
    }
    match run_of(checkpoint)? {
        Some((_, rc)) => match rc.data.tokenizer {
            Some(t) if t.is_file() => Ok(t),
            Some(t) => bail!(
                "{} has no tokenizer.json, and its run's tokenizer {} is not here: pass --tokenizer FILE",
                checkpoint.display(),
                t.display()
            ),
            None => bail!(
                "{} has no tokenizer (its run trained on puzzles, not text)",
                checkpoint.display()
            ),
        },
        None => bail!(
            "{} has no tokenizer.json and is not inside a run directory: pass --tokenizer FILE",
            checkpoint.display()
        ),
    }
}

/// The model, tokenizer and prompt ids of `generate` and `latents`.
fn prompt_ids(
    p: &PromptArgs,
    checkpoint: &Path,
    shape: &muninn_model::ModelConfig,
) -> Result<(TokenizerInfo, Vec<i64>)> {
    let path = match &p.tokenizer {
        Some(t) => t.clone(),
        None => checkpoint_tokenizer(checkpoint)?,
    };
    let tok = TokenizerInfo::load(&path)?;
    ensure!(
        tok.vocab_size as i64 <= shape.vocab_size(),
        "{} has {} ids, more than the model's vocab_size {}",
        path.display(),
        tok.vocab_size,
        shape.vocab_size()
    );
    let ids = tok.encode_prompt(&p.prompt)?;
    ensure!(
        ids.len() as i64 <= shape.block_size(),
        "the prompt is {} tokens, more than the model's block_size {}",
        ids.len(),
        shape.block_size()
    );
    tch::manual_seed(p.seed);
    Ok((tok, ids))
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let model = a.on.load(&a.checkpoint)?;
    let (tok, prompt) = prompt_ids(&a.prompt, &a.checkpoint, &model.config())?;
    ensure!(a.max_tokens >= 1, "--max-tokens must be at least 1");
    ensure!(
        a.temperature >= 0.0 && a.temperature.is_finite(),
        "--temperature must be >= 0"
    );
    ensure!(a.top_p > 0.0 && a.top_p <= 1.0, "--top-p must be in (0, 1]");
    let stop = Some(i64::from(tok.specials.eos));
    let sampling = Sampling {
        temperature: a.temperature,
        top_p: a.top_p,
    };
    if let Model::Trm(_) = model {
        bail!(
            "{} is a trm model: it solves puzzles (muninn eval --puzzles), it does not generate text",
            a.checkpoint.display()
        );
    }
    if a.tidar {
        return generate_tidar(&a, &model, &tok, &prompt, sampling, stop);
    }
    if let Some((_, rc)) = run_of(&a.checkpoint)? {
        if let muninn_model::tidar::LmObjective::Coconut(c) = &rc.objective {
            ensure!(
                a.temperature == 0.0 && a.top_p == 1.0 && a.depth.is_none() && a.exit.is_none(),
                "a COCONUT checkpoint decodes greedily after its thoughts: drop --temperature, --top-p, --depth and --exit"
            );
            let o = crate::coconut_cmd::GenerateOptions {
                thoughts: a.thoughts,
                max_tokens: a.max_tokens,
                json: a.json,
            };
            return crate::coconut_cmd::generate(&model, &rc, c, &tok, &a.prompt.prompt, &o);
        }
    }
    ensure!(
        a.thoughts.is_none(),
        "--thoughts is for COCONUT checkpoints ([objective] kind = \"coconut\")"
    );
    ensure!(
        a.draft.is_none() && a.beta == 1.0,
        "--draft and --beta are for TiDAR decoding: add --tidar"
    );
    let started = std::time::Instant::now();
    let model = match model {
        Model::Huginn(m) => m,
        Model::Trm(_) => unreachable!("refused above"),
        Model::Gpt(m) => {
            ensure!(
                a.depth.is_none() && a.exit.is_none() && a.min_steps == 0 && !a.continuous,
                "--depth, --exit, --min-steps and --continuous are for recurrent models; {} is a gpt model",
                a.checkpoint.display()
            );
            let tokens = match a.no_kv_cache {
                // The uncached reference: the whole sequence again for every token, greedily.
                true => {
                    ensure!(
                        a.temperature == 0.0 && a.top_p == 1.0,
                        "--no-kv-cache decodes greedily: drop --temperature and --top-p"
                    );
                    generate_gpt_uncached(&m, &prompt, a.max_tokens, stop)?
                }
                false => m.generate(&prompt, a.max_tokens, &sampling, stop)?,
            };
            let secs = started.elapsed().as_secs_f64();
            let text = tok.decode(&tokens)?;
            // One forward per token: the prompt's gives the first.
            let n = tokens.len();
            if a.json {
                println!(
                    "{}",
                    json!({"prompt": a.prompt.prompt, "prompt_tokens": prompt, "tokens": tokens, "text": text,
                           "forwards": n, "tokens_per_forward": 1.0, "tokens_per_s": n as f64 / secs})
                );
            } else {
                println!("{}{text}", a.prompt.prompt);
                println!(
                    "-- {n} tokens in {n} forwards, {:.1} tokens/s",
                    n as f64 / secs
                );
            }
            return Ok(());
        }
    };
    let depth = a.depth.unwrap_or(model.config().mean_recurrence);
    ensure!(depth >= 1, "--depth must be at least 1");
    ensure!(
        a.min_steps <= depth,
        "--min-steps {} is more than --depth {depth}",
        a.min_steps
    );
    ensure!(
        a.min_steps == 0 || a.exit.is_some(),
        "--min-steps only applies with --exit"
    );
    let generation = if a.no_kv_cache {
        ensure!(
            a.exit.is_none() && !a.continuous && a.temperature == 0.0 && a.top_p == 1.0,
            "--no-kv-cache decodes greedily at a fixed depth: drop --exit, --continuous, --temperature and --top-p"
        );
        ensure!(
            matches!(a.prompt.init_state, StartArg::Zero),
            "--no-kv-cache starts every token from a zero state: add --init-state zero"
        );
        let t = decode::generate_uncached(&model, &prompt, a.max_tokens, depth, stop)?;
        let n = t.len();
        Generation {
            tokens: t,
            iterations: vec![depth; n],
        }
    } else {
        decode::generate(
            &model,
            &prompt,
            &GenerateOptions {
                max_tokens: a.max_tokens,
                budget: Budget {
                    max_steps: depth,
                    min_steps: a.min_steps,
                    exit: a.exit,
                },
                sampling,
                start: a.prompt.init_state.into(),
                continuous: a.continuous,
                stop_token: stop,
            },
        )?
    };
    let secs = started.elapsed().as_secs_f64();
    let mean = generation.mean_iterations();
    let Generation { tokens, iterations } = generation;
    let text = tok.decode(&tokens)?;
    if a.json {
        println!(
            "{}",
            json!({
                "prompt": a.prompt.prompt,
                "prompt_tokens": prompt,
                "tokens": tokens,
                "text": text,
                "forwards": tokens.len(),
                "tokens_per_forward": 1.0,
                "tokens_per_s": tokens.len() as f64 / secs,
                "iterations": iterations,
                "mean_iterations": mean,
                "max_depth": depth,
                "exit": a.exit.map(|e| e.to_string()),
            })
        );
        return Ok(());
    }
    println!("{}{text}", a.prompt.prompt);
    let (lo, hi) = (
        iterations.iter().min().copied().unwrap_or(0),
        iterations.iter().max().copied().unwrap_or(0),
    );
    println!(
        "-- {} tokens; core iterations per token: mean {mean:.2} (min {lo}, max {hi}) of at most {depth}{}",
        tokens.len(),
        a.exit.map_or(String::new(), |e| format!(", exit {e}"))
    );
    Ok(())
}

/// `muninn generate --tidar`: self-speculative decoding of a TiDAR-trained GPT or Huginn (at a fixed
/// depth), behind the KV cache or, with --no-kv-cache, re-running the whole prefix every step.
fn generate_tidar(
    a: &GenerateArgs,
    model: &Model,
    tok: &TokenizerInfo,
    prompt: &[i64],
    sampling: Sampling,
    stop: Option<i64>,
) -> Result<()> {
    let trained = run_of(&a.checkpoint)?.map(|(_, rc)| rc.objective);
    let cfg = match trained {
        Some(LmObjective::Tidar(c)) => c,
        Some(LmObjective::Coconut(_)) => bail!(
            "{} was trained with COCONUT's objective, not TiDAR's: decode it without --tidar",
            a.checkpoint.display()
        ),
        Some(LmObjective::NextToken) => bail!(
            "{} was trained for next-token prediction only (its run's config has no [objective] kind = \"tidar\"): decode it without --tidar",
            a.checkpoint.display()
        ),
        None => bail!(
            "{} is not inside a run directory: --tidar reads the block and mask id from the run's config.toml",
            a.checkpoint.display()
        ),
    };
    ensure!(
        a.exit.is_none() && a.min_steps == 0 && !a.continuous,
        "--exit, --min-steps and --continuous are not for --tidar: TiDAR decodes at a fixed depth"
    );
    ensure!(
        !a.no_kv_cache || sampling.temperature == 0.0,
        "--no-kv-cache decodes greedily: drop --temperature and --top-p"
    );
    let opts = TidarOptions {
        draft: a.draft.unwrap_or(cfg.block),
        beta: a.beta,
        sampling,
        max_tokens: a.max_tokens,
        stop_token: stop,
    };
    ensure!(opts.draft >= 1, "--draft must be at least 1");
    ensure!(
        (0.0..=1.0).contains(&a.beta),
        "--beta {} must be in [0, 1]",
        a.beta
    );
    let started = std::time::Instant::now();
    let (out, depth) = match model {
        Model::Gpt(m) => {
            ensure!(
                a.depth.is_none(),
                "--depth is for recurrent models; {} is a gpt model",
                a.checkpoint.display()
            );
            let out = match a.no_kv_cache {
                true => {
                    let forward = Box::new(|x: &Tensor, att: &muninn_model::Attend| {
                        Ok(m.forward_with(muninn_model::Input::Ids(x), att)?.logits)
                    });
                    let mut lm = Recompute::new(forward, m.config().block_size, m.device());
                    tidar::generate(&mut lm, prompt, cfg.mask_id, &opts)?
                }
                false => tidar::generate(&mut m.cached()?, prompt, cfg.mask_id, &opts)?,
            };
            (out, None)
        }
        Model::Huginn(m) => {
            let depth = a.depth.unwrap_or(m.config().mean_recurrence);
            ensure!(depth >= 1, "--depth must be at least 1");
            let start: Start = a.prompt.init_state.into();
            let out = match a.no_kv_cache {
                true => {
                    ensure!(
                        start == Start::Zero,
                        "--no-kv-cache starts every token from a zero state: add --init-state zero"
                    );
                    let forward = Box::new(move |x: &Tensor, att: &muninn_model::Attend| {
                        let f = m.forward_with(
                            muninn_model::Input::Ids(x),
                            att,
                            muninn_model::Depth::eval(depth),
                            &muninn_model::InitState::Zero,
                        )?;
                        Ok(f.logits)
                    });
                    let mut lm = Recompute::new(forward, m.config().block_size, m.device());
                    tidar::generate(&mut lm, prompt, cfg.mask_id, &opts)?
                }
                false => {
                    let mut lm = decode::HuginnLm {
                        decoder: decode::Decoder::new(m),
                        depth,
                        start,
                    };
                    tidar::generate(&mut lm, prompt, cfg.mask_id, &opts)?
                }
            };
            (out, Some(depth))
        }
        Model::Trm(_) => unreachable!("refused by the caller"),
    };
    let secs = started.elapsed().as_secs_f64();
    let text = tok.decode(&out.tokens)?;
    let per_s = out.tokens.len() as f64 / secs;
    if a.json {
        println!(
            "{}",
            json!({
                "prompt": a.prompt.prompt,
                "prompt_tokens": prompt,
                "tokens": out.tokens,
                "text": text,
                "forwards": out.forwards,
                "tokens_per_forward": out.tokens_per_forward(),
                "accepted": out.accepted,
                "mean_accepted": out.mean_accepted(),
                "tokens_per_s": per_s,
                "draft": opts.draft,
                "beta": opts.beta,
                "depth": depth,
            })
        );
        return Ok(());
    }
    println!("{}{text}", a.prompt.prompt);
    println!(
        "-- {} tokens in {} forwards ({:.2} per forward; {:.2} drafts kept per decode step of k = {}, β = {}), {per_s:.1} tokens/s",
        out.tokens.len(),
        out.forwards,
        out.tokens_per_forward(),
        out.mean_accepted(),
        opts.draft,
        opts.beta
    );
    Ok(())
}

/// Greedy decoding without a cache: the reference the cached decoder must match.
fn generate_gpt_uncached(
    model: &muninn_model::Gpt,
    prompt: &[i64],
    max_tokens: usize,
    stop: Option<i64>,
) -> Result<Vec<i64>> {
    let mut seq = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < max_tokens && (seq.len() as i64) < model.config().block_size + 1 {
        let ids = Tensor::from_slice(&seq)
            .view([1, -1])
            .to_device(model.device());
        let logits = tch::no_grad(|| model.forward(&ids))?.logits;
        let next = logits.get(0).get(-1).argmax(-1, false).int64_value(&[]);
        out.push(next);
        seq.push(next);
        if Some(next) == stop || seq.len() as i64 > model.config().block_size {
            break;
        }
    }
    Ok(out)
}

pub fn latents(a: LatentsArgs) -> Result<()> {
    let model = match a.on.load(&a.checkpoint)? {
        Model::Huginn(m) => m,
        other @ (Model::Gpt(_) | Model::Trm(_)) => bail!(
            "{} is a {} model: latents are the recurrent state of a huginn model",
            a.checkpoint.display(),
            other.family().name()
        ),
    };
    let (tok, ids) = prompt_ids(
        &a.prompt,
        &a.checkpoint,
        &muninn_model::ModelConfig::Huginn(model.config().clone()),
    )?;
    ensure!(a.depth >= 1, "--depth must be at least 1");
    let t = ids.len();
    if let Some(bad) = a.pca_tokens.iter().find(|&&p| p >= t) {
        bail!(
            "--pca-tokens: position {bad} is outside the prompt's {t} tokens (0..{})",
            t - 1
        );
    }
    let chosen = match a.pca_tokens.is_empty() {
        false => a.pca_tokens.clone(),
        true => {
            let mut c: Vec<usize> = (1..=4).map(|i| i * (t - 1) / 4).collect();
            c.dedup();
            c
        }
    };
    ensure!(
        chosen.len() as i64 * a.depth >= 2,
        "the PCA plot needs at least two states: choose more --pca-tokens or a --depth of 2 or more"
    );
    let start = Start::from(a.prompt.init_state).state();
    let input = Tensor::from_slice(&ids)
        .view([1, -1])
        .to_device(model.device());
    // s_0..s_R, each [T, d].
    let states: Vec<Tensor> = model
        .trajectory(&input, a.depth, &start)?
        .into_iter()
        .map(|s| s.get(0).to_device(tch::Device::Cpu))
        .collect();
    // convergence[t][i] = ‖s_{i+1} − s_i‖ / ‖s_{i+1}‖ at token t.
    let convergence = latents::convergence(&states)?;
    let pieces: Vec<String> = ids
        .iter()
        .map(|&id| {
            let s = tok.tokenizer.id_to_token(id as u32).unwrap_or_default();
            s.replace('Ġ', " ").replace('Ċ', "\\n")
        })
        .collect();
    let label = |p: usize| {
        let s: String = pieces[p].chars().take(14).collect();
        format!("{p}: {s:?}")
    };

    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let heat = a.out.join("convergence.png");
    atomic::write_file_with(&heat, |path| {
        plot::heatmap(
            path,
            &Heatmap {
                title: format!("‖s_i − s_(i−1)‖ / ‖s_i‖ per token, depth {}", a.depth),
                x_label: "core iteration i".into(),
                y_label: "prompt token".into(),
                x_first: 1,
                row_labels: (0..t).map(label).collect(),
                values: convergence.clone(),
                value_label: "relative change".into(),
            },
            (260 + 22 * a.depth.min(64) as u32).max(700),
            // Rows get thinner beyond ~100 tokens rather than the picture taller.
            (120 + 22 * t as u32).clamp(360, 2400),
        )
    })?;

    // PCA over every chosen token's states s_1..s_R together, so trajectories share axes. s_0 is
    // left out: its random like-init noise would take the first components.
    let stacked = Tensor::cat(
        &chosen
            .iter()
            .map(|&p| {
                Tensor::stack(
                    &states[1..]
                        .iter()
                        .map(|s| s.get(p as i64))
                        .collect::<Vec<_>>(),
                    0,
                )
            })
            .collect::<Vec<_>>(),
        0,
    ); // [k·R, d]
    let (coords, ratio) = latents::pca(&stacked.to_kind(Kind::Double), 2)?;
    ensure!(
        coords.size()[1] == 2,
        "the PCA plot needs at least two states: choose more --pca-tokens or a --depth of 2 or more"
    );
    let n = a.depth;
    let mut series = Vec::new();
    let mut trajectories = Vec::new();
    for (j, &p) in chosen.iter().enumerate() {
        let c = coords.narrow(0, j as i64 * n, n);
        let pts: Vec<(f64, f64)> = (0..n)
            .map(|i| (c.double_value(&[i, 0]), c.double_value(&[i, 1])))
            .collect();
        trajectories.push(json!({"position": p, "token": pieces[p], "points": pts}));
        series.push(Series {
            label: label(p),
            points: pts,
        });
    }
    let pca_png = a.out.join("pca.png");
    atomic::write_file_with(&pca_png, |path| {
        plot::line_panels(
            path,
            &[Panel {
                title: format!("latent trajectories s_1 … s_{} (PCA)", a.depth),
                x_label: format!("PC1 ({:.0}% of variance)", 100.0 * ratio[0]),
                y_label: format!("PC2 ({:.0}% of variance)", 100.0 * ratio[1]),
                log2_x: false,
                series,
            }],
            760,
            620,
        )
    })?;
    let report = json!({
        "checkpoint": a.checkpoint,
        "prompt": a.prompt.prompt,
        "tokens": ids,
        "pieces": pieces,
        "depth": a.depth,
        "convergence": convergence,
        "pca": {"explained_variance_ratio": ratio, "trajectories": trajectories},
    });
    let json_path = a.out.join("latents.json");
    atomic::write_file(
        &json_path,
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    let final_change: Vec<f64> = convergence.iter().map(|r| r[r.len() - 1]).collect();
    let mean_final = final_change.iter().sum::<f64>() / t as f64;
    println!(
        "{} tokens, depth {}: mean relative change at the last iteration {mean_final:.2e}",
        t, a.depth
    );
    println!(
        "wrote {}, {} and {}",
        heat.display(),
        pca_png.display(),
        json_path.display()
    );
    Ok(())
}
