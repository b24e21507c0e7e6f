//! COCONUT's curriculum and sequence layout (`coconut-reference.md` §1–2; the reference's
//! `dataset.py` and `run.py`): which stage an epoch trains, how many reasoning steps a stage
//! replaces by how many thoughts, the token and label layout of a row, and the batch alignment that
//! puts every row's first thought in one column.

use anyhow::{ensure, Result};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::loader::{Batch, Cursor, LoaderState, Padded, Source, IGNORE_TARGET};
use crate::perm::Permutation;
use crate::qa::QaExample;
use crate::tokenizer::TokenizerInfo;

/// The markers and the thought placeholder, in this order (the reference's `run.py`).
pub const START_LATENT: &str = "<|start-latent|>";
pub const END_LATENT: &str = "<|end-latent|>";
pub const LATENT: &str = "<|latent|>";

/// The ablation arms of the paper's Table 1 as one switch (`[coconut] arm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arm {
    /// Continuous thoughts on the stage curriculum.
    Coconut,
    /// Full chain of thought, no markers (stage 0 throughout).
    Cot,
    /// The answer right after the question, no markers.
    NoCot,
    /// The curriculum with `<|latent|>` as an ordinary learned token (the reference with every
    /// flag off).
    PauseAsThought,
    /// "w/o thought": the curriculum drops steps but inserts nothing, no markers.
    NoThought,
    /// "w/o curriculum": continuous thoughts, in the final stage from the first step.
    NoCurriculum,
}

impl Arm {
    /// Whether `<|start-latent|>` and `<|end-latent|>` frame the thoughts.
    pub fn markers(self) -> bool {
        matches!(self, Arm::Coconut | Arm::PauseAsThought | Arm::NoCurriculum)
    }

    /// Whether a latent column takes the previous column's hidden state (else its token embedding).
    pub fn continuous(self) -> bool {
        matches!(self, Arm::Coconut | Arm::NoCurriculum)
    }
}

/// When a fresh optimizer replaces the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResetOn {
    /// At every epoch (the reference's `reset_optimizer: True`).
    Epoch,
    /// When the stage changes (the paper's description).
    Stage,
    Never,
}

/// `[objective] kind = "coconut"`: the arm, the curriculum, and how thoughts are computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoconutConfig {
    #[serde(default = "coconut")]
    pub arm: Arm,
    /// Thoughts per replaced step (c).
    pub c_thought: usize,
    /// Stages that replace steps one by one; later stages replace all of them.
    pub max_latent_stage: usize,
    pub epochs_per_stage: usize,
    /// In the final stage, `max_latent_stage`·c thoughts even for shorter chains.
    #[serde(default = "yes")]
    pub pad_latent_to_max: bool,
    /// Chance that an example trains a stage drawn uniformly from 0..=its steps.
    #[serde(default)]
    pub uniform_prob: f64,
    #[serde(default = "epoch")]
    pub reset_optimizer: ResetOn,
    /// Huginn: core iterations of every pass [default: recurrence.mean_recurrence], the last
    /// recurrence.mean_backprop_depth of them with a graph.
    #[serde(default)]
    pub recurrence: Option<i64>,
    /// The token whose embedding (and head) rows the three new tokens copy when `--init-from` adds
    /// them to a model without them (the reference: `<<`).
    #[serde(default = "init_token")]
    pub init_token: String,
}

fn yes() -> bool {
    true
}

fn coconut() -> Arm {
    Arm::Coconut
}

fn init_token() -> String {
    "<<".to_string()
}

fn epoch() -> ResetOn {
    ResetOn::Epoch
}

/// How a stage lays out one example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Leading steps left out.
    pub skip: usize,
    /// Latent columns in their place.
    pub latents: usize,
}

