//! KV-cached decoding and the adaptive-exit criteria.

use muninn_model::decode::{self, Budget, Decoder, GenerateOptions, Sampling, Start};
use muninn_model::{Depth, ExitCriterion, Huginn, HuginnConfig, InitState, Precision};
use tch::{Device, Kind, Tensor};

fn setup() {
    tch::set_num_threads(1);
}

fn micro() -> Huginn {
    let m = Huginn::new(
        HuginnConfig::preset("micro").unwrap(),
        Device::Cpu,
        Precision::F32,
    )
    .unwrap();
    m.init(11);
    m
}

fn ids(t: &[i64]) -> Tensor {
    Tensor::from_slice(t).view([1, -1])
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn cached_chunks_give_the_logits_of_a_full_forward() {
    setup();
    let m = micro();
    let seq: Vec<i64> = (0..12).map(|i| (i * 37 + 5) % 256).collect();
    for depth in [1, 3] {
        let full = tch::no_grad(|| m.forward(&ids(&seq), Depth::eval(depth), &InitState::Zero))
            .unwrap()
            .logits;
        // A 5-token prompt, a 3-token chunk (a shifted causal mask), then single tokens.
        let mut dec = Decoder::new(&m);
        let mut got = Vec::new();
        for (a, b) in [(0, 5), (5, 8), (8, 9), (9, 10), (10, 11), (11, 12)] {
            let c = dec
                .step(&ids(&seq[a..b]), &InitState::Zero, &Budget::fixed(depth))
                .unwrap();
            assert_eq!(c.iterations, depth);
            got.push(c.logits);
        }
        assert_eq!(dec.len(), 12);
        let got = Tensor::cat(&got, 1);
        let diff = max_abs_diff(&got, &full);
        assert!(diff < 1e-4, "depth {depth}: cached logits differ by {diff}");
    }
}

#[test]
fn cached_greedy_generation_equals_uncached_generation() {
    setup();
    let m = micro();
    let prompt = [3, 141, 59, 26, 53];
    for depth in [1, 4] {
        let cached = decode::generate(
            &m,
            &prompt,
            &GenerateOptions {
                max_tokens: 20,
                budget: Budget::fixed(depth),
                sampling: Sampling::GREEDY,
                start: Start::Zero,
                continuous: false,
                stop_token: None,
            },
        )
        .unwrap();
        let uncached = decode::generate_uncached(&m, &prompt, 20, depth, None).unwrap();
        assert_eq!(cached.tokens.len(), 20);
        assert_eq!(cached.tokens, uncached, "depth {depth}");
        assert_eq!(cached.mean_iterations(), depth as f64);
    }
}

#[test]
fn generation_stops_at_the_block_size() {
    setup();
    let m = micro(); // block_size 64
    let prompt: Vec<i64> = (0..60).collect();
    let opts = GenerateOptions {
        max_tokens: 100,
        budget: Budget::fixed(2),
        sampling: Sampling::GREEDY,
        start: Start::Zero,
        continuous: false,
        stop_token: None,
    };
    let g = decode::generate(&m, &prompt, &opts).unwrap();
    // 60 prompt tokens + 4 fed back fill the 64 positions; the fifth is predicted from the last.
    assert_eq!(g.tokens.len(), 5);
    assert_eq!(
        g.tokens,
        decode::generate_uncached(&m, &prompt, 100, 2, None).unwrap()
    );
}

#[test]
fn min_steps_and_max_steps_bound_an_adaptive_exit() {
    setup();
    let m = micro();
    let run = |budget: Budget| {
        let mut dec = Decoder::new(&m);
        dec.step(&ids(&[1, 2, 3]), &InitState::Zero, &budget)
            .unwrap()
    };
    // A threshold every iteration meets: exit after the first, or after min_steps.
    let always = Some("latent-diff:1e9".parse().unwrap());
    let c = run(Budget {
        max_steps: 8,
        min_steps: 0,
        exit: always,
    });
    assert_eq!((c.iterations, c.exit_values.len()), (1, 1));
    let c = run(Budget {
        max_steps: 8,
        min_steps: 3,
        exit: always,
    });
    assert_eq!(c.iterations, 3);
    // One no iteration meets: run to the cap.
    let c = run(Budget {
        max_steps: 5,
        min_steps: 0,
        exit: Some(ExitCriterion::Argmax(1000)),
    });
    assert_eq!((c.iterations, c.exit_values.len()), (5, 5));
}

#[test]
fn continuous_compute_and_adaptive_exit_decode_to_the_end() {
    setup();
    let m = micro();
    let mut opts = GenerateOptions {
        max_tokens: 12,
        budget: Budget {
            max_steps: 16,
            min_steps: 2,
            exit: Some("kl:1e-2".parse().unwrap()),
        },
        sampling: Sampling {
            temperature: 0.8,
            top_p: 0.9,
        },
        start: Start::Random,
        continuous: true,
        stop_token: None,
    };
    tch::manual_seed(3);
    let g = decode::generate(&m, &[7, 8, 9], &opts).unwrap();
    assert_eq!(g.tokens.len(), 12);
    assert!(g.tokens.iter().all(|&t| (0..256).contains(&t)));
    assert!(g.iterations.iter().all(|&i| (2..=16).contains(&i)));
    let depths = |g: &decode::Generation| {
        g.iterations
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    assert!(
        depths(&g) > 1,
        "every token exited at one depth: {:?}",
        g.iterations
    );
    // Tokens that exit at different depths share the cache: the deeper slots still line up.
    opts.budget.exit = Some("latent-diff:0.05".parse().unwrap());
    opts.continuous = false;
    let g = decode::generate(&m, &[7, 8, 9], &opts).unwrap();
    assert_eq!(g.tokens.len(), 12);
    assert!(g.iterations.iter().all(|&i| (2..=16).contains(&i)));
    assert!(
        depths(&g) > 1,
        "every token exited at one depth: {:?}",
        g.iterations
    );
}

// ---- exit criteria on hand-built sequences, against values computed here in f64 ----

/// Feeds `states` (after s0) to a tracker; returns the 1-based iteration at which it exits.
fn exit_iteration(
    c: ExitCriterion,
    s0: &Tensor,
    steps: &[(Tensor, Option<Tensor>)],
) -> Option<usize> {
    let mut tr = c.tracker(s0);
    for (i, (s, logits)) in steps.iter().enumerate() {
        if tr.observe(s, logits.as_ref()).unwrap().exit {
            return Some(i + 1);
        }
    }
    None
}

fn vector(v: &[f64]) -> Tensor {
    Tensor::from_slice(v).to_kind(Kind::Float)
}

#[test]
fn latent_diff_exits_at_the_first_small_relative_change() {
    // s_i = (1 + 2^-i, 0): ‖s_i − s_{i−1}‖/‖s_i‖ = 2^-i / (1 + 2^-i) = .33 .2 .11 .059 .0303 .0154:
    // the fifth is just above 0.03, the sixth below.
    let state = |i: i32| vector(&[1.0 + 0.5f64.powi(i), 0.0]).view([1, 1, 2]);
    let steps: Vec<_> = (1..=10).map(|i| (state(i), None)).collect();
    let c: ExitCriterion = "latent-diff".parse().unwrap();
    assert_eq!(c, ExitCriterion::LatentDiff(0.03));
    assert_eq!(exit_iteration(c, &state(0), &steps), Some(6));
    assert_eq!(
        exit_iteration(ExitCriterion::LatentDiff(0.1), &state(0), &steps),
        Some(4)
    );
}

/// Logits that sharpen towards token 2 and settle: l_i = (1 − 2^-i)·target.
fn settling_logits(i: i32) -> Vec<f64> {
    let target = [0.0, 1.0, 4.0, 0.5];
    target.iter().map(|t| t * (1.0 - 0.5f64.powi(i))).collect()
}

fn softmax(l: &[f64]) -> Vec<f64> {
    let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.iter().map(|x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

#[test]
fn kl_and_entropy_diff_exit_where_the_distribution_settles() {
    let s0 = Tensor::zeros([1, 1, 2], (Kind::Float, Device::Cpu));
    let steps: Vec<_> = (1..=20)
        .map(|i| (s0.shallow_clone(), Some(vector(&settling_logits(i)))))
        .collect();
    // The expected iterations, computed independently: KL(p_{i−1} ‖ p_i) from uniform, |ΔH| from 100.
    let mut prev = vec![0.25; 4];
    let mut prev_h = 100.0;
    let (mut kl_at, mut h_at) = (None, None);
    for i in 1..=20 {
        let p = softmax(&settling_logits(i));
        let kl: f64 = prev.iter().zip(&p).map(|(q, p)| q * (q / p).ln()).sum();
        let h: f64 = -p.iter().map(|p| p * (p + 1e-10).ln()).sum::<f64>();
        if kl < 1e-3 && kl_at.is_none() {
            kl_at = Some(i as usize);
        }
        if (h - prev_h).abs() < 1e-3 && h_at.is_none() {
            h_at = Some(i as usize);
        }
        prev = p;
        prev_h = h;
    }
    let (kl_at, h_at) = (kl_at.unwrap(), h_at.unwrap());
    assert!(
        kl_at > 2 && h_at > 2,
        "the sequence must not settle at once"
    );
    assert_eq!(
        exit_iteration("kl".parse().unwrap(), &s0, &steps),
        Some(kl_at)
    );
    assert_eq!(
        exit_iteration("entropy-diff:1e-3".parse().unwrap(), &s0, &steps),
        Some(h_at)
    );
}

#[test]
fn argmax_exits_after_n_stable_iterations() {
    let s0 = Tensor::zeros([1, 1, 2], (Kind::Float, Device::Cpu));
    let one_hot = |k: usize| {
        let mut v = vec![0.0; 8];
        v[k] = 1.0;
        vector(&v)
    };
    let tops = [3, 1, 1, 2, 2, 2, 2, 2, 2, 7];
    let steps: Vec<_> = tops
        .iter()
        .map(|&k| (s0.shallow_clone(), Some(one_hot(k))))
        .collect();
    // Stable counts: 0 0 1 0 1 2 3 4 5 → the ninth iteration has 5.
    assert_eq!(
        exit_iteration("argmax".parse().unwrap(), &s0, &steps),
        Some(9)
    );
    assert_eq!(
        exit_iteration(ExitCriterion::Argmax(2), &s0, &steps),
        Some(6)
    );
    assert_eq!(exit_iteration(ExitCriterion::Argmax(6), &s0, &steps), None);
}

#[test]
fn exit_criteria_parse_with_defaults_and_refuse_nonsense() {
    let ok = |s: &str| s.parse::<ExitCriterion>().unwrap();
    assert_eq!(ok("kl"), ExitCriterion::Kl(1e-3));
    assert_eq!(ok("kl:1e-4"), ExitCriterion::Kl(1e-4));
    assert_eq!(ok("entropy-diff"), ExitCriterion::EntropyDiff(1e-3));
    assert_eq!(ok("argmax:3"), ExitCriterion::Argmax(3));
    assert_eq!(ok("argmax-stability"), ExitCriterion::Argmax(5));
    for bad in ["cosine", "kl:abc", "kl:-1", "argmax:0", "argmax:1.5", ""] {
        let err = bad.parse::<ExitCriterion>().unwrap_err().to_string();
        assert!(err.contains("exit criterion"), "{bad}: {err}");
    }
}
