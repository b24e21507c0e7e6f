//! Validation loss at several test-time depths: the trainer's periodic validation and `muninn eval`
//! compute it the same way, so their numbers agree for the same rows and seed.

use anyhow::Result;
use muninn_data::Batch;
use muninn_model::{Depth, Huginn, InitState};
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

/// Seeds torch's RNG (s0 draws) from (seed, step, purpose): a resumed run draws the same states.
pub fn seed_torch(seed: u64, step: u64, purpose: u64) {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(step.to_le_bytes());
    h.update(purpose.to_le_bytes());
    let d = h.finalize();
    tch::manual_seed(i64::from_le_bytes(d[..8].try_into().expect("8 bytes")) & i64::MAX);
}

/// One validation micro-batch: its global index (which seeds its s0) and its rows on the device.
pub struct ValBatch {
    pub index: usize,
    pub inputs: Tensor,
    pub targets: Tensor,
}

/// A batch's (inputs, targets) as [rows, block] i64 tensors on `device`.
pub fn to_tensors(b: &Batch, device: Device) -> (Tensor, Tensor) {
    let shape = [b.rows as i64, b.block as i64];
    (
        Tensor::from_slice(&b.inputs).view(shape).to_device(device),
        Tensor::from_slice(&b.targets).view(shape).to_device(device),
    )
}

/// Marks the targets whose id is in `ignore` as [`muninn_model::IGNORE`] (`data.ignore_targets`).
pub fn ignore_targets(mut b: Batch, ignore: &[i64]) -> Batch {
    if !ignore.is_empty() {
        for y in b.targets.iter_mut().filter(|y| ignore.contains(y)) {
            *y = muninn_model::IGNORE;
        }
    }
    b
}

impl ValBatch {
    pub fn new(index: usize, b: &Batch, device: Device) -> Self {
        let (inputs, targets) = to_tensors(b, device);
        ValBatch {
            index,
            inputs,
            targets,
        }
    }

    pub fn rows(&self) -> i64 {
        self.inputs.size()[0]
    }
}

/// Validation loss at each depth, all iterations without a graph: the mean over every target that
/// counts (not [`muninn_model::IGNORE`]) of every batch on every rank. Each batch draws its s0 from
/// its own seed, the same at every depth, evaluation and world size. `reduce` sums [Σ loss, targets]
/// over data-parallel ranks (a no-op on one process).
pub fn depth_losses(
    model: &Huginn,
    val: &[ValBatch],
    depths: &[i64],
    seed: u64,
    reduce: &mut dyn FnMut(&mut [f64]) -> Result<()>,
) -> Result<Vec<(i64, f64)>> {
    depths
        .iter()
        .map(|&r| {
            let mut sums = [0.0, 0.0];
            for b in val {
                seed_torch(seed, b.index as u64, 0xE7A1);
                let out =
                    tch::no_grad(|| model.forward(&b.inputs, Depth::eval(r), &InitState::Config))?;
                let (loss, count) = muninn_model::cross_entropy_sum(&out.logits, &b.targets)?;
                sums[0] += loss.double_value(&[]);
                sums[1] += count.double_value(&[]);
            }
            reduce(&mut sums)?;
            Ok((
                r,
                if sums[1] > 0.0 {
                    sums[0] / sums[1]
                } else {
                    0.0
                },
            ))
        })
        .collect()
}