impl CoconutConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.epochs_per_stage >= 1,
            "coconut.epochs_per_stage = 0: must be at least 1"
        );
        ensure!(
            (0.0..=1.0).contains(&self.uniform_prob),
            "coconut.uniform_prob = {}: must be in [0, 1]",
            self.uniform_prob
        );
        ensure!(
            self.arm == Arm::NoThought || self.arm == Arm::Cot || self.arm == Arm::NoCot || self.c_thought >= 1,
            "coconut.c_thought = 0 with arm {:?}: thoughts need c >= 1 (arm \"no-thought\" is the c = 0 ablation)",
            self.arm
        );
        Ok(())
    }

    /// Huginn: the core iterations of every pass, `recurrence` or else the run's r̄.
    pub fn pass_iterations(&self, mean_recurrence: i64) -> i64 {
        self.recurrence.unwrap_or(mean_recurrence)
    }

    /// The stage past the last step-by-step one: every step replaced.
    pub fn final_stage(&self) -> usize {
        self.max_latent_stage + 1
    }

    /// The stage a trained model answers in (validation, `muninn eval --qa`): `asked`, else the
    /// final stage, for the arms with a curriculum; stage 0 for CoT and No-CoT, which never leave
    /// it (CoT's final-stage layout would drop the steps it writes).
    pub fn answer_stage(&self, asked: Option<usize>) -> usize {
        match self.arm {
            Arm::Cot | Arm::NoCot => 0,
            _ => asked.unwrap_or(self.final_stage()),
        }
    }

    /// The stage an epoch trains: epoch / epochs_per_stage up to the final stage, 0 for the CoT
    /// and No-CoT arms, the final stage throughout without curriculum. (The reference's count goes
    /// on past the final stage with the same layout; capped, a `stage` reset happens only when
    /// the layout changes and the logged stage is the one trained.)
    pub fn stage(&self, epoch: u64) -> usize {
        match self.arm {
            Arm::Cot | Arm::NoCot => 0,
            Arm::NoCurriculum => self.final_stage(),
            _ => (epoch / self.epochs_per_stage as u64).min(self.final_stage() as u64) as usize,
        }
    }

    /// Whether the optimizer starts afresh at the start of `epoch` (never at epoch 0: there is
    /// nothing to reset).
    pub fn resets_at(&self, epoch: u64) -> bool {
        epoch > 0
            && match self.reset_optimizer {
                ResetOn::Epoch => true,
                ResetOn::Stage => self.stage(epoch) != self.stage(epoch - 1),
                ResetOn::Never => false,
            }
    }

    fn thoughts(&self) -> usize {
        match self.arm {
            Arm::NoThought | Arm::Cot | Arm::NoCot => 0,
            _ => self.c_thought,
        }
    }

    /// Stage `stage` on an example of `steps` steps (`dataset.py:get_cot_latent_dataset`): up to
    /// the last step-by-step stage k, k steps out and k·c thoughts in (even past the chain's end);
    /// beyond it, every step out and max·c thoughts, or min(steps, max)·c without
    /// `pad_latent_to_max`. No-CoT drops every step and thinks nothing.
    pub fn layout(&self, stage: usize, steps: usize) -> Layout {
        let (skip, k) = match stage > self.max_latent_stage {
            true => (
                steps,
                match self.pad_latent_to_max {
                    true => self.max_latent_stage,
                    false => steps.min(self.max_latent_stage),
                },
            ),
            false => (stage.min(steps), stage),
        };
        match self.arm {
            Arm::NoCot => Layout {
                skip: steps,
                latents: 0,
            },
            _ => Layout {
                skip,
                latents: k * self.thoughts(),
            },
        }
    }

    /// The stage one example trains: the epoch's, or with `uniform_prob` one drawn from
    /// 0..=steps, a pure function of (seed, epoch, example).
    pub fn example_stage(&self, epoch: u64, seed: u64, example: u64, steps: usize) -> usize {
        let stage = self.stage(epoch);
        if self.uniform_prob == 0.0 {
            return stage;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(
            seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ example.wrapping_mul(0xc2b2_ae3d_27d4_eb4f),
        );
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        match u < self.uniform_prob {
            true => (rng.next_u64() % (steps as u64 + 1)) as usize,
            false => stage,
        }
    }

    /// Thoughts in an evaluation prompt at `stage` (`dataset.py:get_question_latent_dataset`):
    /// min(stage, max)·c, with max the chain's length without `pad_latent_to_max`.
    pub fn prompt_latents(&self, stage: usize, steps: usize) -> usize {
        let max = match self.pad_latent_to_max {
            true => self.max_latent_stage,
            false => self.max_latent_stage.min(steps),
        };
        match self.arm {
            Arm::NoCot => 0,
            _ => stage.min(max) * self.thoughts(),
        }
    }
}

/// The special token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Special {
    pub start: i64,
    pub latent: i64,
    pub end: i64,
    pub pad: i64,
}

/// An example's pieces as token ids: question + "\n", each step + "\n", "### " + answer + EOS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pieces {
    pub question: Vec<i64>,
    pub steps: Vec<Vec<i64>>,
    pub answer: Vec<i64>,
}

