//! Decoding behind a KV cache, with a per-token number of core iterations (reference §2.5).
//!
//! Each call to [`Decoder::step`] runs a chunk of new tokens (the prompt, then one token at a time)
//! through the prelude, up to `max_steps` core iterations with an optional exit check after each,
//! and the coda. Keys and values are cached per prelude layer, per (core iteration, core layer) and
//! per coda layer, as in the reference's `HuginnDynamicCache`; iteration i of a new token attends to
//! iteration i of the earlier ones.

use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

use crate::block::{linear, rms_norm, Attend, Kv};
use crate::exit::ExitCriterion;
use crate::huginn::{Block, Depth, Flow, Huginn, InitState, Iteration, Run, Weights};

/// How many iterations a chunk may run.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// The most iterations (the fixed depth when `exit` is `None`).
    pub max_steps: i64,
    /// Never exit before this many iterations.
    pub min_steps: i64,
    pub exit: Option<ExitCriterion>,
}

impl Budget {
    pub fn fixed(depth: i64) -> Self {
        Budget {
            max_steps: depth,
            min_steps: 0,
            exit: None,
        }
    }
}

/// The outcome of one chunk.
pub struct Chunk {
    /// [1, T, V], fp32.
    pub logits: Tensor,
    /// The final latent state, [1, T, d], fp32.
    pub state: Tensor,
    /// Core iterations the chunk ran.
    pub iterations: i64,
    /// The exit criterion's value after each iteration (empty without a criterion).
    pub exit_values: Vec<f64>,
}

/// Cached keys and values of the tokens decoded so far.
#[derive(Default)]
struct KvCache {
    prelude: Vec<Kv>,
    /// [iteration][core layer]. A token that exited after m iterations has its last iteration's keys
    /// and values in every deeper slot (the reference's `available-m4` lookup), so a later token that
    /// iterates longer attends to its final keys there.
    core: Vec<Vec<Kv>>,
    coda: Vec<Kv>,
    len: i64,
}

/// Appends a layer's new keys and values to its slot (creating the slot on the first chunk).
fn append(slots: &mut Vec<Kv>, layer: usize, new: Kv) {
    match slots.get_mut(layer) {
        Some(slot) => *slot = slot.cat(&new),
        None => slots.push(new),
    }
}

pub struct Decoder<'m> {
    model: &'m Huginn,
    w: Weights,
    cache: KvCache,
}

impl<'m> Decoder<'m> {
    pub fn new(model: &'m Huginn) -> Self {
        Decoder {
            model,
            w: model.weights(),
            cache: KvCache::default(),
        }
    }

    /// Tokens decoded so far.
    pub fn len(&self) -> i64 {
        self.cache.len
    }

    pub fn is_empty(&self) -> bool {
        self.cache.len == 0
    }

    /// Keeps the first `len` tokens of the cache (TiDAR drops the drafts it did not accept).
    pub fn truncate(&mut self, len: i64) {
        let c = &mut self.cache;
        if len >= c.len {
            return;
        }
        let cut = |slots: &mut Vec<Kv>| slots.iter_mut().for_each(|kv| *kv = kv.prefix(len));
        cut(&mut c.prelude);
        c.core.iter_mut().for_each(cut);
        cut(&mut c.coda);
        c.len = len;
    }

    /// Layer b on new tokens x after the cached ones (`past`, the same length for every layer).
    fn block(
        &self,
        b: &Block,
        x: &Tensor,
        attend: &Attend,
        past: Option<&Kv>,
    ) -> Result<(Tensor, Kv)> {
        self.model.block_kv(b, x, attend, past)
    }

    /// s [1, T, d] → (logits [1, T, V] fp32, the coda's new keys and values, not yet cached).
    fn coda(&self, s: &Tensor, attend: &Attend) -> Result<(Tensor, Vec<Kv>)> {
        let eps = self.model.config().norm_eps;
        let mut x = self.model.coda_input(&self.w, s);
        let mut kvs = Vec::with_capacity(self.w.coda.len());
        for (j, b) in self.w.coda.iter().enumerate() {
            let (y, kv) = self.block(b, &x, attend, self.cache.coda.get(j))?;
            kvs.push(kv);
            x = y;
        }
        let x = rms_norm(&x, &self.w.ln_f, eps);
        Ok((linear(&x, &self.w.head).to_kind(Kind::Float), kvs))
    }

