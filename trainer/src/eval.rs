//! Validation loss at several test-time depths: the trainer's periodic validation and `muninn eval`
//! compute it the same way, so their numbers agree for the same rows and seed.

use anyhow::Result;
use muninn_data::Batch;
use muninn_model::{Family, Huginn};
use tch::{Device, Tensor};

pub use muninn_model::family::seed_torch;

/// One validation micro-batch: its global index (which seeds its s0) and its rows on the device.
pub struct ValBatch {
    pub index: usize,
    pub inputs: Tensor,
    pub targets: Tensor,
    pub puzzle_ids: Option<Tensor>,
    /// Positions and real tokens of padded rows (COCONUT).
    pub padded: Option<(Tensor, Tensor)>,
}

/// A padded batch's positions and real-token mask as [rows, block] tensors on `device`.
pub fn padding(b: &Batch, device: Device) -> Option<(Tensor, Tensor)> {
    let shape = [b.rows as i64, b.block as i64];
    b.padded.as_ref().map(|p| {
        (
            Tensor::from_slice(&p.positions)
                .view(shape)
                .to_device(device),
            Tensor::from_slice(&p.real).view(shape).to_device(device),
        )
    })
}

/// A batch's puzzle identifiers [rows] on `device`, where it has them.
pub fn puzzle_ids(b: &Batch, device: Device) -> Option<Tensor> {
    (!b.puzzle_ids.is_empty()).then(|| Tensor::from_slice(&b.puzzle_ids).to_device(device))
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
    pub fn rows(&self) -> i64 {
        self.inputs.size()[0]
    }

    pub fn new(index: usize, b: &Batch, device: Device) -> Self {
        let (inputs, targets) = to_tensors(b, device);
        ValBatch {
            index,
            inputs,
            targets,
            puzzle_ids: puzzle_ids(b, device),
            padded: padding(b, device),
        }
    }
}

/// Validation loss at each depth, all iterations without a graph: the mean over every target that
/// counts (not [`muninn_model::IGNORE`]) of every batch on every rank (`muninn eval`; the trainer
/// validates through its family, with the same numbers). `reduce` sums [Σ loss, targets] over
/// data-parallel ranks (a no-op on one process).
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
                let (loss, count) =
                    model.val_loss_sums(&b.inputs, &b.targets, r, seed, b.index as u64)?;
                sums[0] += loss;
                sums[1] += count;
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

/// The family's validation metrics over `val`, each the ratio of its sums over every batch on every
/// rank (`reduce` sums over data-parallel ranks).
pub fn validate<F: Family>(
    family: &F,
    val: &[ValBatch],
    reduce: &mut dyn FnMut(&mut [f64]) -> Result<()>,
) -> Result<Vec<(String, f64)>> {
    let names = family.val_metrics();
    let mut sums = vec![0.0; 2 * names.len()];
    for b in val {
        let batch = muninn_model::MicroBatch {
            inputs: &b.inputs,
            targets: &b.targets,
            scale: 1.0,
            puzzle_ids: b.puzzle_ids.as_ref(),
            padded: b
                .padded
                .as_ref()
                .map(|(positions, real)| muninn_model::family::Padding { positions, real }),
            global: b.index,
        };
        let metrics = family.validate(b.index as u64, &batch)?;
        for (j, (sum, count)) in metrics.into_iter().enumerate() {
            sums[2 * j] += sum;
            sums[2 * j + 1] += count;
        }
    }
    reduce(&mut sums)?;
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(j, name)| {
            let (sum, count) = (sums[2 * j], sums[2 * j + 1]);
            (name, if count > 0.0 { sum / count } else { 0.0 })
        })
        .collect())
}
