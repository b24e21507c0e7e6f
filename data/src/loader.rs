//! The loader. Which row a sample gets is a pure function of (seed, epoch, global sample index):
//! epoch e = g / rows visits every row once, in the order of a keyed permutation of (seed, e). A step
//! of `world × micro_batch` samples gives rank r the samples [g + r·mb, g + (r+1)·mb). The loader's
//! whole state is therefore one counter of global samples consumed, and a run resumes exactly, on any
//! number of ranks.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::mixture::Mixture;
use crate::perm::Permutation;
use crate::shard::{DatasetIndex, Shard};
use crate::tokenizer::TokenizerInfo;

/// One split of a prepared dataset, memory-mapped and verified.
pub struct TokenDataset {
    pub index: DatasetIndex,
    pub split: String,
    shards: Vec<Shard>,
    /// First global row of each shard, plus the total at the end.
    starts: Vec<u64>,
    /// A mixture's schedule, with the first global row and the row count of each source (whose
    /// shards follow each other in `shards`).
    mixture: Option<(Mixture, Vec<u64>, Vec<u64>)>,
}

impl TokenDataset {
    /// Opens `split` of the dataset in `dir`. With `tokenizer`, refuses shards prepared with another
    /// tokenizer or whose dtype cannot hold its ids.
    pub fn open(dir: &Path, split: &str, tokenizer: Option<&TokenizerInfo>) -> Result<Self> {
        if let Some(m) = Mixture::read(dir)? {
            return Self::open_mixture(dir, m, split, tokenizer);
        }
        let index = DatasetIndex::read(dir)?;
        if let Some(tok) = tokenizer {
            ensure!(
                tok.sha256 == index.tokenizer_sha256,
                "{} was prepared with another tokenizer (sha256 {}), not the configured one (sha256 {}): prepare it again with this tokenizer",
                dir.display(),
                index.tokenizer_sha256,
                tok.sha256
            );
            ensure!(
                tok.vocab_size <= index.dtype.max_vocab(),
                "{}: the tokenizer has {} ids, more than dtype {:?} of the shards can hold",
                dir.display(),
                tok.vocab_size,
                index.dtype
            );
        }
        let names = index
            .splits
            .get(split)
            .with_context(|| format!("{} has no `{split}` split", dir.display()))?;
        let mut shards = Vec::new();
        let mut starts = vec![0u64];
        for name in names {
            let shard = Shard::open(dir, name)?;
            let h = &shard.header;
            ensure!(
                h.row_len == index.row_len
                    && h.dtype == index.dtype
                    && h.tokenizer_sha256 == index.tokenizer_sha256,
                "{}: header disagrees with {} (row_len {} vs {}, dtype {:?} vs {:?}, or tokenizer)",
                shard.path.display(),
                crate::shard::INDEX_FILE,
                h.row_len,
                index.row_len,
                h.dtype,
                index.dtype
            );
            starts.push(starts.last().copied().unwrap_or(0) + h.rows);
            shards.push(shard);
        }
        let ds = TokenDataset {
            index,
            split: split.to_string(),
            shards,
            starts,
            mixture: None,
        };
        ensure!(
            ds.rows() > 0,
            "{}: the `{split}` split is empty",
            dir.display()
        );
        Ok(ds)
    }

    /// The sources of a mixture, one after the other; every source must agree on block size,
    /// dtype and tokenizer.
    fn open_mixture(
        dir: &Path,
        m: Mixture,
        split: &str,
        tokenizer: Option<&TokenizerInfo>,
    ) -> Result<Self> {
        let mut sources = Vec::new();
        for d in &m.dirs {
            let ds = TokenDataset::open(d, split, tokenizer).with_context(|| {
                format!("source {} of the mixture {}", d.display(), dir.display())
            })?;
            ensure!(
                ds.mixture.is_none(),
                "{}: a mixture's source may not be a mixture",
                d.display()
            );
            sources.push(ds);
        }
        let first = &sources[0].index;
        for (d, s) in m.dirs.iter().zip(&sources) {
            ensure!(
                s.index.row_len == first.row_len
                    && s.index.dtype == first.dtype
                    && s.index.tokenizer_sha256 == first.tokenizer_sha256,
                "{}: block size, dtype or tokenizer differ from the mixture's first source {}",
                d.display(),
                m.dirs[0].display()
            );
        }
        let mut index = first.clone();
        index.documents = sources.iter().map(|s| s.index.documents).sum();
        index.tokens = sources.iter().map(|s| s.index.tokens).sum();
        let (mut shards, mut starts, mut firsts, mut counts) =
            (Vec::new(), vec![0u64], Vec::new(), Vec::new());
        for s in sources {
            let base = *starts.last().expect("starts");
            firsts.push(base);
            counts.push(s.rows());
            starts.extend(s.starts[1..].iter().map(|r| base + r));
            shards.extend(s.shards);
        }
        Ok(TokenDataset {
            index,
            split: split.to_string(),
            shards,
            starts,
            mixture: Some((m, firsts, counts)),
        })
    }