    /// Runs new tokens `ids` [1, T] from the initial state `init`. After an error the decoder's cache
    /// is incomplete; start a new one.
    pub fn step(&mut self, ids: &Tensor, init: &InitState, budget: &Budget) -> Result<Chunk> {
        let attend = Attend::causal_from(self.cache.len);
        self.step_with(ids, &attend, init, budget)
    }

    /// [`Decoder::step`] with explicit positions and mask: the same at every layer of the prelude,
    /// of every core iteration and of the coda.
    pub fn step_with(
        &mut self,
        ids: &Tensor,
        attend: &Attend,
        init: &InitState,
        budget: &Budget,
    ) -> Result<Chunk> {
        tch::no_grad(|| self.step_inner(ids, attend, init, budget))
    }

    fn step_inner(
        &mut self,
        ids: &Tensor,
        attend: &Attend,
        init: &InitState,
        budget: &Budget,
    ) -> Result<Chunk> {
        let cfg = self.model.config();
        let (b, t) = ids.size2()?;
        ensure!(
            b == 1,
            "the decoder runs one sequence at a time, got a batch of {b}"
        );
        ensure!(
            budget.max_steps >= 1,
            "decoding needs at least one core iteration"
        );
        // Explicit positions are checked against the rotary cache instead.
        ensure!(
            !matches!(attend.positions, crate::block::Positions::From(_))
                || self.cache.len + t <= cfg.block_size,
            "{} tokens would exceed model.block_size = {}",
            self.cache.len + t,
            cfg.block_size
        );

        // Prelude: e [1, T, d].
        let mut x = Tensor::embedding(&self.w.wte, ids, -1, false, false) * cfg.embed_scale();
        for (j, b) in self.w.prelude.iter().enumerate() {
            let (y, kv) = self.block(b, &x, attend, self.cache.prelude.get(j))?;
            append(&mut self.cache.prelude, j, kv);
            x = y;
        }
        let e = x;

        // Core: the model's recurrence, each iteration's layers behind that iteration's cache slot,
        // until the budget or the exit criterion says stop.
        let s0 = self.model.initial_state(&e, init)?;
        let mut tracker = budget.exit.map(|c| c.tracker(&s0));
        let old = std::mem::take(&mut self.cache.core);
        let mut fresh: Vec<Vec<Kv>> = Vec::with_capacity(old.len());
        let mut newest: Vec<Kv> = Vec::new();
        let mut exit_values = Vec::new();
        let mut peeked = None;
        let mut steps = 0;
        let mut blocks = |i: i64, j: usize, b: &Block, x: &Tensor| -> Result<Tensor> {
            // Past tokens that never reached this iteration are represented by their deepest one.
            let past = old.get(i as usize).or(old.last());
            if j == 0 {
                newest.clear();
                fresh.push(Vec::with_capacity(self.w.core.len()));
            }
            let (y, kv) = self.block(b, x, attend, past.map(|p| &p[j]))?;
            let slot = fresh.last_mut().expect("pushed at layer 0");
            slot.push(past.map_or_else(|| kv.shallow_clone(), |p| p[j].cat(&kv)));
            newest.push(kv);
            Ok(y)
        };
        let mut observe = |it: &Iteration| -> Result<Flow> {
            steps = it.index + 1;
            let Some(tracker) = tracker.as_mut() else {
                return Ok(Flow::Continue);
            };
            let peek = match budget.exit.is_some_and(|c| c.needs_logits()) {
                true => Some(self.coda(it.output, attend)?),
                false => None,
            };
            let last = peek.as_ref().map(|(l, _)| l.get(0).get(t - 1));
            let check = tracker.observe(it.output, last.as_ref())?;
            exit_values.push(check.value);
            peeked = peek;
            Ok(match check.exit && steps >= budget.min_steps {
                true => Flow::Stop,
                false => Flow::Continue,
            })
        };
        let run = Run::new(&self.w, &e, Depth::eval(budget.max_steps));
        let s = self.model.recur(&run, s0, &mut blocks, &mut observe)?;
        for deeper in old.iter().skip(steps as usize) {
            fresh.push(deeper.iter().zip(&newest).map(|(p, n)| p.cat(n)).collect());
        }
        self.cache.core = fresh;

        // Coda on the final state (already computed if the last check peeked at it).
        let (logits, kvs) = match peeked {
            Some(done) => done,
            None => self.coda(&s, attend)?,
        };
        for (j, kv) in kvs.into_iter().enumerate() {
            append(&mut self.cache.coda, j, kv);
        }
        self.cache.len += t;
        Ok(Chunk {
            logits,
            state: s,
            iterations: steps,
            exit_values,
        })
    }
}

