//! COCONUT's continuous thoughts (Hao et al. 2024; `coconut-reference.md` §1): every latent column's
//! input embedding is the model's own final hidden state (the LM head's input) at the column before
//! it. The forward runs in n + 1 passes behind one KV cache that keeps its autograd history:
//!   pass 0: columns [0, f), f = the first latent column (shared by every row after alignment);
//!   pass i (1 ≤ i ≤ n): column f + i − 1, fed h_{f+i−2} where that row has a latent;
//!   pass n + 1: the rest.
//! Each column is computed once, so the FLOPs are one plain pass; the price is n + 1 sequential
//! passes, and backward runs through every thought.

use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

use crate::block::{Attend, Mask, Positions};

/// A latent id no token has (ids are never negative): the multi-pass forward then is one plain pass.
pub const NO_LATENT: i64 = -1;

/// A causal LM that can run a chunk of embeddings behind its own cache and return the hidden state
/// its head reads (after the final norm).
pub trait LatentLm {
    type Cache;
    fn new_cache(&self) -> Self::Cache;
    /// ids [B, T] → input embeddings [B, T, d].
    fn embed(&self, ids: &Tensor) -> Result<Tensor>;
    /// Runs `x` [B, t, d] after the cached columns: `attend` holds the chunk's positions [B, t],
    /// the causal mask and the key padding of every column so far [B, cached + t]. Returns the
    /// hidden state [B, t, d] and extends the cache (with autograd history when grad is on).
    fn pass(&self, cache: &mut Self::Cache, x: &Tensor, attend: &Attend) -> Result<Tensor>;
}

/// Where a batch's thoughts are: every row's latents are one run starting at column `first`.
#[derive(Debug)]
pub struct Latents {
    pub first: i64,
    /// [B, n] bool: row b has its i-th latent at column first + i.
    pub present: Tensor,
}

impl Latents {
    /// Finds the latent columns of ids [B, T]; None if there are none. Refuses rows whose latents
    /// are not one run starting at the shared column (see `muninn_data::coconut::align`).
    pub fn find(ids: &Tensor, latent_id: i64) -> Result<Option<Latents>> {
        let (b, _) = ids.size2()?;
        let is = ids.eq(latent_id);
        let counts =
            Vec::<i64>::try_from(is.sum_dim_intlist([1i64].as_slice(), false, Kind::Int64))?;
        let n = counts.iter().copied().max().unwrap_or(0);
        if n == 0 {
            return Ok(None);
        }
        let firsts = Vec::<i64>::try_from(is.to_kind(Kind::Int64).argmax(1, false))?;
        let first = (0..b as usize)
            .filter(|&r| counts[r] > 0)
            .map(|r| firsts[r])
            .max()
            .unwrap_or(0);
        let cols = Tensor::arange(n, (Kind::Int64, ids.device()));
        let present = cols.unsqueeze(0).lt_tensor(
            &Tensor::from_slice(&counts)
                .to_device(ids.device())
                .unsqueeze(1),
        );
        for r in 0..b as usize {
            if counts[r] > 0 {
                let run = is.get(r as i64).narrow(0, first, counts[r]);
                ensure!(
                    firsts[r] == first && bool::try_from(run.all())?,
                    "row {r}: its latents are not one run starting at column {first}; align the batch so first latents share a column"
                );
            }
        }
        Ok(Some(Latents { first, present }))
    }
}

/// The columns [from, to) of a batch: positions and the key padding of every column before `to`.
fn chunk_attend(positions: &Tensor, real: &Tensor, from: i64, to: i64) -> Attend {
    Attend {
        positions: Positions::Ids(positions.narrow(1, from, to - from)),
        mask: Mask::Causal,
        key_padding: Some(real.narrow(1, 0, to)),
    }
}

/// What the multi-pass forward produced.
pub struct Thought {
    /// [B, T, d]: the hidden state of every column.
    pub hidden: Tensor,
    /// The thoughts fed in, one [B, d] per latent column (rows without that latent hold whatever
    /// their embedding would have been replaced by, unused).
    pub thoughts: Vec<Tensor>,
}

/// COCONUT's forward over ids [B, T] with per-row positions [B, T] and key padding `real` [B, T]:
/// the passes of the module comment, the hidden state written into the latent columns out of place.
pub fn forward<M: LatentLm>(
    lm: &M,
    ids: &Tensor,
    positions: &Tensor,
    real: &Tensor,
    latent_id: i64,
) -> Result<Thought> {
    forward_into(lm, &mut lm.new_cache(), ids, positions, real, latent_id)
}

