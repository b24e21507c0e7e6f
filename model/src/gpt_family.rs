//! The plain GPT as a trainable [`Family`]: no per-step plan, one backward, one validation loss
//! (next-token training), or TiDAR's two losses from one 2S-token pass.

use std::ops::Range;
use std::path::Path;

use anyhow::Result;
use tch::Tensor;

use crate::block::Attend;
use crate::checkpoint::{self, TensorFiles};
use crate::coconut::Coconut;
use crate::family::{Family, Fields, GradEvent, MicroBatch};
use crate::flops::TrainFlops;
use crate::gpt::Gpt;
use crate::loss::LmLoss;
use crate::params::FlatParams;
use crate::tidar::Tidar;

pub struct GptFamily {
    pub model: Gpt,
    /// TiDAR's objective in place of next-token training.
    pub tidar: Option<Tidar>,
    /// COCONUT's continuous thoughts in the latent columns of aligned rows.
    pub coconut: Option<Coconut>,
}

impl Family for GptFamily {
    type Plan = ();

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

    /// One region: a single backward call finishes every gradient at once.
    #[allow(clippy::single_range_in_vec_init)]
    fn grad_regions(&self) -> Vec<Range<i64>> {
        vec![0..self.model.params().numel()]
    }

    fn plan(&self, _step: u64) {}

    fn plan_fields(&self, _plan: ()) -> (Fields, String) {
        (Vec::new(), String::new())
    }

    fn micro_step(
        &self,
        batch: &MicroBatch,
        _plan: (),
        on_grad: &mut dyn FnMut(GradEvent),
    ) -> Result<Tensor> {
        let loss = match (&self.tidar, &self.coconut) {
            (Some(tidar), _) => {
                let tb = tidar.batch(batch.inputs, batch.targets, batch.scale)?;
                let values = self.model.backward_lm(&tb.ids, &tb.loss())?;
                tidar.record(&values.ce, &tb.targets);
                values.total
            }
            (None, Some(coconut)) => {
                let lm = self.model.latent()?;
                let out = coconut.forward(&lm, batch, true)?;
                let causal = Attend::causal();
                let loss = LmLoss::next_token(batch.targets, batch.scale, &causal);
                lm.backward(&out.hidden, &loss)?.total
            }
            (None, None) => {
                self.model
                    .loss_backward_scaled(batch.inputs, batch.targets, batch.scale)?
            }
        };
        on_grad(GradEvent::Final(0));
        Ok(loss)
    }

    fn flops(&self, _plan: (), seq_len: i64) -> TrainFlops {
        self.model.config().train_flops_per_token(seq_len)
    }

    fn tokens_computed(&self, seq_len: i64) -> i64 {
        match self.tidar {
            Some(_) => 2 * seq_len,
            None => seq_len,
        }
    }

    fn telemetry(&self, _inputs: &Tensor, _plan: ()) -> Result<Fields> {
        let mut fields = self.tidar.as_ref().map_or_else(Vec::new, Tidar::fields);
        fields.extend(self.coconut.as_ref().map_or_else(Vec::new, Coconut::fields));
        Ok(fields)
    }

    /// `val_loss` under the causal mask alone (TiDAR's clean half computes exactly this), and with
    /// TiDAR `val_diff_loss`, the masked half's.
    fn val_metrics(&self) -> Vec<String> {
        let mut names = vec!["val_loss".to_string()];
        if self.tidar.is_some() {
            names.push("val_diff_loss".to_string());
        }
        names
    }

    fn validate(&self, _index: u64, batch: &MicroBatch) -> Result<Vec<(f64, f64)>> {
        let (inputs, targets) = (batch.inputs, batch.targets);
        if let Some(coconut) = &self.coconut {
            let (sum, n) = tch::no_grad(|| -> Result<_> {
                let lm = self.model.latent()?;
                let out = coconut.forward(&lm, batch, false)?;
                crate::loss::cross_entropy_sum(&lm.logits(&out.hidden), targets)
            })?;
            return Ok(vec![(sum.double_value(&[]), n.double_value(&[]))]);
        }
        let mut sums = vec![self.model.val_loss_sums(inputs, targets)?];
        if let Some(tidar) = &self.tidar {
            let tb = tidar.batch(inputs, targets, 1.0)?;
            let logits = tch::no_grad(|| {
                self.model
                    .forward_with(crate::Input::Ids(&tb.ids), &tb.attend)
            })?
            .logits;
            sums.push(tidar.diff_sums(&logits, &tb.targets)?);
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