/// Huginn behind its KV cache at a fixed depth, as TiDAR's decoder drives it: every chunk's
/// recurrence starts from `start` and runs `depth` iterations, under the chunk's mask at every
/// layer and iteration.
pub struct HuginnLm<'m> {
    pub decoder: Decoder<'m>,
    pub depth: i64,
    pub start: Start,
}

impl crate::tidar::CachedLm for HuginnLm<'_> {
    fn block_size(&self) -> i64 {
        self.decoder.model.config().block_size
    }

    fn len(&self) -> i64 {
        self.decoder.len()
    }

    fn extend(&mut self, ids: &[i64], positions: &[i64], mask: &[Vec<bool>]) -> Result<Tensor> {
        let device = self.decoder.model.device();
        let x = Tensor::from_slice(ids).view([1, -1]).to_device(device);
        let attend = crate::tidar::step_attend(positions, mask, device);
        let budget = Budget::fixed(self.depth);
        let chunk = self
            .decoder
            .step_with(&x, &attend, &self.start.state(), &budget)?;
        Ok(chunk.logits.get(0))
    }

    fn truncate(&mut self, len: i64) {
        self.decoder.truncate(len);
    }
}

/// Temperature and nucleus sampling; temperature 0 is greedy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f64,
    pub top_p: f64,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_p: 1.0,
    };

    /// logits [V] → a token id, drawn from torch's RNG.
    pub fn sample(&self, logits: &Tensor) -> Result<i64> {
        ensure!(
            logits.dim() == 1,
            "sampling expects logits [V], got {:?}",
            logits.size()
        );
        if self.temperature <= 0.0 {
            return Ok(logits.argmax(-1, false).int64_value(&[]));
        }
        self.draw(&self.probs(logits)?)
    }

    /// The distribution [V] (f64) that [`Sampling::sample`] draws from at a temperature > 0.
    /// Nucleus: the smallest set of most likely tokens whose mass reaches top_p, the token that
    /// crosses it included (Holtzman et al., and Hugging Face's TopPLogitsWarper; the reference's
    /// sampler drops that token), renormalised. The first is always kept.
    pub fn probs(&self, logits: &Tensor) -> Result<Tensor> {
        ensure!(
            self.temperature > 0.0,
            "a greedy sampler has no distribution"
        );
        // In f64 and shifted by the maximum, so that a tiny temperature cannot overflow.
        let l = logits.to_kind(Kind::Double);
        let probs = ((&l - l.max()) / self.temperature).softmax(-1, Kind::Double);
        if self.top_p >= 1.0 {
            return Ok(probs);
        }
        let (sorted, order) = probs.sort(-1, true);
        let before = sorted.cumsum(-1, Kind::Double) - &sorted;
        let keep_sorted = before.lt(self.top_p).to_kind(Kind::Double);
        let keep = keep_sorted.zeros_like().scatter(-1, &order, &keep_sorted);
        let kept = probs * keep;
        Ok(&kept / kept.sum(Kind::Double))
    }

    /// A token id drawn from the distribution `p` [V].
    pub fn draw(&self, p: &Tensor) -> Result<i64> {
        let token = p
            .f_multinomial(1, false)
            .map_err(|e| anyhow::anyhow!("sampling failed (non-finite logits?): {e}"))?;
        Ok(token.int64_value(&[0]))
    }
}

/// Where each generated token's recurrence starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The model config's `state_init` (random like-init for Huginn).
    Config,
    Zero,
    Random,
}

impl Start {
    pub fn state(self) -> InitState {
        match self {
            Start::Config => InitState::Config,
            Start::Zero => InitState::Zero,
            Start::Random => InitState::Random,
        }
    }
}

