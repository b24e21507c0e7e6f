//! What every model family shares with the trainer.

use std::ops::Range;
use std::path::Path;

use anyhow::Result;
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::flops::TrainFlops;
use crate::params::FlatParams;

/// What a family's backward tells the trainer as it proceeds, so that gradient messages start while
/// the rest of backward still runs (`hpc-and-ecosystem.md` §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradEvent {
    /// Region i of the family's gradient regions (ranges of the flat gradient, in the order
    /// backward completes them) is final: nothing later in this backward writes it. The last region
    /// being final means the whole gradient is.
    Final(usize),
    /// Nothing new is final; a chance to drive outstanding messages (e.g. between Huginn's
    /// recomputed iterations).
    Progress,
}

/// One micro-batch of a step, as the trainer hands it to a family.
pub struct MicroBatch<'a> {
    /// [B, T] token ids.
    pub inputs: &'a Tensor,
    /// [B, T]; [`crate::IGNORE`] where a target does not count.
    pub targets: &'a Tensor,
    /// The weight of this micro-batch's loss sum: W·A / (units counted in the whole step, see
    /// [`Family::loss_mean`]), so that accumulation and the rank average leave the mean over the
    /// step's counted units.
    pub scale: f64,
    /// [B] puzzle identifiers (TRM's puzzle embedding), where the data has them.
    pub puzzle_ids: Option<&'a Tensor>,
    /// Per-row positions [B, T] and real tokens [B, T] (bool) of padded rows (COCONUT's aligned
    /// batches); None for rows that are all real tokens at positions 0, 1, ….
    pub padded: Option<Padding<'a>>,
    /// Which global micro-batch of the step this is (micro-batch i of rank r is i·W + r): what a
    /// family keeps per micro-batch (TRM's slots) and any randomness it draws are keyed by it.
    pub global: usize,
}

/// Where a micro-batch's rows are padded.
#[derive(Clone, Copy)]
pub struct Padding<'a> {
    pub positions: &'a Tensor,
    pub real: &'a Tensor,
}

/// What a step's loss is the mean over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossMean {
    /// Every target that counts (language modelling).
    Targets,
    /// Every row: a row's loss is already its own mean over cells (TRM: Σ over slots ÷ global batch).
    Rows,
}

/// Named values for the metrics record.
pub type Fields = Vec<(&'static str, serde_json::Value)>;

/// What the training loop needs from a model family; the loop never names one. A family owns its
/// parameters (in [`FlatParams`]: the optimizer, gradient reduction and checkpoints work on the flat
/// buffers), draws its per-step plan, runs a micro-step's forward, loss and backward, and reports
/// its own validation metrics, telemetry and FLOPs.
pub trait Family {
    /// What a step draws before it runs, a pure function of the step (every rank draws the same,
    /// and a resumed run draws the same again): Huginn's depth (n, k).
    type Plan: Copy;

    fn params(&self) -> &FlatParams;

    /// The resolved shape as TOML: written beside the weights, hashed to refuse another shape.
    fn config_toml(&self) -> String;

    /// Token ids the embedding and head cover.
    fn vocab_size(&self) -> i64;

    /// The longest sequence the positions cover.
    fn block_size(&self) -> i64;

    /// Ranges of the flat gradient in the order backward completes them, covering it once;
    /// [`GradEvent::Final`] indexes them.
    fn grad_regions(&self) -> Vec<Range<i64>>;

    fn plan(&self, step: u64) -> Self::Plan;

    /// The plan as metrics fields and as a short label for progress lines.
    fn plan_fields(&self, plan: Self::Plan) -> (Fields, String);

    /// Forward, L = scale · Σ loss over the counted targets, and backward of L into the flat
    /// gradient, announcing each region as it becomes final. Returns the detached L.
    fn micro_step(
        &self,
        batch: &MicroBatch,
        plan: Self::Plan,
        on_grad: &mut dyn FnMut(GradEvent),
    ) -> Result<Tensor>;

    /// Model and hardware FLOPs per computed token of a step with this plan over sequences of
    /// `seq_len` computed tokens (see [`Family::tokens_computed`]).
    fn flops(&self, plan: Self::Plan, seq_len: i64) -> TrainFlops;

    /// Tokens a forward computes per row of `seq_len` data tokens: TiDAR appends a masked copy
    /// (2·seq_len). Throughput and FLOPs count these; data progress counts `seq_len`.
    fn tokens_computed(&self, seq_len: i64) -> i64 {
        seq_len
    }

    /// Diagnostics of one no-grad pass over `inputs`, averaged over ranks by the trainer.
    fn telemetry(&self, inputs: &Tensor, plan: Self::Plan) -> Result<Fields>;

    /// The names of the validation metrics, in [`Family::validate`]'s order. Every rank reports
    /// all of them, even one without validation rows.
    fn val_metrics(&self) -> Vec<String>;

    /// Validation of one batch (its global `index` seeds any randomness): (Σ, count) of each of
    /// [`Family::val_metrics`]. The trainer sums both over batches and ranks and logs Σ / count.
    fn validate(&self, index: u64, batch: &MicroBatch) -> Result<Vec<(f64, f64)>>;

    /// What the step's loss is a mean over (how the trainer computes [`MicroBatch::scale`]).
    fn loss_mean(&self) -> LossMean {
        LossMean::Targets
    }

    /// After the step's backward, with the update: state outside the flat parameters that the
    /// family updates itself (TRM's puzzle table). `lr_factor` is the schedule's lr_t / lr;
    /// `units` the step's global micro-batches (W·A); `sum` adds a vector over ranks (every rank
    /// calls it the same number of times).
    fn update_extra(
        &self,
        _lr_factor: f64,
        _units: usize,
        _sum: &mut dyn FnMut(&mut [f64]) -> Result<()>,
    ) -> Result<()> {
        Ok(())
    }

    /// This rank's state between steps that is neither weights nor optimizer (TRM's carry), as
    /// named tensors; checkpoints keep it per rank so that a resumed run continues exactly.
    fn rank_state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// Restores what [`Family::rank_state`] saved: `tensors` from every rank's file; this rank
    /// owns global micro-batches `owned`. Refuses state that does not cover them.
    fn load_rank_state(&self, _tensors: Vec<(String, Tensor)>, _owned: &[usize]) -> Result<()> {
        Ok(())
    }

    /// Tensors saved beside the parameters (see [`crate::checkpoint::Stored::buffers`]).
    fn buffers(&self) -> Vec<(&'static str, Tensor)> {
        Vec::new()
    }

    /// Writes the weights and the shape into a checkpoint directory.
    fn save_model(&self, dir: &Path) -> Result<()>;

    /// Loads the weights of a checkpoint directory written by [`Family::save_model`].
    fn load_model(&self, dir: &Path) -> Result<()>;
}

/// Seeds torch's RNG from (seed, step, purpose): every rank, and a resumed run, draws the same.
pub fn seed_torch(seed: u64, step: u64, purpose: u64) {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(step.to_le_bytes());
    h.update(purpose.to_le_bytes());
    let d = h.finalize();
    tch::manual_seed(i64::from_le_bytes(d[..8].try_into().expect("8 bytes")) & i64::MAX);
}