/// One row: its ids and, aligned with them (not shifted), what each position must hold, or
/// [`IGNORE_TARGET`] on the question, the markers and the thoughts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub ids: Vec<i64>,
    pub labels: Vec<i64>,
}

/// question [<start>] <latent>×n [<end>] steps[skip..] answer.
pub fn row(p: &Pieces, layout: Layout, sp: &Special, markers: bool) -> Row {
    let mut ids = prompt(p, layout.latents, sp, markers);
    let hidden = ids.len();
    for s in p.steps.iter().skip(layout.skip) {
        ids.extend(s);
    }
    ids.extend(&p.answer);
    let labels = (0..ids.len())
        .map(|i| if i < hidden { IGNORE_TARGET } else { ids[i] })
        .collect();
    Row { ids, labels }
}

/// What generation starts from: question [<start>] <latent>×n [<end>].
pub fn prompt(p: &Pieces, latents: usize, sp: &Special, markers: bool) -> Vec<i64> {
    let mut ids = p.question.clone();
    if markers {
        ids.push(sp.start);
    }
    ids.extend(std::iter::repeat_n(sp.latent, latents));
    if markers {
        ids.push(sp.end);
    }
    ids
}

/// Rows aligned for the multi-pass forward (`dataset.py:MyCollator`), row-major [rows, width].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aligned {
    pub ids: Vec<i64>,
    pub labels: Vec<i64>,
    /// Position ids: 0 on left pads, then 0, 1, … from each row's first real token; 0 on right pads.
    pub positions: Vec<i64>,
    /// True on real tokens.
    pub real: Vec<bool>,
    pub rows: usize,
    pub width: usize,
}

/// Left-pads each row holding a latent so that every first latent lands in one column, then
/// right-pads all to the longest (pads: `sp.pad`, label ignored, position 0, not real).
pub fn align(rows: &[Row], sp: &Special) -> Aligned {
    let first = |r: &Row| r.ids.iter().position(|&t| t == sp.latent);
    let col = rows.iter().filter_map(first).max();
    let lead: Vec<usize> = rows
        .iter()
        .map(|r| match (col, first(r)) {
            (Some(c), Some(f)) => c - f,
            _ => 0,
        })
        .collect();
    let width = rows
        .iter()
        .zip(&lead)
        .map(|(r, l)| l + r.ids.len())
        .max()
        .unwrap_or(0);
    let mut a = Aligned {
        ids: Vec::with_capacity(rows.len() * width),
        labels: Vec::with_capacity(rows.len() * width),
        positions: Vec::with_capacity(rows.len() * width),
        real: Vec::with_capacity(rows.len() * width),
        rows: rows.len(),
        width,
    };
    for (r, &l) in rows.iter().zip(&lead) {
        let tail = width - l - r.ids.len();
        let pad = |a: &mut Aligned, n: usize| {
            a.ids.extend(std::iter::repeat_n(sp.pad, n));
            a.labels.extend(std::iter::repeat_n(IGNORE_TARGET, n));
            a.positions.extend(std::iter::repeat_n(0, n));
            a.real.extend(std::iter::repeat_n(false, n));
        };
        pad(&mut a, l);
        a.ids.extend(&r.ids);
        a.labels.extend(&r.labels);
        a.positions.extend(0..r.ids.len() as i64);
        a.real.extend(std::iter::repeat_n(true, r.ids.len()));
        pad(&mut a, tail);
    }
    a
}

impl Special {
    /// The ids of a tokenizer that has COCONUT's three tokens (see [`add_tokens`]).
    pub fn of(tok: &TokenizerInfo) -> Result<Special> {
        let id = |name: &str| {
            tok.tokenizer.token_to_id(name).map(i64::from).ok_or_else(|| {
                anyhow::anyhow!("the tokenizer has no `{name}`; COCONUT adds {START_LATENT}, {END_LATENT} and {LATENT} (`muninn data prosqa` and --init-from do)")
            })
        };
        Ok(Special {
            start: id(START_LATENT)?,
            latent: id(LATENT)?,
            end: id(END_LATENT)?,
            pad: i64::from(tok.specials.pad),
        })
    }
}