    /// The dataset row of sample `g` of a run with `seed`: a source's epoch permutation for a
    /// mixture, None for a plain dataset (whose loader permutes all rows).
    fn mixture_row(&self, seed: u64, g: u64) -> Option<u64> {
        let (m, firsts, counts) = self.mixture.as_ref()?;
        let (s, j) = m.sample(seed, g);
        let n = counts[s];
        let source_seed = seed.wrapping_add((s as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        Some(firsts[s] + Permutation::new(n, source_seed, j / n).apply(j % n))
    }

    pub fn rows(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }

    pub fn block_size(&self) -> usize {
        self.index.row_len - 1
    }

    /// Row `i` (global across shards) as token ids.
    pub fn row(&self, i: u64, out: &mut Vec<u32>) {
        let s = self.starts.partition_point(|&start| start <= i) - 1;
        self.shards[s].row(i - self.starts[s], out);
    }

    /// Identifies the sample order: a loader state only resumes on the same data.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for s in &self.shards {
            h.update(s.header.tokens_sha256.as_bytes());
        }
        if let Some((m, _, _)) = &self.mixture {
            for w in &m.slots {
                h.update(w.to_le_bytes());
            }
        }
        format!("{:x}", h.finalize())[..16].to_string()
    }
}

/// A target that takes no part in the loss (the model crate's `IGNORE`, which the trainer checks
/// it equals).
pub const IGNORE_TARGET: i64 = -100;

/// A batch of `rows` samples of `block` tokens, row-major: inputs are row[..B], targets row[1..].
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub inputs: Vec<i64>,
    pub targets: Vec<i64>,
    pub rows: usize,
    pub block: usize,
    /// Dataset row of each sample (for tests and debugging).
    pub row_ids: Vec<u64>,
    /// Puzzle identifier of each row (TRM's puzzle embedding); empty for text.
    pub puzzle_ids: Vec<i64>,
    /// Per-row positions and padding, where rows are padded (COCONUT's aligned rows); None when
    /// every row is `block` real tokens at positions 0, 1, ….
    pub padded: Option<Padded>,
}

/// Where a batch's rows are padded: position ids and which tokens are real, row-major like `inputs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Padded {
    pub positions: Vec<i64>,
    pub real: Vec<bool>,
}

/// Where the trainer's rows come from: token shards or puzzles. Both loaders are pure functions of
/// (seed, global sample), so their whole state is a [`LoaderState`].
pub trait Source {
    /// Rank `rank`'s `micro_batch` rows of the next global batch of `world × micro_batch`.
    fn next_batch(&mut self, rank: usize, world: usize, micro_batch: usize) -> Batch;
    fn state(&self) -> LoaderState;
    fn load_state(&mut self, s: &LoaderState) -> Result<()>;
    /// The epoch of the next batch, for sources whose training depends on it (COCONUT's stages);
    /// 0 for the others.
    fn epoch(&self) -> u64 {
        0
    }
    /// Some(epoch) when the next batch is the first of that epoch, for sources whose epochs are
    /// whole steps (COCONUT's optimizer resets); None otherwise.
    fn epoch_starts(&self) -> Option<u64> {
        None
    }
}

/// The checks every loader makes when it resumes: same format, same data, same seed.
pub fn check_resume(s: &LoaderState, digest: &str, seed: u64) -> Result<()> {
    ensure!(
        s.version == 1,
        "loader state version {} is unknown to this build",
        s.version
    );
    ensure!(
        s.data_digest == digest,
        "the checkpoint was trained on data {}, this run reads {digest}: the sample order would differ",
        s.data_digest,
    );
    ensure!(
        s.seed == seed,
        "the checkpoint's data seed is {}, this run's is {seed}",
        s.seed,
    );
    Ok(())
}

impl Batch {
    fn from_rows(ds: &TokenDataset, row_ids: Vec<u64>) -> Self {
        let block = ds.block_size();
        let mut inputs = Vec::with_capacity(row_ids.len() * block);
        let mut targets = Vec::with_capacity(row_ids.len() * block);
        let mut buf = Vec::with_capacity(block + 1);
        for &r in &row_ids {
            ds.row(r, &mut buf);
            inputs.extend(buf[..block].iter().map(|&t| t as i64));
            targets.extend(buf[1..].iter().map(|&t| t as i64));
        }
        Batch {
            inputs,
            targets,
            rows: row_ids.len(),
            block,
            row_ids,
            puzzle_ids: Vec::new(),
            padded: None,
        }
    }
}

