//! Huginn as a trainable [`Family`]: the model, the depth sampler of its recipe (`[recurrence]`), and
//! its validation at several test-time depths.

use std::ops::Range;
use std::path::Path;

use anyhow::Result;
use serde_json::json;
use tch::Tensor;

use crate::block::Attend;
use crate::checkpoint::{self, TensorFiles};
use crate::coconut::Coconut;
use crate::family::{Family, Fields, GradEvent, MicroBatch};
use crate::flops::{train_flops_per_token, TrainFlops};
use crate::huginn::{Depth, Huginn, InitState, Input, Objective};
use crate::loss::LmLoss;
use crate::params::{self, FlatParams};
use crate::sampler::DepthSampler;
use crate::tidar::Tidar;

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
    /// TiDAR's objective in place of next-token training: the same mask and positions at every
    /// layer of every core iteration.
    pub tidar: Option<Tidar>,
    /// COCONUT's continuous thoughts: every pass runs `coconut_depth` core iterations.
    pub coconut: Option<Coconut>,
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

    /// The sampled (n, k), or COCONUT's fixed depth of every pass.
    fn plan(&self, step: u64) -> Depth {
        match &self.coconut {
            Some(c) => c.depth,
            None => self.sampler.draw(step),
        }
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
        let causal = Attend::causal();
        if let Some(coconut) = &self.coconut {
            let lm = self.model.latent(depth, InitState::Config);
            let out = coconut.forward(&lm, batch, true)?;
            let loss = LmLoss::next_token(batch.targets, batch.scale, &causal);
            let total = lm.backward(&out.hidden, &loss)?.total;
            // One backward call: every region is final at once.
            for i in 0..self.grad_regions().len() {
                on_grad(GradEvent::Final(i));
            }
            return Ok(total);
        }
        let tb = match &self.tidar {
            Some(tidar) => Some(tidar.batch(batch.inputs, batch.targets, batch.scale)?),
            None => None,
        };
        let (ids, loss) = match &tb {
            Some(tb) => (&tb.ids, tb.loss()),
            None => (
                batch.inputs,
                LmLoss::next_token(batch.targets, batch.scale, &causal),
            ),
        };
        let objective = Objective {
            loss,
            activation_checkpointing: self.activation_checkpointing,
        };
        let values = self.model.loss_backward_scaled(
            ids,
            &objective,
            depth,
            &InitState::Config,
            &mut |stage| on_grad(stage.into()),
        )?;
        if let (Some(tidar), Some(tb)) = (&self.tidar, &tb) {
            tidar.record(&values.ce, &tb.targets);
        }
        Ok(values.total)
    }

    fn tokens_computed(&self, seq_len: i64) -> i64 {
        match self.tidar {
            Some(_) => 2 * seq_len,
            None => seq_len,
        }
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
        let mut fields = vec![
            ("recurrent_state_norm", json!(tm.state_norm)),
            ("recurrent_state_token_corr", json!(tm.token_corr)),
            ("rel_residual", json!(tm.rel_residual)),
        ];
        fields.extend(self.tidar.as_ref().map_or_else(Vec::new, Tidar::fields));
        fields.extend(self.coconut.as_ref().map_or_else(Vec::new, Coconut::fields));
        Ok(fields)
    }

    /// `val_loss_r{r}` at each of `eval_depths`, every iteration without a graph; the batch's s0 is
    /// drawn from (seed, index), the same at every depth, evaluation and world size. With TiDAR
    /// also `val_diff_loss_r{r}`, the masked half's loss.
    fn val_metrics(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .eval_depths
            .iter()
            .map(|r| format!("val_loss_r{r}"))
            .collect();
        if self.tidar.is_some() {
            names.extend(
                self.eval_depths
                    .iter()
                    .map(|r| format!("val_diff_loss_r{r}")),
            );
        }
        names
    }

    fn validate(&self, index: u64, batch: &MicroBatch) -> Result<Vec<(f64, f64)>> {
        let (inputs, targets) = (batch.inputs, batch.targets);
        let m = &self.model;
        if let Some(coconut) = &self.coconut {
            return self
                .eval_depths
                .iter()
                .map(|&r| {
                    crate::family::seed_torch(self.seed, index, 0xC0C0);
                    let (sum, n) = tch::no_grad(|| -> Result<_> {
                        let lm = m.latent(Depth::eval(r), InitState::Config);
                        let out = coconut.forward(&lm, batch, false)?;
                        crate::loss::cross_entropy_sum(&lm.logits(&out.hidden), targets)
                    })?;
                    Ok((sum.double_value(&[]), n.double_value(&[])))
                })
                .collect();
        }
        let mut sums = self
            .eval_depths
            .iter()
            .map(|&r| m.val_loss_sums(inputs, targets, r, self.seed, index))
            .collect::<Result<Vec<_>>>()?;
        if let Some(tidar) = &self.tidar {
            let tb = tidar.batch(inputs, targets, 1.0)?;
            for &r in &self.eval_depths {
                crate::family::seed_torch(self.seed, index, 0xE7A1);
                let out = tch::no_grad(|| {
                    m.forward_with(
                        Input::Ids(&tb.ids),
                        &tb.attend,
                        Depth::eval(r),
                        &InitState::Config,
                    )
                })?;
                sums.push(tidar.diff_sums(&out.logits, &tb.targets)?);
            }
        }
        Ok(sums)
    }

    fn save_model(&self, dir: &Path) -> Result<()> {
        checkpoint::write_model_files(&self.model, dir)
    }

    fn load_model(&self, dir: &Path) -> Result<()> {
        let files = TensorFiles::open(&checkpoint::model_files(dir)?)?;
        checkpoint::load_weights(&self.model, &files, str::to_string, &[])
    }
}