/// [`forward`] into a given (empty) cache, which then holds every column: generation goes on
/// from it.
pub fn forward_into<M: LatentLm>(
    lm: &M,
    cache: &mut M::Cache,
    ids: &Tensor,
    positions: &Tensor,
    real: &Tensor,
    latent_id: i64,
) -> Result<Thought> {
    let (_, t) = ids.size2()?;
    let e = lm.embed(ids)?;
    let Some(lat) = Latents::find(ids, latent_id)? else {
        let hidden = lm.pass(cache, &e, &chunk_attend(positions, real, 0, t))?;
        return Ok(Thought {
            hidden,
            thoughts: Vec::new(),
        });
    };
    let (f, n) = (lat.first, lat.present.size()[1]);
    ensure!(
        f >= 1,
        "a latent in column 0 has no hidden state before it to take"
    );
    let mut parts = vec![lm.pass(
        cache,
        &e.narrow(1, 0, f),
        &chunk_attend(positions, real, 0, f),
    )?];
    let mut thoughts = Vec::with_capacity(n as usize);
    for i in 0..n {
        let col = f + i;
        let prev = parts.last().expect("pass 0 ran").select(1, -1); // [B, d]: h at col − 1
        let here = lat.present.select(1, i).unsqueeze(-1); // [B, 1]
        let x = prev.where_self(&here, &e.select(1, col)).unsqueeze(1);
        thoughts.push(prev);
        parts.push(lm.pass(cache, &x, &chunk_attend(positions, real, col, col + 1))?);
    }
    if f + n < t {
        let rest = e.narrow(1, f + n, t - f - n);
        parts.push(lm.pass(cache, &rest, &chunk_attend(positions, real, f + n, t))?);
    }
    Ok(Thought {
        hidden: Tensor::cat(&parts, 1),
        thoughts,
    })
}

/// Greedy decoding after prompts that may hold thoughts (question [<start>] <latent>×K [<end>]),
/// a batch at a time: the prompts are left-padded to end in one column (so rows must share K, or
/// hold none), the thoughts filled by [`forward_into`], then one column per step behind the cache
/// until every row has produced `stop` or `max_new` tokens, or the longest row fills the model's
/// `context` (its block_size: positions past it have no rotary angles). `head` maps hidden states
/// [B, d] to logits [B, V]. Returns each row's new tokens, `stop` included.
pub fn generate<M: LatentLm>(
    lm: &M,
    head: &dyn Fn(&Tensor) -> Tensor,
    prompts: &[Vec<i64>],
    (latent_id, pad): (i64, i64),
    (max_new, context): (usize, usize),
    stop: i64,
    device: tch::Device,
) -> Result<Vec<Vec<i64>>> {
    let b = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    ensure!(b > 0 && width > 0, "nothing to generate from");
    ensure!(
        width <= context,
        "a prompt of {width} tokens is longer than the model's block_size {context}"
    );
    // The last token is produced without being fed back: `context + 1 - width` fit.
    let max_new = max_new.min(context + 1 - width);
    let mut ids = Vec::with_capacity(b * width);
    let (mut pos, mut real) = (Vec::with_capacity(b * width), Vec::with_capacity(b * width));
    for p in prompts {
        let lead = width - p.len();
        ids.extend(std::iter::repeat_n(pad, lead).chain(p.iter().copied()));
        pos.extend(std::iter::repeat_n(0, lead).chain(0..p.len() as i64));
        real.extend(std::iter::repeat_n(false, lead).chain(std::iter::repeat_n(true, p.len())));
    }
    let shape = [b as i64, width as i64];
    let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
    let mut real = Tensor::from_slice(&real).view(shape).to_device(device);
    let positions = Tensor::from_slice(&pos).view(shape).to_device(device);
    tch::no_grad(|| {
        let mut cache = lm.new_cache();
        let out = forward_into(lm, &mut cache, &ids, &positions, &real, latent_id)?;
        let first = positions.select(1, -1) + 1; // [B]: where each row's new tokens start
        let mut last = out.hidden.select(1, -1);
        let mut new: Vec<Vec<i64>> = vec![Vec::new(); b];
        let mut done = vec![false; b];
        for step in 0..max_new {
            let tokens = Vec::<i64>::try_from(head(&last).argmax(-1, false))?;
            for (r, &t) in tokens.iter().enumerate() {
                if !done[r] {
                    new[r].push(t);
                    done[r] = t == stop;
                }
            }
            // The last token is never fed back (finished rows stop growing, so their lengths do not
            // tell when that is).
            if done.iter().all(|&d| d) || step + 1 == max_new {
                break;
            }
            let x = lm.embed(
                &Tensor::from_slice(&tokens)
                    .view([b as i64, 1])
                    .to_device(device),
            )?;
            real = Tensor::cat(
                &[&real, &Tensor::ones([b as i64, 1], (Kind::Bool, device))],
                1,
            );
            let attend = Attend {
                positions: Positions::Ids((&first + step as i64).unsqueeze(1)),
                mask: Mask::Causal,
                key_padding: Some(real.shallow_clone()),
            };
            last = lm.pass(&mut cache, &x, &attend)?.select(1, 0);
        }
        Ok(new)
    })
}

