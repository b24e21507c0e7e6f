//! Huginn as a trainable [`Family`]: the model, the depth sampler of its recipe (`[recurrence]`), and
//! its validation at several test-time depths.

use std::ops::Range;
use std::path::Path;

use anyhow::Result;
use serde_json::json;
use tch::Tensor;

use crate::checkpoint::{self, TensorFiles};
use crate::family::{Family, Fields, GradEvent, MicroBatch};
use crate::flops::{train_flops_per_token, TrainFlops};
use crate::huginn::{Depth, Huginn, InitState, Objective};
use crate::params::{self, FlatParams};
use crate::sampler::DepthSampler;

/// Huginn with its training recipe.
pub struct HuginnFamily {
    pub model: Huginn,
    /// Draws each step's (n, k).
    pub sampler: DepthSampler,
    pub activation_checkpointing: bool,
    /// Validation depths (`eval.depths`): a metric `val_loss_r{r}` each.
    pub eval_depths: Vec<i64>,
    /// The run's seed: validation draws each batch's s0 from it.
    pub seed: u64,
}

impl Family for HuginnFamily {
    type Plan = Depth;

    fn params(&self) -> &FlatParams {
        self.model.params()
    }

    fn config_toml(&self) -> String {
        self.model.config().to_toml()
    }

    fn vocab_size(&self) -> i64 {
        self.model.config().vocab_size
    }

    fn block_size(&self) -> i64 {
        self.model.config().block_size
    }

    fn grad_regions(&self) -> Vec<Range<i64>> {
        params::grad_regions(self.model.params().specs()).to_vec()
    }

    fn plan(&self, step: u64) -> Depth {
        self.sampler.draw(step)
    }

    fn plan_fields(&self, d: Depth) -> (Fields, String) {
        (
            vec![("n", json!(d.no_grad)), ("k", json!(d.with_grad))],
            format!("(n,k)=({},{})", d.no_grad, d.with_grad),
        )
    }

    fn micro_step(
        &self,
        batch: &MicroBatch,
        depth: Depth,
        on_grad: &mut dyn FnMut(GradEvent),
    ) -> Result<Tensor> {
        let objective = Objective {
            targets: batch.targets,
            scale: batch.scale,
            activation_checkpointing: self.activation_checkpointing,
        };
        self.model.loss_backward_scaled(
            batch.inputs,
            &objective,
            depth,
            &InitState::Config,
            &mut |stage| on_grad(stage.into()),
        )
    }

    fn flops(&self, d: Depth, seq_len: i64) -> TrainFlops {
        train_flops_per_token(
            self.model.config(),
            d.no_grad,
            d.with_grad,
            seq_len,
            self.activation_checkpointing,
        )
    }

    fn telemetry(&self, inputs: &Tensor, d: Depth) -> Result<Fields> {
        let tm = self
            .model
            .telemetry(inputs, d.total().max(1), &InitState::Config)?;
        Ok(vec![
            ("recurrent_state_norm", json!(tm.state_norm)),
            ("recurrent_state_token_corr", json!(tm.token_corr)),
            ("rel_residual", json!(tm.rel_residual)),
        ])
    }

    /// `val_loss_r{r}` at each of `eval_depths`, every iteration without a graph; the batch's s0 is
    /// drawn from (seed, index), the same at every depth, evaluation and world size.
    fn val_metrics(&self) -> Vec<String> {
        self.eval_depths
            .iter()
            .map(|r| format!("val_loss_r{r}"))
            .collect()
    }

    fn validate(&self, index: u64, batch: &MicroBatch) -> Result<Vec<(f64, f64)>> {
        let (inputs, targets) = (batch.inputs, batch.targets);
        let m = &self.model;
        self.eval_depths
            .iter()
            .map(|&r| m.val_loss_sums(inputs, targets, r, self.seed, index))
            .collect()
    }

    fn save_model(&self, dir: &Path) -> Result<()> {
        checkpoint::write_model_files(&self.model, dir)
    }

    fn load_model(&self, dir: &Path) -> Result<()> {
        let files = TensorFiles::open(&checkpoint::model_files(dir)?)?;
        checkpoint::load_weights(&self.model, &files, str::to_string, &[])
    }
}
