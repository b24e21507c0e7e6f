//! TiDAR on real GPT and Huginn models: the clean half is unaffected by the masked half, the loss
//! is the weighted sum of its two halves, and the decoder is exact (β = 1 greedy equals plain greedy
//! AR) and cache-equivalent (the KV-cached decoder equals one that re-runs the whole prefix).

use muninn_model::decode::{self, Budget, Decoder, GenerateOptions, HuginnLm, Sampling, Start};
use muninn_model::gpt_family::GptFamily;
use muninn_model::tidar::{self, CachedLm, Recompute, Tidar, TidarConfig, TidarOptions};
use muninn_model::{
    cross_entropy, Attend, Depth, Family, Gpt, GptConfig, GradEvent, Huginn, HuginnConfig,
    InitState, Input, MicroBatch, Precision,
};
use tch::{Device, Kind, Tensor};

const MASK: i64 = 255;

fn gpt() -> Gpt {
    tch::set_num_threads(1);
    let mut cfg = GptConfig::preset("gpt-micro").unwrap();
    cfg.block_size = 256;
    let m = Gpt::new(cfg, Device::Cpu, Precision::F32).unwrap();
    m.init(3);
    m
}

fn huginn() -> Huginn {
    tch::set_num_threads(1);
    let mut cfg = HuginnConfig::preset("micro").unwrap();
    cfg.block_size = 256;
    let m = Huginn::new(cfg, Device::Cpu, Precision::F32).unwrap();
    m.init(3);
    m
}

fn tidar(block: i64) -> Tidar {
    Tidar::new(TidarConfig {
        block,
        alpha: 1.0,
        mask_id: MASK,
    })
}

