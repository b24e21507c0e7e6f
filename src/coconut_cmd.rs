//! `muninn eval CKPT --qa FILE`: a checkpoint of any COCONUT arm answers `{question, steps, answer}`
//! questions greedily, its thoughts filled behind the KV cache, a batch at a time.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use muninn_data::coconut::{pieces, prompt, CoconutConfig, Special};
use muninn_data::qa::{answer_of, read_json};
use muninn_data::TokenizerInfo;
use muninn_model::coconut::{self, LatentLm};
use muninn_model::tidar::LmObjective;
use muninn_model::{Depth, InitState, Model};
use muninn_trainer::config::RawRunConfig;
use serde_json::json;
use tch::Tensor;

pub struct QaOptions {
    pub file: PathBuf,
    pub stage: Option<usize>,
    pub max_new_tokens: usize,
    pub max_rows: Option<u64>,
    pub batch_size: usize,
    pub out: PathBuf,
}

/// The mean norm of the thoughts and of the prompts' token embeddings (None without any).
type Norms = (Option<f64>, Option<f64>);

/// One answered question.
struct Answer {
    correct: bool,
    generated: usize,
    text: String,
}

pub fn eval_qa(
    checkpoint: &Path,
    model: Model,
    run: Option<RawRunConfig>,
    tokenizer: &Path,
    o: &QaOptions,
) -> Result<()> {
    let Some(rc) = run else {
        bail!(
            "{} is not inside a run directory: --qa reads the arm and curriculum from the run's config.toml",
            checkpoint.display()
        );
    };
    let LmObjective::Coconut(c) = &rc.objective else {
        bail!(
            "{} was not trained with [objective] kind = \"coconut\": --qa evaluates COCONUT's arms",
            checkpoint.display()
        );
    };
    let tok = TokenizerInfo::load(tokenizer)?;
    let special =
        Special::of(&tok).with_context(|| format!("tokenizer {}", tokenizer.display()))?;
    let mut examples = read_json(&o.file)?;
    if let Some(n) = o.max_rows {
        examples.truncate(n as usize);
    }
    ensure!(
        !examples.is_empty(),
        "{} holds no questions",
        o.file.display()
    );
    ensure!(o.batch_size >= 1, "--batch-size must be at least 1");
    let stage = c.answer_stage(o.stage);
    let prompts: Vec<Vec<i64>> = examples
        .iter()
        .map(|e| {
            let p = pieces(e, &tok)?;
            Ok(prompt(
                &p,
                c.prompt_latents(stage, p.steps.len()),
                &special,
                c.arm.markers(),
            ))
        })
        .collect::<Result<_>>()?;
    let eos = i64::from(tok.specials.eos);
    // Pause-as-thought's latents are ordinary tokens: nothing is filled in.
    let fill = match c.arm.continuous() {
        true => special.latent,
        false => coconut::NO_LATENT,
    };
    let context = model.config().block_size() as usize;
    let start = std::time::Instant::now();
    let (answers, norms) = match &model {
        Model::Gpt(m) => {
            let lm = m.latent()?;
            answer_all(
                &lm,
                &|h| lm.logits(h),
                &prompts,
                &examples,
                (&special, fill),
                &tok,
                (eos, context),
                o,
                m.device(),
            )?
        }
        Model::Huginn(m) => {
            let r = c.pass_iterations(rc.recurrence.mean_recurrence);
            let lm = m.latent(Depth::eval(r), InitState::Zero);
            answer_all(
                &lm,
                &|h| lm.logits(h),
                &prompts,
                &examples,
                (&special, fill),
                &tok,
                (eos, context),
                o,
                m.device(),
            )?
        }
        Model::Trm(_) => bail!(
            "{} is a trm model; --qa is for language models",
            checkpoint.display()
        ),
    };
    let secs = start.elapsed().as_secs_f64();
    let correct = answers.iter().filter(|a| a.correct).count();
    let n = answers.len();
    let accuracy = correct as f64 / n as f64;
    let generated = answers.iter().map(|a| a.generated).sum::<usize>() as f64 / n as f64;
    let thoughts = prompts
        .iter()
        .map(|p| p.iter().filter(|&&t| t == special.latent).count())
        .sum::<usize>() as f64
        / n as f64;
    println!(
        "eval {} on {} ({n} questions, arm {:?}, stage {stage}, {thoughts:.1} thoughts each)",
        checkpoint.display(),
        o.file.display(),
        c.arm
    );
    println!(
        "{:>9}  {:>8}  {:>16}  {:>12}  {:>10}",
        "accuracy", "correct", "generated tokens", "thought norm", "embed norm"
    );
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    println!(
        "{accuracy:>9.4}  {correct:>8}  {generated:>16.1}  {:>12}  {:>10}",
        fmt(norms.0),
        fmt(norms.1)
    );
    let report = json!({
        "checkpoint": checkpoint,
        "qa": o.file,
        "arm": c.arm,
        "stage": stage,
        "questions": n,
        "correct": correct,
        "accuracy": accuracy,
        "mean_generated_tokens": generated,
        "thoughts_per_question": thoughts,
        "thought_norm": norms.0,
        "embed_norm": norms.1,
        "seconds": secs,
        "samples": answers.iter().zip(&examples).take(8).map(|(a, e)| json!({
            "answer": e.answer, "generated": a.text, "correct": a.correct,
        })).collect::<Vec<_>>(),
    });
    let path = o.out.join("eval.json");
    muninn_data::atomic::write_file(&path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Answers every prompt, a batch of equal thought counts at a time, and measures the mean norm of
/// the thoughts and of the prompts' token embeddings.
#[allow(clippy::too_many_arguments)]
fn answer_all<M: LatentLm>(
    lm: &M,
    head: &dyn Fn(&Tensor) -> Tensor,
    prompts: &[Vec<i64>],
    examples: &[muninn_data::qa::QaExample],
    (sp, fill): (&Special, i64),
    tok: &TokenizerInfo,
    (eos, context): (i64, usize),
    o: &QaOptions,
    device: tch::Device,
) -> Result<(Vec<Answer>, Norms)> {
    let latents = |p: &Vec<i64>| p.iter().filter(|&&t| t == sp.latent).count();
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| latents(&prompts[i]));
    let mut answers: Vec<Option<Answer>> = (0..prompts.len()).map(|_| None).collect();
    let (mut tsum, mut tn, mut esum, mut en) = (0.0, 0usize, 0.0, 0usize);
    for group in order.chunk_by(|&a, &b| latents(&prompts[a]) == latents(&prompts[b])) {
        for chunk in group.chunks(o.batch_size) {
            let batch: Vec<Vec<i64>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
            let new = coconut::generate(
                lm,
                head,
                &batch,
                (fill, sp.pad),
                (o.max_new_tokens, context),
                eos,
                device,
            )?;
            for (&i, tokens) in chunk.iter().zip(&new) {
                let text = tok.decode(tokens)?;
                let gold = examples[i].answer.replace(',', "");
                answers[i] = Some(Answer {
                    correct: answer_of(&text) == gold.trim(),
                    generated: tokens.len(),
                    text,
                });
            }
            // Norms on the first row of the chunk (thoughts are the same computation batched).
            let p = &batch[0];
            let t = p.len() as i64;
            let ids = Tensor::from_slice(p).view([1, t]).to_device(device);
            let pos = Tensor::arange(t, (tch::Kind::Int64, device)).view([1, t]);
            let real = Tensor::ones([1, t], (tch::Kind::Bool, device));
            let out = tch::no_grad(|| coconut::forward(lm, &ids, &pos, &real, fill))?;
            for th in &out.thoughts {
                tsum += th.norm().double_value(&[]);
                tn += 1;
            }
            let e = tch::no_grad(|| lm.embed(&ids))?;
            let mask = ids.ne(sp.latent).to_kind(tch::Kind::Double);
            esum += (e
                .norm_scalaropt_dim(2.0, [-1], false)
                .to_kind(tch::Kind::Double)
                * &mask)
                .sum(tch::Kind::Double)
                .double_value(&[]);
            en += i64::try_from(mask.sum(tch::Kind::Int64))? as usize;
        }
    }
    let norms = (
        (tn > 0).then(|| tsum / tn as f64),
        (en > 0).then(|| esum / en as f64),
    );
    Ok((
        answers
            .into_iter()
            .map(|a| a.expect("every prompt answered"))
            .collect(),
        norms,
    ))
}

pub struct GenerateOptions {
    pub thoughts: Option<usize>,
    pub max_tokens: usize,
    pub json: bool,
}

/// `muninn generate` on a COCONUT checkpoint: `<|begin_text|>` text "\n" [`<|start-latent|>`
/// thoughts `<|end-latent|>`], the thoughts filled, then greedy decoding behind the KV cache.
pub fn generate(
    model: &Model,
    rc: &RawRunConfig,
    c: &CoconutConfig,
    tok: &TokenizerInfo,
    text: &str,
    o: &GenerateOptions,
) -> Result<()> {
    let special = Special::of(tok)?;
    let question = tok.encode_prompt(&format!("{text}\n"))?;
    let p = muninn_data::coconut::Pieces {
        question,
        steps: Vec::new(),
        answer: Vec::new(),
    };
    // A question of unknown length: the final stage's full count.
    let n = o
        .thoughts
        .unwrap_or_else(|| c.prompt_latents(c.final_stage(), usize::MAX));
    let markers = c.arm.markers();
    ensure!(
        n == 0 || markers,
        "--thoughts {n}: arm {:?} has no thought markers",
        c.arm
    );
    let ids = prompt(&p, n, &special, markers);
    let fill = match c.arm.continuous() {
        true => special.latent,
        false => coconut::NO_LATENT,
    };
    let eos = i64::from(tok.specials.eos);
    let context = model.config().block_size() as usize;
    let started = std::time::Instant::now();
    let tokens = match model {
        Model::Gpt(m) => {
            let lm = m.latent()?;
            coconut::generate(
                &lm,
                &|h| lm.logits(h),
                &[ids],
                (fill, special.pad),
                (o.max_tokens, context),
                eos,
                m.device(),
            )?
        }
        Model::Huginn(m) => {
            let r = c.pass_iterations(rc.recurrence.mean_recurrence);
            let lm = m.latent(Depth::eval(r), InitState::Zero);
            coconut::generate(
                &lm,
                &|h| lm.logits(h),
                &[ids],
                (fill, special.pad),
                (o.max_tokens, context),
                eos,
                m.device(),
            )?
        }
        Model::Trm(_) => bail!("a trm model does not generate text"),
    }
    .remove(0);
    let secs = started.elapsed().as_secs_f64();
    let out = tok.decode(&tokens)?;
    if o.json {
        println!(
            "{}",
            json!({"prompt": text, "thoughts": n, "tokens": tokens, "text": out,
                   "answer": answer_of(&out), "tokens_per_s": tokens.len() as f64 / secs})
        );
    } else {
        println!("{text}\n{out}");
        println!(
            "-- {n} thoughts, {} tokens, answer {:?}",
            tokens.len(),
            answer_of(&out)
        );
    }
    Ok(())
}