/// Adds COCONUT's three special tokens to a tokenizer that lacks them (new ids at the top, in the
/// reference's order); returns how many it added.
pub fn add_tokens(tok: TokenizerInfo) -> Result<(TokenizerInfo, usize)> {
    let mut t = tok.tokenizer;
    let missing: Vec<tokenizers::AddedToken> = [START_LATENT, END_LATENT, LATENT]
        .iter()
        .filter(|s| t.token_to_id(s).is_none())
        .map(|s| tokenizers::AddedToken::from(s.to_string(), true))
        .collect();
    let n = missing.len();
    t.add_special_tokens(&missing);
    Ok((TokenizerInfo::new(t, "(with COCONUT's tokens)")?, n))
}

/// An example as token pieces: `<|begin_text|>` question "\n", each step "\n", "### " answer
/// `<|end_text|>` (the reference's `get_dataset`, with Muninn's begin-of-text token).
pub fn pieces(e: &QaExample, tok: &TokenizerInfo) -> Result<Pieces> {
    let enc =
        |s: &str| -> Result<Vec<i64>> { Ok(tok.encode(s)?.into_iter().map(i64::from).collect()) };
    let mut answer = enc(&format!("### {}", e.answer))?;
    answer.push(i64::from(tok.specials.eos));
    Ok(Pieces {
        question: tok.encode_prompt(&format!("{}\n", e.question))?,
        steps: e
            .steps
            .iter()
            .map(|s| enc(&format!("{s}\n")))
            .collect::<Result<_>>()?,
        answer,
    })
}

/// Aligned rows as the trainer's batch: inputs are the ids, targets the labels shifted by one (the
/// last column predicts nothing), with their positions and padding.
pub fn batch(a: Aligned, row_ids: Vec<u64>) -> Batch {
    let w = a.width;
    let targets = (0..a.rows * w)
        .map(|i| match i % w + 1 < w {
            true => a.labels[i + 1],
            false => IGNORE_TARGET,
        })
        .collect();
    Batch {
        inputs: a.ids,
        targets,
        rows: a.rows,
        block: w,
        row_ids,
        puzzle_ids: Vec::new(),
        padded: Some(Padded {
            positions: a.positions,
            real: a.real,
        }),
    }
}

/// COCONUT's training rows. Epochs are whole global batches (the last partial one of an epoch is
/// dropped, so a step never mixes two stages); epoch e visits the examples in the order
/// perm(seed, e); every example takes the layout of its stage. A pure function of (seed, global
/// sample), like every loader.
pub struct QaLoader<'a> {
    examples: &'a [Pieces],
    curriculum: CoconutConfig,
    special: Special,
    seed: u64,
    per_epoch: u64,
    cursor: Cursor,
}

impl<'a> QaLoader<'a> {
    /// `global_batch` = ranks × micro-batch × accumulation; `digest` names the data for resumes.
    pub fn new(
        examples: &'a [Pieces],
        curriculum: CoconutConfig,
        special: Special,
        seed: u64,
        global_batch: usize,
        digest: String,
    ) -> Result<Self> {
        let n = examples.len() as u64;
        let gb = global_batch as u64;
        ensure!(
            gb >= 1 && n >= gb,
            "{n} training examples cannot fill one global batch of {gb} (ranks × micro_batch_size × grad_accum)"
        );
        Ok(QaLoader {
            examples,
            curriculum,
            special,
            seed,
            per_epoch: n / gb * gb,
            cursor: Cursor::new(digest, seed),
        })
    }

    /// Samples per epoch: whole global batches.
    pub fn per_epoch(&self) -> u64 {
        self.per_epoch
    }

    /// The epoch the next batch belongs to.
    pub fn epoch(&self) -> u64 {
        self.cursor.consumed / self.per_epoch
    }

    /// The row of global sample g.
    fn row(&self, g: u64) -> (u64, Row) {
        let (epoch, i) = (g / self.per_epoch, g % self.per_epoch);
        let n = self.examples.len() as u64;
        let ex = Permutation::new(n, self.seed, epoch).apply(i);
        let p = &self.examples[ex as usize];
        let stage = self
            .curriculum
            .example_stage(epoch, self.seed, ex, p.steps.len());
        let layout = self.curriculum.layout(stage, p.steps.len());
        (
            ex,
            row(p, layout, &self.special, self.curriculum.arm.markers()),
        )
    }
}