pub struct GenerateOptions {
    pub max_tokens: usize,
    pub budget: Budget,
    pub sampling: Sampling,
    pub start: Start,
    /// Continuous compute: each new token starts from the previous token's final state.
    pub continuous: bool,
    /// Stop after this token (end of text).
    pub stop_token: Option<i64>,
}

pub struct Generation {
    pub tokens: Vec<i64>,
    /// Core iterations that produced each generated token (the first: the prompt's).
    pub iterations: Vec<i64>,
}

impl Generation {
    pub fn mean_iterations(&self) -> f64 {
        let n = self.iterations.len().max(1) as f64;
        self.iterations.iter().sum::<i64>() as f64 / n
    }
}

/// Generates up to `max_tokens` after `prompt` behind the KV cache.
pub fn generate(model: &Huginn, prompt: &[i64], opts: &GenerateOptions) -> Result<Generation> {
    ensure!(!prompt.is_empty(), "the prompt has no tokens");
    let device = model.device();
    let ids = |t: &[i64]| Tensor::from_slice(t).view([1, -1]).to_device(device);
    let mut dec = Decoder::new(model);
    let mut out = Generation {
        tokens: Vec::new(),
        iterations: Vec::new(),
    };
    let mut chunk = dec.step(&ids(prompt), &opts.start.state(), &opts.budget)?;
    loop {
        let t = chunk.logits.size()[1];
        let next = opts.sampling.sample(&chunk.logits.get(0).get(t - 1))?;
        out.tokens.push(next);
        out.iterations.push(chunk.iterations);
        let full = dec.len() >= model.config().block_size;
        if out.tokens.len() >= opts.max_tokens || Some(next) == opts.stop_token || full {
            return Ok(out);
        }
        let start = match opts.continuous {
            true => InitState::Given(chunk.state.narrow(1, t - 1, 1)),
            false => opts.start.state(),
        };
        chunk = dec.step(&ids(&[next]), &start, &opts.budget)?;
    }
}

