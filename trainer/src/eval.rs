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

/// Mean validation loss at each depth, all iterations without a graph. Each batch draws its s0 from
/// its own seed, the same at every depth, evaluation and world size. `reduce` sums [loss·rows, rows]
/// over data-parallel ranks (a no-op on one process).
pub fn depth_losses(
    model: &Huginn,
    val: &[ValBatch],
    depths: &[i64],
    seed: u64,
    reduce: &mut dyn FnMut(&mut [f64]) -> Result<()>,
) -> Result<Vec<(i64, f64)>> {
    let rows: i64 = val.iter().map(ValBatch::rows).sum();
    depths
        .iter()
        .map(|&r| {
            let mut sums = [0.0, rows as f64];
            for b in val {
                seed_torch(seed, b.index as u64, 0xE7A1);
                let out =
                    tch::no_grad(|| model.forward(&b.inputs, Depth::eval(r), &InitState::Config))?;
                sums[0] += muninn_model::cross_entropy(&out.logits, &b.targets)?.double_value(&[])
                    * b.rows() as f64;
            }
            reduce(&mut sums)?;
            Ok((r, sums[0] / sums[1]))
        })
        .collect()
}