/// The loader's checkpointable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub version: u32,
    pub data_digest: String,
    pub seed: u64,
    pub global_samples_consumed: u64,
}

/// Where a loader whose global sample g is a pure function of (seed, g) stands: the samples
/// consumed, and the data and seed a resume must find again. Every loader's whole state.
#[derive(Debug, Clone)]
pub struct Cursor {
    digest: String,
    seed: u64,
    pub consumed: u64,
}

impl Cursor {
    pub fn new(digest: String, seed: u64) -> Self {
        Cursor {
            digest,
            seed,
            consumed: 0,
        }
    }

    /// Rank `rank`'s `micro_batch` samples of the next global batch of `world × micro_batch`, then
    /// advances past the whole global batch. Every rank calls this with the same arguments but its
    /// own rank, so all counters stay equal.
    pub fn take(&mut self, rank: usize, world: usize, micro_batch: usize) -> std::ops::Range<u64> {
        assert!(
            rank < world && micro_batch > 0,
            "rank {rank} of {world}, micro batch {micro_batch}"
        );
        let first = self.consumed + (rank * micro_batch) as u64;
        self.consumed += (world * micro_batch) as u64;
        first..first + micro_batch as u64
    }

    pub fn state(&self) -> LoaderState {
        LoaderState {
            version: 1,
            data_digest: self.digest.clone(),
            seed: self.seed,
            global_samples_consumed: self.consumed,
        }
    }

    pub fn load_state(&mut self, s: &LoaderState) -> Result<()> {
        check_resume(s, &self.digest, self.seed)?;
        self.consumed = s.global_samples_consumed; // any world size may continue from here
        Ok(())
    }
}

/// Rank `rank`'s share of validation rows `ids`: every world-th chunk of `micro_batch`.
pub fn rank_chunks(
    ids: &[u64],
    micro_batch: usize,
    rank: usize,
    world: usize,
) -> impl Iterator<Item = &[u64]> {
    ids.chunks(micro_batch)
        .enumerate()
        .filter(move |(i, _)| i % world == rank)
        .map(|(_, c)| c)
}

/// Training loader over one split: an infinite sequence of epochs.
pub struct Loader<'a> {
    ds: &'a TokenDataset,
    seed: u64,
    cursor: Cursor,
}

impl<'a> Loader<'a> {
    pub fn new(ds: &'a TokenDataset, seed: u64) -> Self {
        Loader {
            ds,
            seed,
            cursor: Cursor::new(ds.digest(), seed),
        }
    }

    /// Dataset row of global sample `g`.
    pub fn row_of(&self, g: u64) -> u64 {
        if let Some(row) = self.ds.mixture_row(self.seed, g) {
            return row;
        }
        let n = self.ds.rows();
        Permutation::new(n, self.seed, g / n).apply(g % n)
    }

    /// Rank `rank`'s `micro_batch` samples of the next global batch (see [`Cursor::take`]).
    pub fn next_batch(&mut self, rank: usize, world: usize, micro_batch: usize) -> Batch {
        let ids = self
            .cursor
            .take(rank, world, micro_batch)
            .map(|g| self.row_of(g))
            .collect();
        Batch::from_rows(self.ds, ids)
    }

    pub fn epoch(&self) -> u64 {
        self.cursor.consumed / self.ds.rows()
    }

    pub fn state(&self) -> LoaderState {
        self.cursor.state()
    }

    pub fn load_state(&mut self, s: &LoaderState) -> Result<()> {
        self.cursor.load_state(s)
    }
}

impl Source for Loader<'_> {
    fn next_batch(&mut self, rank: usize, world: usize, micro_batch: usize) -> Batch {
        Loader::next_batch(self, rank, world, micro_batch)
    }
    fn state(&self) -> LoaderState {
        Loader::state(self)
    }
    fn load_state(&mut self, s: &LoaderState) -> Result<()> {
        Loader::load_state(self, s)
    }
}

/// Validation batches: the first `max_rows` rows of the split in order, the same at every evaluation,
/// rank `rank` of `world` taking every world-th batch.
pub fn val_batches(
    ds: &TokenDataset,
    micro_batch: usize,
    max_rows: u64,
    rank: usize,
    world: usize,
) -> Vec<Batch> {
    let n = ds.rows().min(max_rows);
    // A mixture's validation rows follow its schedule (seed 0), so every source is represented.
    let ids: Vec<u64> = (0..n).map(|i| ds.mixture_row(0, i).unwrap_or(i)).collect();
    rank_chunks(&ids, micro_batch, rank, world)
        .map(|c| Batch::from_rows(ds, c.to_vec()))
        .collect()
}