fn ids(b: i64, t: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randint(250, [b, t], (Kind::Int64, Device::Cpu))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn the_clean_half_does_not_see_the_masked_half() {
    let (x, s) = (ids(2, 16, 1), 16);
    let t = tidar(4);
    let tb = t.batch(&x, &x, 1.0).unwrap();
    let g = gpt();
    let causal = tch::no_grad(|| g.forward(&x)).unwrap().logits;
    let both = tch::no_grad(|| g.forward_with(Input::Ids(&tb.ids), &tb.attend))
        .unwrap()
        .logits;
    let d = max_diff(&both.narrow(1, 0, s), &causal);
    assert!(d < 1e-5, "gpt: clean-half logits differ by {d}");
    // The masked half does depend on the clean tokens before its block.
    assert!(max_diff(&both.narrow(1, s, s), &causal) > 1e-3);

    let h = huginn();
    let run = |input: Input, attend: &Attend| {
        tch::no_grad(|| h.forward_with(input, attend, Depth::eval(3), &InitState::Zero))
            .unwrap()
            .logits
    };
    let causal = run(Input::Ids(&x), &Attend::causal());
    let both = run(Input::Ids(&tb.ids), &tb.attend);
    let d = max_diff(&both.narrow(1, 0, s), &causal);
    assert!(d < 1e-5, "huginn: clean-half logits differ by {d}");
}

/// The family's step: L = (α·mean CE_clean + mean CE_mask)/(1 + α) at scale 1/count, with the
/// gradient autograd gives through the plain forward.
#[test]
fn the_loss_weighs_both_halves_and_its_gradient_is_autograds() {
    // A window of S + 1 tokens: inputs and next tokens, as the loader makes them.
    let w = ids(2, 17, 4);
    let (x, y) = (w.narrow(1, 0, 16), w.narrow(1, 1, 16));
    let alpha = 0.5;
    let fam = GptFamily {
        model: gpt(),
        tidar: Some(Tidar::new(TidarConfig {
            block: 4,
            alpha,
            mask_id: MASK,
        })),
        coconut: None,
    };
    let batch = MicroBatch {
        inputs: &x,
        targets: &y,
        scale: 1.0 / 32.0,
        puzzle_ids: None,
        padded: None,
        global: 0,
    };
    let loss = fam
        .micro_step(&batch, (), &mut |_: GradEvent| {})
        .unwrap()
        .double_value(&[]);
    let fused = fam.params().flat().grad().copy();
    let _ = fam.params().flat().grad().zero_();

    let tb = fam.tidar.as_ref().unwrap().batch(&x, &y, 1.0).unwrap();
    let logits = fam
        .model
        .forward_with(Input::Ids(&tb.ids), &tb.attend)
        .unwrap()
        .logits;
    let ar = cross_entropy(&logits.narrow(1, 0, 16), &y).unwrap();
    let diff = cross_entropy(&logits.narrow(1, 16, 16), &x).unwrap();
    let want = (&ar * alpha + &diff) / (1.0 + alpha);
    want.backward();
    let autograd = fam.params().flat().grad();
    assert!(
        (loss - want.double_value(&[])).abs() < 1e-5,
        "loss {loss} vs {}",
        want.double_value(&[])
    );
    let d = max_diff(&fused, &autograd);
    assert!(
        d < 1e-5 * autograd.abs().max().double_value(&[]).max(1.0),
        "gradients differ by {d}"
    );
    // Both terms are logged, and perplexity is the AR term's.
    let fields = fam.telemetry(&x, ()).unwrap();
    let get = |k: &str| {
        fields
            .iter()
            .find(|(n, _)| *n == k)
            .unwrap()
            .1
            .as_f64()
            .unwrap()
    };
    assert!((get("ar_loss") - ar.double_value(&[])).abs() < 1e-4);
    assert!((get("diff_loss") - diff.double_value(&[])).abs() < 1e-4);
    assert!((get("ar_ppl") - get("ar_loss").exp()).abs() < 1e-6);
}

/// `got` equals greedy AR's `want`, or first differs where the plain model's top two logits are
/// within 1e-5 (the one excuse for a mismatch, checked rather than assumed).
fn assert_greedy(prompt: &[i64], want: &[i64], got: &[i64], logits_of: &dyn Fn(&[i64]) -> Tensor) {
    let Some(i) = want.iter().zip(got).position(|(a, b)| a != b) else {
        return;
    };
    let mut seq = prompt.to_vec();
    seq.extend_from_slice(&want[..i]);
    let top = logits_of(&seq).topk(2, -1, true, true).0;
    let gap = top.double_value(&[0]) - top.double_value(&[1]);
    assert!(
        gap < 1e-5,
        "β = 1 differs from greedy AR for {prompt:?} at {i} (top-2 gap {gap}):\n{want:?}\n{got:?}"
    );
    eprintln!("a top-2 tie explains a mismatch for {prompt:?} at {i}");
}

fn prompts() -> Vec<Vec<i64>> {
    (0..3)
        .map(|p| {
            let t = ids(1, 5 + 4 * p, 40 + p);
            Vec::<i64>::try_from(t.view([-1])).unwrap()
        })
        .collect()
}

fn opts(beta: f64) -> TidarOptions {
    TidarOptions {
        draft: 4,
        beta,
        sampling: Sampling::GREEDY,
        max_tokens: 110,
        stop_token: None,
    }
}

#[test]
fn gpt_tidar_decoding_is_greedy_ar_at_beta_one_and_equals_the_uncached_reference() {
    let m = gpt();
    let last_logits = |seq: &[i64]| {
        let x = Tensor::from_slice(seq).view([1, -1]);
        tch::no_grad(|| m.forward(&x))
            .unwrap()
            .logits
            .get(0)
            .get(-1)
    };
    for prompt in prompts() {
        let plain = m.generate(&prompt, 110, &Sampling::GREEDY, None).unwrap();
        let out = tidar::generate(&mut m.cached().unwrap(), &prompt, MASK, &opts(1.0)).unwrap();
        assert_eq!(out.tokens.len(), 110);
        assert_greedy(&prompt, &plain, &out.tokens, &last_logits);
        assert_eq!(out.forwards, 1 + out.accepted.len());
        for beta in [0.0, 0.5, 1.0] {
            let cached =
                tidar::generate(&mut m.cached().unwrap(), &prompt, MASK, &opts(beta)).unwrap();
            let forward =
                Box::new(|x: &Tensor, a: &Attend| Ok(m.forward_with(Input::Ids(x), a)?.logits));
            let mut reference = Recompute::new(forward, 256, Device::Cpu);
            let slow = tidar::generate(&mut reference, &prompt, MASK, &opts(beta)).unwrap();
            assert_eq!(
                cached, slow,
                "β = {beta}: cached and re-run decoders differ"
            );
        }
    }
}

#[test]
fn huginn_tidar_decoding_is_greedy_ar_at_beta_one_and_equals_the_uncached_reference() {
    let m = huginn();
    let depth = 3;
    let last_logits = |seq: &[i64]| {
        let x = Tensor::from_slice(seq).view([1, -1]);
        tch::no_grad(|| m.forward(&x, Depth::eval(depth), &InitState::Zero))
            .unwrap()
            .logits
            .get(0)
            .get(-1)
    };
    let cached = |beta: f64, prompt: &[i64]| {
        let mut lm = HuginnLm {
            decoder: Decoder::new(&m),
            depth,
            start: Start::Zero,
        };
        tidar::generate(&mut lm, prompt, MASK, &opts(beta)).unwrap()
    };
    for prompt in prompts() {
        let plain = decode::generate(
            &m,
            &prompt,
            &GenerateOptions {
                max_tokens: 110,
                budget: Budget::fixed(depth),
                sampling: Sampling::GREEDY,
                start: Start::Zero,
                continuous: false,
                stop_token: None,
            },
        )
        .unwrap()
        .tokens;
        let out = cached(1.0, &prompt);
        assert_eq!(out.tokens.len(), 110);
        assert_greedy(&prompt, &plain, &out.tokens, &last_logits);
        for beta in [0.0, 1.0] {
            let fast = cached(beta, &prompt);
            let forward = Box::new(|x: &Tensor, a: &Attend| {
                Ok(
                    m.forward_with(Input::Ids(x), a, Depth::eval(depth), &InitState::Zero)?
                        .logits,
                )
            });
            let mut reference = Recompute::new(forward, 256, Device::Cpu);
            let slow = tidar::generate(&mut reference, &prompt, MASK, &opts(beta)).unwrap();
            assert_eq!(fast, slow, "β = {beta}: cached and re-run decoders differ");
        }
    }
}

/// Near the end of the positions the draft shrinks, down to plain next-token steps, and the
/// decoder still matches greedy AR up to block_size.
#[test]
fn decoding_runs_to_the_end_of_the_positions() {
    let m = gpt();
    let prompt: Vec<i64> = (0..200).map(|i| i % 250).collect();
    let plain = m.generate(&prompt, 1000, &Sampling::GREEDY, None).unwrap();
    let o = TidarOptions {
        max_tokens: 1000,
        draft: 8,
        ..opts(1.0)
    };
    let out = tidar::generate(&mut m.cached().unwrap(), &prompt, MASK, &o).unwrap();
    assert_eq!(
        out.tokens.len(),
        plain.len(),
        "both stop when the positions run out"
    );
    assert_eq!(out.tokens, plain);
    let mut lm = m.cached().unwrap();
    let _ = tidar::generate(&mut lm, &prompt, MASK, &o).unwrap();
    assert!(lm.len() <= 256);
}

#[test]
fn sampling_decodes_and_stops_at_the_stop_token() {
    let m = gpt();
    tch::manual_seed(7);
    let prompt = vec![3, 9, 27];
    let o = TidarOptions {
        sampling: Sampling {
            temperature: 1.0,
            top_p: 0.9,
        },
        ..opts(0.5)
    };
    let out = tidar::generate(&mut m.cached().unwrap(), &prompt, MASK, &o).unwrap();
    assert_eq!(out.tokens.len(), 110);
    assert!(out.tokens.iter().all(|&t| (0..256).contains(&t)));
    // Stop on the first occurrence of a token it produced, inside a committed block.
    let stop = out.tokens[20];
    tch::manual_seed(7);
    let o = TidarOptions {
        stop_token: Some(stop),
        ..o
    };
    let cut = tidar::generate(&mut m.cached().unwrap(), &prompt, MASK, &o).unwrap();
    assert_eq!(cut.tokens.last(), Some(&stop));
    assert_eq!(cut.tokens.iter().filter(|&&t| t == stop).count(), 1);
}

/// What decoding drafts is what training taught: the prefill's mask block after a prompt of g·b
/// tokens, and a decode step's block B_j whose first position is g·b, compute the logits of the
/// training pass's masked block g over the same tokens (same positions, same visible keys).
#[test]
fn decoding_blocks_compute_the_training_blocks() {
    let (b, s) = (4, 16);
    let x = ids(1, s, 7);
    let t = tidar(b);
    let m = gpt();
    let tb = t.batch(&x, &x, 1.0).unwrap();
    let train = tch::no_grad(|| m.forward_with(Input::Ids(&tb.ids), &tb.attend))
        .unwrap()
        .logits
        .get(0); // [2S, V]
    let tokens = Vec::<i64>::try_from(x.get(0)).unwrap();
    let masks = vec![MASK; b as usize];
    for g in 1..s / b {
        let want = train.narrow(0, s + g * b, b);
        // Prefill: the prompt x_0 … x_{gb−1}, then one block that sees all of it.
        let n = g * b;
        let (positions, mask) = tidar::step_layout(0, n, &[n], b);
        let ids = [&tokens[..n as usize], &masks[..]].concat();
        let mut lm = m.cached().unwrap();
        let got = lm.extend(&ids, &positions, &mask).unwrap().narrow(0, n, b);
        let d = max_diff(&got, &want);
        assert!(
            d < 1e-4,
            "prefill block after {n} tokens: logits differ by {d}"
        );
        // A step: the cache holds x_0 … x_{gb−3}, the drafts are the next b tokens, and block B_2
        // (both drafts before position gb kept) starts at gb.
        let l = n - 2;
        let mut lm = m.cached().unwrap();
        let (positions, mask) = tidar::step_layout(0, l, &[], 0);
        let _ = lm.extend(&tokens[..l as usize], &positions, &mask).unwrap();
        let blocks: Vec<i64> = (1..=b).collect();
        let (positions, mask) = tidar::step_layout(l, b, &blocks, b);
        let mut ids = tokens[l as usize..(l + b) as usize].to_vec();
        ids.extend(std::iter::repeat_n(MASK, (b * b) as usize));
        let logits = lm.extend(&ids, &positions, &mask).unwrap();
        let got = logits.narrow(0, b + b, b); // B_2
        let d = max_diff(&got, &want);
        assert!(d < 1e-4, "step block B_2 at {n}: logits differ by {d}");
    }
}