impl Source for QaLoader<'_> {
    fn next_batch(&mut self, rank: usize, world: usize, micro_batch: usize) -> Batch {
        let (ids, rows): (Vec<u64>, Vec<Row>) = self
            .cursor
            .take(rank, world, micro_batch)
            .map(|g| self.row(g))
            .unzip();
        batch(align(&rows, &self.special), ids)
    }

    fn state(&self) -> LoaderState {
        self.cursor.state()
    }

    fn load_state(&mut self, s: &LoaderState) -> Result<()> {
        self.cursor.load_state(s)
    }

    fn epoch(&self) -> u64 {
        QaLoader::epoch(self)
    }

    fn epoch_starts(&self) -> Option<u64> {
        (self.cursor.consumed % self.per_epoch == 0).then(|| QaLoader::epoch(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SP: Special = Special {
        start: 90,
        latent: 91,
        end: 92,
        pad: 0,
    };

    fn curriculum(arm: Arm) -> CoconutConfig {
        CoconutConfig {
            arm,
            c_thought: 2,
            max_latent_stage: 3,
            epochs_per_stage: 3,
            pad_latent_to_max: true,
            uniform_prob: 0.0,
            reset_optimizer: ResetOn::Epoch,
            recurrence: None,
            init_token: init_token(),
        }
    }

    fn pieces(steps: usize) -> Pieces {
        Pieces {
            question: vec![1, 2],
            steps: (0..steps).map(|s| vec![10 + s as i64, 9]).collect(),
            answer: vec![7, 8],
        }
    }

    #[test]
    fn stages_follow_the_epoch() {
        let c = curriculum(Arm::Coconut);
        let stages: Vec<usize> = (0..13).map(|e| c.stage(e)).collect();
        assert_eq!(stages, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4]);
        assert_eq!(
            (c.stage(15), c.stage(1000)),
            (4, 4),
            "the final stage is the last"
        );
        assert_eq!(curriculum(Arm::Cot).stage(12), 0);
        assert_eq!(curriculum(Arm::NoCot).stage(12), 0);
        assert_eq!(curriculum(Arm::NoCurriculum).stage(0), 4);
        assert_eq!(curriculum(Arm::PauseAsThought).stage(7), 2);
    }

    #[test]
    fn each_arm_answers_in_the_layout_it_trained_last() {
        let steps = 4;
        let answer = |arm| {
            let c = curriculum(arm);
            let Layout { skip, latents } = c.layout(c.answer_stage(None), steps);
            (skip, latents)
        };
        assert_eq!(answer(Arm::Cot), (0, 0), "CoT writes every step");
        assert_eq!(answer(Arm::NoCot), (steps, 0));
        assert_eq!(answer(Arm::Coconut), (steps, 6));
        assert_eq!(answer(Arm::PauseAsThought), (steps, 6));
        assert_eq!(answer(Arm::NoThought), (steps, 0));
        assert_eq!(curriculum(Arm::Coconut).answer_stage(Some(1)), 1);
        assert_eq!(curriculum(Arm::Cot).answer_stage(Some(1)), 0);
    }

    #[test]
    fn latent_counts_per_stage() {
        let c = curriculum(Arm::Coconut);
        let l = |stage, steps| {
            let Layout { skip, latents } = c.layout(stage, steps);
            (skip, latents)
        };
        assert_eq!(l(0, 4), (0, 0));
        assert_eq!(l(2, 4), (2, 4));
        // A stage past a short chain still thinks k·c.
        assert_eq!(l(3, 2), (2, 6));
        // The final stage: every step out, max·c thoughts ...
        assert_eq!(l(4, 5), (5, 6));
        assert_eq!(l(4, 1), (1, 6));
        // ... or min(steps, max)·c without padding.
        let short = CoconutConfig {
            pad_latent_to_max: false,
            ..c.clone()
        };
        assert_eq!(
            short.layout(4, 1),
            Layout {
                skip: 1,
                latents: 2
            }
        );
        assert_eq!(
            short.layout(4, 5),
            Layout {
                skip: 5,
                latents: 6
            }
        );
        assert_eq!(
            curriculum(Arm::NoThought).layout(2, 4),
            Layout {
                skip: 2,
                latents: 0
            }
        );
        assert_eq!(
            curriculum(Arm::NoCot).layout(0, 4),
            Layout {
                skip: 4,
                latents: 0
            }
        );
        assert_eq!(
            curriculum(Arm::Cot).layout(0, 4),
            Layout {
                skip: 0,
                latents: 0
            }
        );
        // Evaluation prompts.
        assert_eq!(c.prompt_latents(9, 1), 6);
        assert_eq!(short.prompt_latents(9, 1), 2);
        assert_eq!(c.prompt_latents(1, 4), 2);
    }

    #[test]
    fn optimizer_resets_at_the_configured_event() {
        let at = |reset, arm| {
            let c = CoconutConfig {
                reset_optimizer: reset,
                ..curriculum(arm)
            };
            (0..20).filter(|&e| c.resets_at(e)).collect::<Vec<u64>>()
        };
        assert_eq!(
            at(ResetOn::Epoch, Arm::Coconut),
            (1..20).collect::<Vec<u64>>()
        );
        // Stages 1, 2, 3 and the final 4; none after, where the layout stays.
        assert_eq!(at(ResetOn::Stage, Arm::Coconut), [3, 6, 9, 12]);
        assert_eq!(at(ResetOn::Stage, Arm::Cot), Vec::<u64>::new());
        assert_eq!(at(ResetOn::Never, Arm::Coconut), Vec::<u64>::new());
    }

    #[test]
    fn labels_are_ignored_exactly_on_question_markers_and_thoughts() {
        let c = curriculum(Arm::Coconut);
        let r = row(&pieces(3), c.layout(1, 3), &SP, true);
        assert_eq!(r.ids, [1, 2, 90, 91, 91, 92, 11, 9, 12, 9, 7, 8]);
        let i = IGNORE_TARGET;
        assert_eq!(r.labels, [i, i, i, i, i, i, 11, 9, 12, 9, 7, 8]);
        let cot = row(&pieces(2), curriculum(Arm::Cot).layout(0, 2), &SP, false);
        assert_eq!(cot.ids, [1, 2, 10, 9, 11, 9, 7, 8]);
        assert_eq!(cot.labels, [i, i, 10, 9, 11, 9, 7, 8]);
        let nocot = row(&pieces(2), curriculum(Arm::NoCot).layout(0, 2), &SP, false);
        assert_eq!(nocot.ids, [1, 2, 7, 8]);
        assert_eq!(prompt(&pieces(2), 2, &SP, true), [1, 2, 90, 91, 91, 92]);
    }

    #[test]
    fn alignment_puts_first_thoughts_in_one_column() {
        let c = curriculum(Arm::Coconut);
        let long = Pieces {
            question: vec![1, 2, 3, 4],
            ..pieces(1)
        };
        let rows = [
            row(&pieces(3), c.layout(1, 3), &SP, true), // latent at 3
            row(&long, c.layout(1, 1), &SP, true),      // latent at 5
        ];
        let a = align(&rows, &SP);
        assert_eq!(a.width, 14);
        let r0 = &a.ids[..a.width];
        let r1 = &a.ids[a.width..];
        assert_eq!(r0[5], 91);
        assert_eq!(r1[5], 91);
        assert_eq!(
            &a.positions[..a.width],
            &[0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
        );
        assert_eq!(&a.real[..3], &[false, false, true]);
        assert_eq!(&r1[8..], &[7, 8, 0, 0, 0, 0]);
        assert_eq!(&a.labels[a.width + 12..], &[IGNORE_TARGET, IGNORE_TARGET]);
        // Without latents nothing moves left.
        let plain = align(&[row(&pieces(1), c.layout(0, 1), &SP, false)], &SP);
        assert_eq!(plain.positions, (0..plain.width as i64).collect::<Vec<_>>());
    }

    #[test]
    fn uniform_mixing_is_seeded() {
        let c = CoconutConfig {
            uniform_prob: 0.5,
            ..curriculum(Arm::Coconut)
        };
        let draws: Vec<usize> = (0..200).map(|i| c.example_stage(0, 1, i, 4)).collect();
        assert_eq!(
            draws,
            (0..200)
                .map(|i| c.example_stage(0, 1, i, 4))
                .collect::<Vec<_>>()
        );
        assert!(draws.iter().all(|&s| s <= 4));
        let mixed = draws.iter().filter(|&&s| s != 0).count();
        assert!(
            (60..140).contains(&mixed),
            "{mixed} of 200 drawn away from stage 0"
        );
    }

    fn examples(n: usize) -> Vec<Pieces> {
        (0..n)
            .map(|i| Pieces {
                question: vec![1, 2 + i as i64],
                steps: (0..(1 + i % 3)).map(|s| vec![40 + s as i64]).collect(),
                answer: vec![7, 8],
            })
            .collect()
    }

    fn loader(ex: &[Pieces], gb: usize) -> QaLoader<'_> {
        QaLoader::new(ex, curriculum(Arm::Coconut), SP, 5, gb, "d".into()).unwrap()
    }

    #[test]
    fn epochs_are_whole_global_batches_and_set_the_stage() {
        let ex = examples(10);
        // Global batch 4: 8 samples an epoch, the last 2 examples of each order left out.
        let mut l = loader(&ex, 4);
        assert_eq!(l.per_epoch(), 8);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2 {
            assert_eq!(l.epoch(), 0);
            let b = l.next_batch(0, 1, 4);
            seen.extend(b.row_ids);
        }
        assert_eq!(seen.len(), 8, "an epoch visits distinct examples");
        // Epochs 0..2 are stage 0 (no latents); epoch 3 is stage 1.
        for _ in 0..4 {
            let b = l.next_batch(0, 1, 4);
            assert!(!b.inputs.contains(&SP.latent));
        }
        assert_eq!(l.epoch(), 3);
        let b = l.next_batch(0, 1, 4);
        assert!(b.inputs.contains(&SP.latent));
        let p = b.padded.as_ref().unwrap();
        assert_eq!(p.positions.len(), b.rows * b.block);
        // Targets are the labels shifted by one.
        let w = b.block;
        for r in 0..b.rows {
            assert_eq!(b.targets[r * w + w - 1], IGNORE_TARGET);
        }
    }

    #[test]
    fn two_ranks_read_what_one_rank_reads_in_two_micro_batches() {
        let ex = examples(12);
        let mut one = loader(&ex, 4);
        let mut r0 = loader(&ex, 4);
        let mut r1 = loader(&ex, 4);
        for _ in 0..5 {
            let a = one.next_batch(0, 1, 2);
            let b = one.next_batch(0, 1, 2);
            assert_eq!(a.row_ids, r0.next_batch(0, 2, 2).row_ids);
            assert_eq!(b.row_ids, r1.next_batch(1, 2, 2).row_ids);
        }
    }

    #[test]
    fn a_resumed_loader_continues_exactly() {
        let ex = examples(12);
        let mut l = loader(&ex, 4);
        for _ in 0..7 {
            l.next_batch(0, 1, 4);
        }
        let state = l.state();
        let want = l.next_batch(0, 1, 4);
        let mut again = loader(&ex, 4);
        again.load_state(&state).unwrap();
        assert_eq!(again.epoch(), 2);
        assert_eq!(again.next_batch(0, 1, 4), want);
        let mut other = QaLoader::new(&ex, curriculum(Arm::Coconut), SP, 5, 4, "e".into()).unwrap();
        assert!(other.load_state(&state).is_err(), "other data is refused");
        assert!(QaLoader::new(&ex[..3], curriculum(Arm::Coconut), SP, 5, 4, "d".into()).is_err());
    }

    #[test]
    fn tokens_are_added_once_and_pieces_follow_the_reference_layout() {
        let texts = [
            "Every wumpus is a lempus.",
            "Tom is a wumpus. ### Tom is a lempus.",
        ];
        let tok = crate::tokenizer::train(texts.iter().copied(), 300, false).unwrap();
        let before = tok.vocab_size;
        let (tok, added) = add_tokens(tok).unwrap();
        assert_eq!((added, tok.vocab_size), (3, before + 3));
        let (tok, again) = add_tokens(tok).unwrap();
        assert_eq!(again, 0);
        let sp = Special::of(&tok).unwrap();
        assert_eq!(
            [sp.start, sp.end, sp.latent],
            [before as i64, before as i64 + 1, before as i64 + 2]
        );
        let e = QaExample {
            question: "Is Tom a lempus?".into(),
            steps: vec!["Tom is a wumpus.".into()],
            answer: "Tom is a lempus.".into(),
        };
        let p = super::pieces(&e, &tok).unwrap();
        let text = |ids: &[i64]| tok.decode(ids).unwrap();
        assert_eq!(p.question[0], i64::from(tok.specials.bos));
        assert_eq!(text(&p.question), "Is Tom a lempus?\n");
        assert_eq!(text(&p.steps[0]), "Tom is a wumpus.\n");
        assert_eq!(*p.answer.last().unwrap(), i64::from(tok.specials.eos));
        assert_eq!(crate::qa::answer_of(&text(&p.answer)), "Tom is a lempus.");
    }
}
