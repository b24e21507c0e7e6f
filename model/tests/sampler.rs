//! The depth sampler against the reference's test vectors and statistics. Its own test binary:
//! the sampler draws through torch's process-global generator, which the model's other tests use.

use muninn_model::sampler::{DepthSampler, MeanCurriculum, Ramp, Scheme};
use muninn_model::Depth;

fn huginn() -> DepthSampler {
    DepthSampler {
        scheme: Scheme::PoissonLognormalFilling,
        mean_recurrence: 32,
        mean_backprop_depth: 8,
        sigma: 0.5,
        curriculum_steps: 0,
        curriculum: None,
    }
}

#[test]
fn reproduces_the_reference_test_vectors() {
    // huginn-reference.md §2.2, steps 1..12.
    let expect = [
        (21, 8),
        (21, 8),
        (25, 8),
        (44, 8),
        (32, 8),
        (8, 8),
        (27, 8),
        (21, 8),
        (9, 8),
        (9, 8),
        (45, 8),
        (12, 8),
    ];
    let s = huginn();
    for (i, &(n, k)) in expect.iter().enumerate() {
        assert_eq!(s.draw(i as u64 + 1), Depth::new(n, k), "step {}", i + 1);
    }
}

#[test]
fn statistics_match_the_reference() {
    // §2.1: mean r ≈ 32.9 over 50,000 steps; here 4,000 steps, so a looser band.
    let s = huginn();
    let rs: Vec<i64> = (1..=4000).map(|t| s.draw(t).total()).collect();
    let mean = rs.iter().sum::<i64>() as f64 / rs.len() as f64;
    assert!((mean - 33.0).abs() < 1.0, "mean depth {mean}");
    assert!(rs.iter().all(|&r| r >= 1));
    assert!((1..=4000).all(|t| s.draw(t).with_grad <= 8));
}

#[test]
fn other_schemes_and_curriculum() {
    let mut s = DepthSampler {
        scheme: Scheme::Fixed,
        ..huginn()
    };
    assert_eq!(s.draw(5), Depth::new(24, 8));
    s.scheme = Scheme::NonRecurrent;
    assert_eq!(s.draw(5), Depth::new(0, 1));
    s.scheme = Scheme::PoissonFill;
    let mean = (1..=2000).map(|t| s.draw(t).no_grad).sum::<i64>() as f64 / 2000.0;
    assert!((mean - 24.0).abs() < 0.5, "{mean}");
    s.scheme = Scheme::Fixed;
    s.curriculum_steps = 100;
    assert_eq!(s.targets(0), (1, 1));
    assert_eq!(s.targets(50), (17, 5)); // 1 + 0.5·31 = 16.5 → 17, 1 + 0.5·7 = 4.5 → 5
    assert_eq!(s.targets(100), (32, 8));
}

#[test]
fn the_retrofit_curriculum_follows_its_formula_and_caps_k() {
    // r̄ = max(1, ⌈8·f((s − 1)/10)⌉), k̄ = min(4, r̄), by hand.
    let ramp = |ramp| DepthSampler {
        mean_recurrence: 8,
        mean_backprop_depth: 4,
        curriculum: Some(MeanCurriculum {
            ramp,
            warmup_steps: 10,
        }),
        ..huginn()
    };
    let linear = ramp(Ramp::Linear);
    // p = 0, 0.1, 0.2, 0.5, 0.8, 1, then past the ramp.
    for (step, want) in [
        (1, (1, 1)),
        (2, (1, 1)),
        (3, (2, 2)),
        (6, (4, 4)),
        (9, (7, 4)),
        (11, (8, 4)),
        (500, (8, 4)),
    ] {
        assert_eq!(linear.targets(step), want, "linear, step {step}");
    }
    // 1 − √(1 − p): p = 0.1 → 0.41 → 1; 0.5 → 2.34 → 3; 0.9 → 5.47 → 6.
    let sqrt = ramp(Ramp::OneMinusSqrt);
    for (step, want) in [
        (1, (1, 1)),
        (2, (1, 1)),
        (6, (3, 3)),
        (10, (6, 4)),
        (11, (8, 4)),
    ] {
        assert_eq!(sqrt.targets(step), want, "1-sqrt, step {step}");
    }
    // The draws honour the cap: no step backpropagates through more iterations than r̄ allows.
    for step in 1..=12 {
        let (d, (_, k)) = (linear.draw(step), linear.targets(step));
        assert!(d.with_grad <= k, "step {step}: {d:?}, k̄ {k}");
    }
    let both = DepthSampler {
        curriculum_steps: 100,
        ..linear
    };
    assert!(both
        .validate()
        .unwrap_err()
        .to_string()
        .contains("two curricula"));
}
