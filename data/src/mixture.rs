//! Weighted mixtures of prepared datasets (`mixture.toml` in a dataset directory), as the Huginn
//! recipe mixes its sources. Which source global sample g reads, and which of that source's samples
//! it is, are pure functions of (seed, g), so the loader's state stays one counter and resumes
//! exactly on any number of ranks:
//!
//! the samples come in blocks of [`BLOCK`]; each source owns a fixed number of slots per block (its
//! weight × BLOCK, by largest remainder), and the slots of block k are shuffled by a keyed
//! permutation of (seed, k). Sample g = k·BLOCK + j takes slot perm_k(j); if that slot is source i's
//! q-th, g is source i's sample k·c_i + q, which that source's own epoch permutation maps to a row.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::Deserialize;

use crate::perm::Permutation;

pub const MIXTURE_FILE: &str = "mixture.toml";

/// Samples per block of the schedule: weights are realised exactly within every block, to 1/BLOCK.
pub const BLOCK: u64 = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MixtureFile {
    source: Vec<SourceEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceEntry {
    /// A prepared dataset directory, relative to the mixture's directory.
    dir: PathBuf,
    weight: f64,
}

/// A mixture's sources (directories resolved) and their slots per block.
#[derive(Debug, Clone, PartialEq)]
pub struct Mixture {
    pub dirs: Vec<PathBuf>,
    pub weights: Vec<f64>,
    /// Slots per block of each source; they sum to [`BLOCK`].
    pub slots: Vec<u64>,
}

impl Mixture {
    /// Reads `dir/mixture.toml`, if there is one.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(MIXTURE_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let file: MixtureFile =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        ensure!(
            !file.source.is_empty(),
            "{}: no [[source]] entries",
            path.display()
        );
        for s in &file.source {
            ensure!(
                s.weight > 0.0 && s.weight.is_finite(),
                "{}: source {} has weight {}: weights must be positive",
                path.display(),
                s.dir.display(),
                s.weight
            );
        }
        let weights: Vec<f64> = file.source.iter().map(|s| s.weight).collect();
        Ok(Some(Mixture {
            dirs: file.source.iter().map(|s| dir.join(&s.dir)).collect(),
            slots: slots(&weights),
            weights,
        }))
    }

    /// (source, that source's sample index) of global sample `g`.
    pub fn sample(&self, seed: u64, g: u64) -> (usize, u64) {
        let (k, j) = (g / BLOCK, g % BLOCK);
        // A stream of its own, apart from the sources' epoch permutations.
        let slot = Permutation::new(BLOCK, seed ^ 0x6d69_7874_7572_6521, k).apply(j);
        let mut start = 0;
        for (i, &c) in self.slots.iter().enumerate() {
            if slot < start + c {
                return (i, k * c + (slot - start));
            }
            start += c;
        }
        unreachable!("the slots sum to BLOCK")
    }
}

/// Slots per block by largest remainder: each source at least one, summing to BLOCK.
fn slots(weights: &[f64]) -> Vec<u64> {
    let total: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| w / total * BLOCK as f64).collect();
    let mut slots: Vec<u64> = exact.iter().map(|e| (e.floor() as u64).max(1)).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    let mut i = 0;
    while slots.iter().sum::<u64>() < BLOCK {
        slots[order[i % order.len()]] += 1;
        i += 1;
    }
    while slots.iter().sum::<u64>() > BLOCK {
        let big = (0..slots.len())
            .max_by_key(|&i| slots[i])
            .expect("a source");
        slots[big] -= 1;
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_weights_and_fill_the_block() {
        assert_eq!(slots(&[0.7, 0.3]), vec![2867, 1229]);
        assert_eq!(slots(&[1.0, 1.0, 1.0]).iter().sum::<u64>(), BLOCK);
        assert_eq!(slots(&[1.0, 1e-9])[1], 1);
    }

    #[test]
    fn every_block_gives_each_source_its_slots_once() {
        let m = Mixture {
            dirs: vec![],
            weights: vec![3.0, 1.0],
            slots: slots(&[3.0, 1.0]),
        };
        for k in 0..3u64 {
            let mut seen = [Vec::new(), Vec::new()];
            for g in k * BLOCK..(k + 1) * BLOCK {
                let (s, j) = m.sample(9, g);
                seen[s].push(j);
            }
            for (s, mut v) in seen.into_iter().enumerate() {
                v.sort();
                let c = m.slots[s];
                assert_eq!(v, (k * c..(k + 1) * c).collect::<Vec<_>>());
            }
        }
    }
}