/// Greedy decoding at a fixed depth without a cache: every token recomputes the whole sequence from
/// a zero state. Slow; the reference that cached decoding must match.
pub fn generate_uncached(
    model: &Huginn,
    prompt: &[i64],
    max_tokens: usize,
    depth: i64,
    stop_token: Option<i64>,
) -> Result<Vec<i64>> {
    ensure!(!prompt.is_empty(), "the prompt has no tokens");
    let mut seq = prompt.to_vec();
    let mut out = Vec::new();
    loop {
        let ids = Tensor::from_slice(&seq)
            .view([1, -1])
            .to_device(model.device());
        let f = tch::no_grad(|| model.forward(&ids, crate::Depth::eval(depth), &InitState::Zero))?;
        let last = f.logits.get(0).get(seq.len() as i64 - 1);
        let next = last.argmax(-1, false).int64_value(&[]);
        out.push(next);
        let full = seq.len() as i64 >= model.config().block_size;
        if out.len() >= max_tokens || Some(next) == stop_token || full {
            return Ok(out);
        }
        seq.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HuginnConfig, Precision};
    use tch::Device;

    /// One chunk as the plain reference keeps it: keys and values per prelude layer, per
    /// [iteration][core layer] for the iterations it ran, and per coda layer.
    struct Plain {
        prelude: Vec<Kv>,
        core: Vec<Vec<Kv>>,
        coda: Vec<Kv>,
    }

    fn cat(parts: Vec<&Kv>) -> Option<Kv> {
        (!parts.is_empty()).then(|| Kv {
            k: Tensor::cat(&parts.iter().map(|p| &p.k).collect::<Vec<_>>(), 2),
            v: Tensor::cat(&parts.iter().map(|p| &p.v).collect::<Vec<_>>(), 2),
        })
    }

    /// The cache rule written out directly: at core iteration i an earlier chunk that ran d
    /// iterations is seen through its iteration min(i, d − 1).
    fn plain_step(
        m: &Huginn,
        w: &Weights,
        done: &mut Vec<Plain>,
        ids: &Tensor,
        depth: i64,
    ) -> Tensor {
        let cfg = m.config();
        let blk = |b: &Block, x: &Tensor, past: Option<Kv>| {
            let attend = Attend::causal_from(past.as_ref().map_or(0, Kv::len));
            m.block_kv(b, x, &attend, past.as_ref()).unwrap()
        };
        let mut x = Tensor::embedding(&w.wte, ids, -1, false, false) * cfg.embed_scale();
        let mut prelude = Vec::new();
        for (j, b) in w.prelude.iter().enumerate() {
            let (y, kv) = blk(b, &x, cat(done.iter().map(|c| &c.prelude[j]).collect()));
            prelude.push(kv);
            x = y;
        }
        let e = x;
        let mut s = e.zeros_like();
        let mut core = Vec::new();
        for i in 0..depth as usize {
            let mut x = linear(&Tensor::cat(&[&s, &e], -1), &w.adapter);
            let mut layers = Vec::new();
            for (j, b) in w.core.iter().enumerate() {
                let past = done
                    .iter()
                    .map(|c| &c.core[i.min(c.core.len() - 1)][j])
                    .collect();
                let (y, kv) = blk(b, &x, cat(past));
                layers.push(kv);
                x = y;
            }
            core.push(layers);
            s = x;
        }
        let mut x = rms_norm(&s, &w.ln_f, cfg.norm_eps);
        let mut coda = Vec::new();
        for (j, b) in w.coda.iter().enumerate() {
            let (y, kv) = blk(b, &x, cat(done.iter().map(|c| &c.coda[j]).collect()));
            coda.push(kv);
            x = y;
        }
        done.push(Plain {
            prelude,
            core,
            coda,
        });
        linear(&rms_norm(&x, &w.ln_f, cfg.norm_eps), &w.head)
    }

    #[test]
    fn tokens_of_different_depths_see_each_others_last_iteration() {
        tch::set_num_threads(1);
        let m = Huginn::new(
            HuginnConfig::preset("micro").unwrap(),
            Device::Cpu,
            Precision::F32,
        )
        .unwrap();
        m.init(5);
        let w = m.weights();
        let mut dec = Decoder::new(&m);
        let mut done = Vec::new();
        // A prompt at depth 2; a token deeper than all before it; a shallower one (the deeper slots
        // are filled for it); one in between.
        for (ids, depth) in [
            (vec![5, 9, 200], 2),
            (vec![17], 4),
            (vec![3], 1),
            (vec![77], 3),
        ] {
            let t = Tensor::from_slice(&ids).view([1, -1]);
            let got = dec
                .step(&t, &InitState::Zero, &Budget::fixed(depth))
                .unwrap();
            assert_eq!(got.iterations, depth);
            let want = tch::no_grad(|| plain_step(&m, &w, &mut done, &t, depth));
            let diff = (&got.logits - &want).abs().max().double_value(&[]);
            assert!(
                diff < 1e-5,
                "chunk at depth {depth}: logits differ by {diff}"
            );
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus_and_temperature_zero_is_greedy() {
        tch::manual_seed(0);
        let logits = Tensor::from_slice(&[0.0f32, 1.0, 5.0, 4.0]);
        // p ≈ (.005, .013, .72, .26): top_p 0.5 keeps only token 2; 0.9 keeps 2 and 3.
        let nucleus = |top_p| Sampling {
            temperature: 1.0,
            top_p,
        };
        let draws = |s: Sampling, n: usize| -> Vec<i64> {
            (0..n).map(|_| s.sample(&logits).unwrap()).collect()
        };
        assert!(draws(nucleus(0.5), 200).iter().all(|&t| t == 2));
        let two = draws(nucleus(0.9), 200);
        assert!(
            two.iter().all(|&t| t == 2 || t == 3) && two.contains(&3),
            "{two:?}"
        );
        // Tokens 0 and 1 hold 1.8 % together: 2000 draws miss them with probability 1e-16.
        assert!(draws(nucleus(1.0), 2000).iter().any(|&t| t < 2));
        assert!(draws(Sampling::GREEDY, 20).iter().all(|&t| t == 2));
        // A vanishing temperature is greedy too, not a NaN.
        let cold = Sampling {
            temperature: 1e-30,
            top_p: 1.0,
        };
        assert!(draws(cold, 20).iter().all(|&t| t == 2));
    }
}