/// The same function without a cache: for each latent column a full forward over every column
/// before it, then one over all. The test oracle of [`forward`].
pub fn recompute<M: LatentLm>(
    lm: &M,
    ids: &Tensor,
    positions: &Tensor,
    real: &Tensor,
    latent_id: i64,
) -> Result<Tensor> {
    let (_, t) = ids.size2()?;
    let mut e = lm.embed(ids)?;
    if let Some(lat) = Latents::find(ids, latent_id)? {
        for i in 0..lat.present.size()[1] {
            let col = lat.first + i;
            let h = lm.pass(
                &mut lm.new_cache(),
                &e.narrow(1, 0, col),
                &chunk_attend(positions, real, 0, col),
            )?;
            let here = lat.present.select(1, i).unsqueeze(-1);
            let x = h.select(1, -1).where_self(&here, &e.select(1, col));
            // Out of place: the embeddings of the earlier passes stay as they were.
            let (b, d) = x.size2()?;
            let mut cols = vec![e.narrow(1, 0, col), x.view([b, 1, d])];
            if col + 1 < t {
                cols.push(e.narrow(1, col + 1, t - col - 1));
            }
            e = Tensor::cat(&cols, 1);
        }
    }
    lm.pass(
        &mut lm.new_cache(),
        &e,
        &chunk_attend(positions, real, 0, t),
    )
}

/// COCONUT as a family's objective: the latent id, and the thought and embedding norms summed on
/// the device until they are logged (thoughts are known to be far larger than token embeddings,
/// `coconut-reference.md` §7; nothing rescales them).
pub struct Coconut {
    /// The latent token's id; None when the arm treats it as an ordinary learned token
    /// (pause-as-thought).
    pub latent: Option<i64>,
    /// Huginn: the core iterations of every pass (unused by gpt).
    pub depth: crate::huginn::Depth,
    /// Σ‖thought‖, thoughts, Σ‖token embedding‖ (of the real non-latent inputs), tokens, [4] f64.
    stats: std::cell::RefCell<Option<Tensor>>,
}

impl Coconut {
    pub fn new(latent: Option<i64>, depth: crate::huginn::Depth) -> Self {
        Coconut {
            latent,
            depth,
            stats: Default::default(),
        }
    }

    /// The multi-pass forward of a micro-batch (which must carry its positions and padding);
    /// training passes (`record`) add to the logged norms, validation passes do not.
    pub fn forward<M: LatentLm>(
        &self,
        lm: &M,
        batch: &crate::family::MicroBatch,
        record: bool,
    ) -> Result<Thought> {
        let Some(p) = &batch.padded else {
            anyhow::bail!("COCONUT needs aligned rows with positions and padding (a QA dataset)");
        };
        let out = forward(lm, batch.inputs, p.positions, p.real, self.latent_id())?;
        if record {
            tch::no_grad(|| self.record(lm, batch.inputs, p.real, &out))?;
        }
        Ok(out)
    }

    /// The id the multi-pass forward fills with thoughts: none, if the arm has no continuous ones.
    pub fn latent_id(&self) -> i64 {
        self.latent.unwrap_or(NO_LATENT)
    }

    fn record<M: LatentLm>(
        &self,
        lm: &M,
        ids: &Tensor,
        real: &Tensor,
        out: &Thought,
    ) -> Result<()> {
        let norm = |t: &Tensor| t.norm_scalaropt_dim(2.0, [-1], false).to_kind(Kind::Double);
        let lat = Latents::find(ids, self.latent_id())?;
        let (mut thought_sum, mut thoughts) =
            (Tensor::zeros([], (Kind::Double, ids.device())), 0i64);
        if let Some(lat) = &lat {
            for (i, t) in out.thoughts.iter().enumerate() {
                let here = lat.present.select(1, i as i64);
                thought_sum += (norm(t) * here.to_kind(Kind::Double)).sum(Kind::Double);
                thoughts += i64::try_from(here.sum(Kind::Int64))?;
            }
        }
        let tokens = real.logical_and(&ids.ne(self.latent_id()));
        let e = norm(&lm.embed(ids)?) * tokens.to_kind(Kind::Double);
        let sums = Tensor::stack(
            &[
                thought_sum,
                Tensor::from(thoughts as f64).to_device(ids.device()),
                e.sum(Kind::Double),
                tokens.sum(Kind::Double),
            ],
            0,
        );
        let mut st = self.stats.borrow_mut();
        *st = Some(match st.take() {
            Some(acc) => acc + sums,
            None => sums,
        });
        Ok(())
    }

    /// `thought_norm` and `embed_norm` (mean L2 norms since the last log line).
    pub fn fields(&self) -> crate::family::Fields {
        let v: Vec<f64> = match self.stats.borrow_mut().take() {
            Some(t) => Vec::try_from(t.to_device(tch::Device::Cpu)).unwrap_or_default(),
            None => Vec::new(),
        };
        let (t, e) = match v.as_slice() {
            [t, nt, e, ne] => ((*nt > 0.0).then(|| t / nt), (*ne > 0.0).then(|| e / ne)),
            _ => (None, None),
        };
        vec![
            ("thought_norm", serde_json::json!(t)),
            ("embed_norm", serde_json::json!(e)),
        ]
    }
}
