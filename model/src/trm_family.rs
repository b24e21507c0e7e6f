//! TRM as a trainable [`Family`] (`trm-reference.md` §2–3): each optimizer step is one supervision
//! step over persistent slots (carry batching), its loss summed over the slots and divided by the
//! global batch; the puzzle table learns by sign-SGD on the rows a step touched; halting, the
//! exploration floors and the carry are per global micro-batch, so any split over ranks and
//! accumulation steps trains the same and a checkpoint resumes exactly.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use tch::{Kind, Tensor};

use crate::checkpoint::{self, TensorFiles};
use crate::family::{Family, Fields, GradEvent, LossMean, MicroBatch};
use crate::flops::TrainFlops;
use crate::params::FlatParams;
use crate::trm::{exploration_floors, loss, Carry, Slots, Step, Trm};

/// The puzzle table's optimizer (§3): sign-SGD with its own lr and decay, on the trainer's schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TableOptimizer {
    pub lr: f64,
    pub weight_decay: f64,
}

pub struct TrmFamily {
    pub model: Trm,
    pub table: TableOptimizer,
    pub seed: u64,
    /// Slots of each global micro-batch this rank runs.
    slots: RefCell<BTreeMap<usize, Slots>>,
    /// The step's (puzzle ids [B], their rows' gradient [B, D]) per global micro-batch.
    table_grads: RefCell<Vec<(usize, Tensor, Tensor)>>,
    /// Training metrics since the last telemetry: Σ over halted rows of [count, accuracy, exact,
    /// q_halt right, steps], and Σ over all rows of [rows, lm loss, q loss]; [8] f64 on the
    /// model's device, read only when logged (no host sync per micro-step).
    stats: RefCell<Option<Tensor>>,
}

/// The sums of an evaluation of puzzles after every supervision step (all rows run N_sup).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PuzzleSums {
    pub rows: f64,
    pub accuracy: f64,
    pub exact: f64,
    pub q_halt_right: f64,
    pub lm_loss: f64,
    pub steps: f64,
}

impl std::ops::AddAssign for PuzzleSums {
    fn add_assign(&mut self, o: PuzzleSums) {
        self.rows += o.rows;
        self.accuracy += o.accuracy;
        self.exact += o.exact;
        self.q_halt_right += o.q_halt_right;
        self.lm_loss += o.lm_loss;
        self.steps += o.steps;
    }
}

impl TrmFamily {
    pub fn new(model: Trm, table: TableOptimizer, seed: u64) -> Self {
        TrmFamily {
            model,
            table,
            seed,
            slots: RefCell::new(BTreeMap::new()),
            table_grads: RefCell::new(Vec::new()),
            stats: RefCell::new(None),
        }
    }
}

/// Every row from the initial carry through all N_sup supervision steps, no graph, as the
/// reference evaluates (halting is ignored in eval): the sums of the last step's metrics, and that
/// step (its argmax is the prediction, its `q_halt` the confidence ARC's vote breaks ties with).
pub fn evaluate_puzzles(
    m: &Trm,
    inputs: &Tensor,
    labels: &Tensor,
    puzzle_ids: &Tensor,
) -> Result<(PuzzleSums, Step)> {
    let b = inputs.size()[0];
    let mut carry = m.initial_carry(b);
    let mut last = None;
    tch::no_grad(|| -> Result<()> {
        for _ in 0..m.config().halt_max_steps {
            let s = m.step(&carry, inputs, puzzle_ids)?;
            carry = Carry {
                y: s.carry.y.shallow_clone(),
                z: s.carry.z.shallow_clone(),
            };
            last = Some(s);
        }
        Ok(())
    })?;
    let step = last.context("halt_max_steps is at least 1")?;
    let l = tch::no_grad(|| loss(&step, labels))?;
    let counted = l.counts.gt(0);
    let f = |t: &Tensor| {
        t.to_kind(Kind::Double)
            .where_self(&counted, &t.zeros_like().to_kind(Kind::Double))
            .sum(Kind::Double)
            .double_value(&[])
    };
    let q_right = step.q_halt.ge(0.0).eq_tensor(&l.row_correct);
    let sums = PuzzleSums {
        rows: f(&counted),
        accuracy: f(&l.cell_accuracy),
        exact: f(&l.row_correct),
        q_halt_right: f(&q_right),
        lm_loss: l.lm.double_value(&[]),
        steps: f(&counted) * m.config().halt_max_steps as f64,
    };
    Ok((sums, step))
}

impl TrmFamily {
    /// The training metrics' sums on the host; `reset` starts the next window.
    fn stats_now(&self, reset: bool) -> Vec<f64> {
        let mut st = self.stats.borrow_mut();
        let v = match st.as_ref() {
            Some(t) => Vec::<f64>::try_from(t.to_device(tch::Device::Cpu)).unwrap_or_default(),
            None => Vec::new(),
        };
        if reset {
            *st = None;
        }
        if v.len() == 8 {
            v
        } else {
            vec![0.0; 8]
        }
    }
}

impl Family for TrmFamily {
    /// The step number: the exploration floors are drawn from it.
    type Plan = u64;

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
        self.model.config().seq_len
    }

    #[allow(clippy::single_range_in_vec_init)]
    fn grad_regions(&self) -> Vec<Range<i64>> {
        vec![0..self.model.params().numel()]
    }

    fn plan(&self, step: u64) -> u64 {
        step
    }

    fn plan_fields(&self, _step: u64) -> (Fields, String) {
        let st = self.stats_now(false);
        let label = match st[0] > 0.0 {
            true => format!("exact {:.3} halted {:.0}", st[2] / st[0], st[0]),
            false => String::new(),
        };
        (Vec::new(), label)
    }

    fn micro_step(
        &self,
        batch: &MicroBatch,
        step: u64,
        on_grad: &mut dyn FnMut(GradEvent),
    ) -> Result<Tensor> {
        let m = &self.model;
        let c = m.config();
        let b = batch.inputs.size()[0];
        let zeros = Tensor::zeros([b], (Kind::Int64, batch.inputs.device()));
        let ids = batch.puzzle_ids.unwrap_or(&zeros);
        let mut all = self.slots.borrow_mut();
        let slots = all.entry(batch.global).or_insert_with(|| Slots::new(m, b));
        ensure!(
            slots.steps.size()[0] == b,
            "micro-batch {} has {b} rows, its slots {}",
            batch.global,
            slots.steps.size()[0]
        );
        slots.refill(m, batch.inputs, batch.targets, ids);
        // A leaf of the rows of the puzzle table: its gradient is what the sign-SGD reads.
        let rows = m
            .puzzle_table
            .index_select(0, &slots.puzzle_ids)
            .detach()
            .set_requires_grad(true);
        let out = m.step_with_rows(&slots.carry, &slots.inputs, &rows)?;
        let l = loss(&out, &slots.labels)?;
        (&l.total * batch.scale).backward();
        on_grad(GradEvent::Final(0));
        self.table_grads.borrow_mut().push((
            batch.global,
            slots.puzzle_ids.shallow_clone(),
            rows.grad().detach(),
        ));
        let first = (batch.global as i64 * b) as u64;
        let floors = exploration_floors(
            self.seed,
            step,
            first..first + b as u64,
            c.halt_exploration_prob,
            c.halt_max_steps,
        );
        let floors = Tensor::from_slice(&floors).to_device(batch.inputs.device());
        slots.advance(m, &out, true, &floors);
        // The metrics count the rows that halted at this step, as the reference's do.
        tch::no_grad(|| {
            let h = slots.halted.logical_and(&l.counts.gt(0));
            let sum = |t: &Tensor| {
                t.to_kind(Kind::Double)
                    .where_self(&h, &t.zeros_like().to_kind(Kind::Double))
                    .sum(Kind::Double)
            };
            let q_right = out.q_halt.ge(0.0).eq_tensor(&l.row_correct);
            let v = Tensor::stack(
                &[
                    sum(&h),
                    sum(&l.cell_accuracy),
                    sum(&l.row_correct),
                    sum(&q_right),
                    sum(&slots.steps),
                    Tensor::from(b as f64).to_device(h.device()),
                    l.lm.detach(),
                    l.q_halt.detach().to_kind(Kind::Double),
                ],
                0,
            );
            let mut st = self.stats.borrow_mut();
            *st = Some(match st.take() {
                Some(acc) => acc + v,
                None => v,
            });
        });
        Ok((l.total * batch.scale).detach())
    }

    /// Per puzzle cell: each of the T·(n+1) calls of f per step runs every block over the P+L
    /// positions; backward (2×) covers only the last cycle's n+1 calls.
    fn flops(&self, _step: u64, _seq_len: i64) -> TrainFlops {
        let c = self.model.config();
        let s = c.positions() as f64;
        let per_call = 2.0 * self.model.params().numel() as f64 * s / c.seq_len as f64;
        let calls = (c.h_cycles * (c.l_cycles + 1)) as f64;
        let grad_calls = (c.l_cycles + 1) as f64;
        let f = per_call * (calls + 2.0 * grad_calls);
        TrainFlops {
            model: f,
            hardware: f,
        }
    }

    fn telemetry(&self, _inputs: &Tensor, _step: u64) -> Result<Fields> {
        let st = self.stats_now(true);
        let per_halted = |x: f64| match st[0] > 0.0 {
            true => json!(x / st[0]),
            false => json!(0.0),
        };
        Ok(vec![
            ("accuracy", per_halted(st[1])),
            ("exact_accuracy", per_halted(st[2])),
            ("q_halt_accuracy", per_halted(st[3])),
            ("steps", per_halted(st[4])),
            ("halted_share", json!(st[0] / st[5].max(1.0))),
            ("lm_loss", json!(st[6] / st[5].max(1.0))),
            ("q_halt_loss", json!(st[7] / st[5].max(1.0))),
        ])
    }

    fn val_metrics(&self) -> Vec<String> {
        [
            "val_exact_accuracy",
            "val_accuracy",
            "val_q_halt_accuracy",
            "val_lm_loss",
        ]
        .map(String::from)
        .to_vec()
    }

    fn validate(&self, _index: u64, batch: &MicroBatch) -> Result<Vec<(f64, f64)>> {
        let zeros = Tensor::zeros(
            [batch.inputs.size()[0]],
            (Kind::Int64, batch.inputs.device()),
        );
        let ids = batch.puzzle_ids.unwrap_or(&zeros);
        let (s, _) = evaluate_puzzles(&self.model, batch.inputs, batch.targets, ids)?;
        Ok(vec![
            (s.exact, s.rows),
            (s.accuracy, s.rows),
            (s.q_halt_right, s.rows),
            (s.lm_loss, s.rows),
        ])
    }

    fn loss_mean(&self) -> LossMean {
        LossMean::Rows
    }

    /// Sign-SGD on the table rows the step touched, from their gradient summed over every
    /// micro-batch and rank: each rank fills its micro-batches' places of one vector
    /// [units · B · (1 + D)] (id, then gradient), the sum gives every rank all of them.
    fn update_extra(
        &self,
        lr_factor: f64,
        units: usize,
        sum: &mut dyn FnMut(&mut [f64]) -> Result<()>,
    ) -> Result<()> {
        let mut grads = std::mem::take(&mut *self.table_grads.borrow_mut());
        let Some((_, first_ids, first_grad)) = grads.first() else {
            bail!("the puzzle table's update came before any micro-step");
        };
        let (lr, wd) = (self.table.lr * lr_factor, self.table.weight_decay);
        if grads.len() == units {
            // One rank holds every micro-batch: nothing to gather, so no trip through the host
            // (the gathered path's f32 → f64 → f32 and its sums with zeros are exact, so both
            // paths update alike).
            grads.sort_by_key(|g| g.0);
            let ids = Tensor::cat(&grads.iter().map(|g| &g.1).collect::<Vec<_>>(), 0);
            let rows = Tensor::cat(&grads.iter().map(|g| &g.2).collect::<Vec<_>>(), 0);
            sign_sgd_rows_(
                &self.model.puzzle_table,
                &ids,
                &rows.to_kind(Kind::Float),
                lr,
                wd,
            );
            return Ok(());
        }
        let (b, d) = (first_ids.size()[0] as usize, first_grad.size()[1] as usize);
        let width = b * (1 + d);
        let mut all = vec![0.0; units * width];
        for (g, ids, grad) in &grads {
            ensure!(*g < units, "micro-batch {g} of a step of {units}");
            let ids = Vec::<f64>::try_from(ids.to_kind(Kind::Double).to_device(tch::Device::Cpu))?;
            let grad = Vec::<f64>::try_from(
                grad.to_kind(Kind::Double)
                    .to_device(tch::Device::Cpu)
                    .reshape([-1]),
            )?;
            let at = g * width;
            all[at..at + b].copy_from_slice(&ids);
            all[at + b..at + width].copy_from_slice(&grad);
        }
        sum(&mut all)?;
        let dev = self.model.puzzle_table.device();
        let (mut ids, mut rows) = (Vec::new(), Vec::new());
        for chunk in all.chunks(width) {
            ids.extend(chunk[..b].iter().map(|&x| x as i64));
            rows.extend_from_slice(&chunk[b..]);
        }
        let ids = Tensor::from_slice(&ids).to_device(dev);
        let rows = Tensor::from_slice(&rows)
            .view([(units * b) as i64, d as i64])
            .to_kind(Kind::Float)
            .to_device(dev);
        sign_sgd_rows_(&self.model.puzzle_table, &ids, &rows, lr, wd);
        Ok(())
    }

    fn rank_state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (g, s) in self.slots.borrow().iter() {
            for (what, t) in [
                ("y", &s.carry.y),
                ("z", &s.carry.z),
                ("steps", &s.steps),
                ("halted", &s.halted.to_kind(Kind::Uint8)),
                ("inputs", &s.inputs),
                ("labels", &s.labels),
                ("puzzle_ids", &s.puzzle_ids),
            ] {
                out.push((format!("slots.{g}.{what}"), t.detach()));
            }
        }
        out
    }

    fn load_rank_state(&self, tensors: Vec<(String, Tensor)>, owned: &[usize]) -> Result<()> {
        let mut by: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        let dev = self.model.puzzle_table.device();
        let mut slots = self.slots.borrow_mut();
        slots.clear();
        for &g in owned {
            let mut take = |what: &str| {
                by.remove(&format!("slots.{g}.{what}"))
                    .map(|t| t.to_device(dev))
                    .with_context(|| {
                        format!(
                            "the checkpoint has no carry for global micro-batch {g}: resume with the same ranks × train.grad_accum"
                        )
                    })
            };
            let carry = Carry {
                y: take("y")?.to_kind(self.model.dtype()),
                z: take("z")?.to_kind(self.model.dtype()),
            };
            let s = Slots {
                carry,
                steps: take("steps")?,
                halted: take("halted")?.to_kind(Kind::Bool),
                inputs: take("inputs")?,
                labels: take("labels")?,
                puzzle_ids: take("puzzle_ids")?,
            };
            slots.insert(g, s);
        }
        Ok(())
    }

    fn buffers(&self) -> Vec<(&'static str, Tensor)> {
        self.model.buffers()
    }

    fn save_model(&self, dir: &Path) -> Result<()> {
        checkpoint::write_model_files(&self.model, dir)
    }

    fn load_model(&self, dir: &Path) -> Result<()> {
        let files = TensorFiles::open(&checkpoint::model_files(dir)?)?;
        checkpoint::load_weights(&self.model, &files, str::to_string, &[])
    }
}

/// Sign-SGD on the rows of `table` a batch touched (§3): the gradients of rows `ids` ([N] i64,
/// repeats allowed) are summed per row, then row ← row·(1 − lr·wd) − lr·sign(Σ grad); untouched
/// rows do not decay.
pub fn sign_sgd_rows_(
    table: &Tensor,
    ids: &Tensor,
    row_grads: &Tensor,
    lr: f64,
    weight_decay: f64,
) {
    tch::no_grad(|| {
        let (unique, inverse, _) = ids.unique_dim(0, true, true, false);
        let d = row_grads.size()[1];
        let summed = Tensor::zeros(
            [unique.size()[0], d],
            (row_grads.kind(), row_grads.device()),
        )
        .index_add(0, &inverse, row_grads);
        let rows = table.index_select(0, &unique) * (1.0 - lr * weight_decay) - summed.sign() * lr;
        let _ = table.shallow_clone().index_copy_(0, &unique, &rows);
    });
}
