//! Numerics of the Huginn forward and backward on tiny CPU shapes.

use muninn_model::params::Part;
use muninn_model::{
    cross_entropy, Depth, GradStage, Huginn, HuginnConfig, InitState, ParamCounts, Precision,
};
use tch::{Device, Kind, Tensor};

fn setup() {
    // Tests run two at a time on two cores: one libtorch thread each.
    tch::set_num_threads(1);
}

fn model(name: &str, precision: Precision) -> Huginn {
    let m = Huginn::new(HuginnConfig::preset(name).unwrap(), Device::Cpu, precision).unwrap();
    m.init(7);
    m
}

// Tests run in parallel and torch's RNG is global, so inputs come from fixed formulas instead.

/// Scrambled ids and next-token targets [B, T].
fn batch(vocab: i64, b: i64, t: i64, seed: i64) -> (Tensor, Tensor) {
    let ids: Vec<i64> = (0..b * (t + 1))
        .map(|i| (i * 7919 + seed * 104_729 + (i * i) % 13) % vocab)
        .collect();
    let row = Tensor::from_slice(&ids).view([b, t + 1]);
    (row.narrow(1, 0, t), row.narrow(1, 1, t))
}

/// A fixed, irregular initial state of std ≈ 0.6, like Huginn's s0.
fn fixed_state(m: &Huginn, b: i64, t: i64) -> InitState {
    let n = b * t * m.config().n_embd;
    let x = Tensor::arange(n, (Kind::Float, Device::Cpu));
    InitState::Given(((&x * 0.7311).sin() * (&x * 0.0173).cos() * 1.2).view([
        b,
        t,
        m.config().n_embd,
    ]))
}

fn grad_of(m: &Huginn) -> Tensor {
    m.params().flat().grad().copy()
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().max().double_value(&[]).max(1e-30);
    (a - b).abs().max().double_value(&[]) / scale
}

#[test]
fn named_shapes_have_the_reference_parameter_counts() {
    let count = |n: &str| ParamCounts::of(&HuginnConfig::preset(n).unwrap());
    assert_eq!(count("nebel-raven-3.5b").total, 3_564_976_800);
    assert_eq!(count("micro").total, 288_320);
    assert_eq!(count("tiny").total, 1_150_080);
    assert_eq!(count("mini-huginn").total, 2_201_728);
    let nebel = count("nebel-raven-3.5b");
    assert_eq!(nebel.part(Part::Core), 1_581_592_320);
    assert_eq!(nebel.part(Part::Adapter), 55_756_800);
    assert_eq!(nebel.part(Part::Embedding), 346_030_080);
    assert_eq!(nebel.unrolled(32), 52_594_338_720);
}

#[test]
fn allocated_model_matches_the_count() {
    setup();
    let m = model("tiny", Precision::F32);
    assert_eq!(m.params().numel(), 1_150_080);
}

#[test]
fn eval_forward_equals_training_forward_for_the_same_state_and_depth() {
    setup();
    let m = model("micro", Precision::F32);
    let (ids, _) = batch(256, 2, 16, 1);
    let init = fixed_state(&m, 2, 16);
    let train = m.forward(&ids, Depth::new(3, 2), &init).unwrap();
    let eval = tch::no_grad(|| m.forward(&ids, Depth::eval(5), &init)).unwrap();
    assert!(
        train.logits.requires_grad(),
        "the k grad iterations must build a graph"
    );
    assert!(!eval.logits.requires_grad());
    assert_eq!(train.logits.size(), [2, 16, 256]);
    let diff = (&train.logits - &eval.logits).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "train vs eval logits differ by {diff}");
    // A different depth must change the output, or the comparison above proves nothing.
    let other = tch::no_grad(|| m.forward(&ids, Depth::eval(4), &init)).unwrap();
    assert!((&other.logits - &eval.logits).abs().max().double_value(&[]) > 1e-4);
}

#[test]
fn activation_checkpointing_gives_the_same_gradients() {
    setup();
    for precision in [Precision::F32, Precision::Bf16Mixed] {
        let mut m = model("micro", precision);
        let (ids, targets) = batch(256, 2, 16, 2);
        let init = fixed_state(&m, 2, 16);
        let depth = Depth::new(2, 3);
        let plain_loss = m
            .loss_backward(&ids, &targets, depth, &init, false, &mut |_| {})
            .unwrap();
        let plain = grad_of(&m);
        m.params_mut().zero_grad();
        let ckpt_loss = m
            .loss_backward(&ids, &targets, depth, &init, true, &mut |_| {})
            .unwrap();
        let ckpt = grad_of(&m);
        assert_eq!(
            plain_loss.double_value(&[]),
            ckpt_loss.double_value(&[]),
            "{precision:?}"
        );
        let rel = max_rel_diff(&ckpt, &plain);
        eprintln!(
            "{precision:?}: checkpointed vs plain gradients, max relative difference {rel:e}"
        );
        let tol = if precision == Precision::F32 {
            1e-5
        } else {
            1e-2
        };
        assert!(
            rel < tol,
            "{precision:?}: checkpointed gradients differ by {rel:e} (relative)"
        );
        // Every parameter gets a gradient: embedding, prelude (through e), adapter, core, coda, ln_f.
        for (name, g) in m.params().named_grads() {
            assert!(
                g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{precision:?}: `{name}` has no gradient"
            );
        }
    }
}

#[test]
fn truncated_backprop_ignores_the_no_grad_prefix() {
    setup();
    // Gradients with (n, k) equal those of running n iterations by hand, detaching, then k with a graph.
    let m = model("micro", Precision::F32);
    let (ids, targets) = batch(256, 1, 12, 3);
    let init = fixed_state(&m, 1, 12);
    let loss = m
        .loss_backward(&ids, &targets, Depth::new(3, 2), &init, false, &mut |_| {})
        .unwrap();
    let g_trunc = grad_of(&m);

    let m2 = model("micro", Precision::F32);
    let prefix = tch::no_grad(|| m2.forward(&ids, Depth::eval(3), &init))
        .unwrap()
        .state;
    let out = m2
        .forward(&ids, Depth::new(0, 2), &InitState::Given(prefix))
        .unwrap();
    let loss2 = cross_entropy(&out.logits, &targets).unwrap();
    loss2.backward();
    assert!((loss.double_value(&[]) - loss2.double_value(&[])).abs() < 1e-6);
    assert!(max_rel_diff(&grad_of(&m2), &g_trunc) < 1e-5);
}

#[test]
fn bf16_core_gradients_are_nonzero_and_match_fp32() {
    setup();
    let (ids, targets) = batch(512, 2, 32, 4);
    let depth = Depth::new(3, 2); // n > 0: the no-grad phase must not poison the grad phase
    let mut core_grads = Vec::new();
    for precision in [Precision::F32, Precision::Bf16Mixed] {
        let m = model("tiny", precision);
        let init = fixed_state(&m, 2, 32);
        let _loss = m
            .loss_backward(&ids, &targets, depth, &init, false, &mut |_| {})
            .unwrap();
        let core: Vec<Tensor> = m
            .params()
            .named_grads()
            .into_iter()
            .filter(|(n, _)| n.starts_with("core."))
            .map(|(_, g)| g.flatten(0, -1))
            .collect();
        let core = Tensor::cat(&core, 0);
        assert!(
            core.abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "{precision:?}: core gradients are zero"
        );
        core_grads.push(core);
    }
    let (f32g, bf16g) = (&core_grads[0], &core_grads[1]);
    // Stated tolerance: bf16 has an 8-bit mantissa; through 2 recurrent iterations of 2 blocks the
    // core gradient stays within 5% of fp32 in relative L2 norm and points the same way.
    let rel_l2 = (bf16g - f32g).norm().double_value(&[]) / f32g.norm().double_value(&[]);
    let cosine = (bf16g * f32g).sum(Kind::Float).double_value(&[])
        / (bf16g.norm().double_value(&[]) * f32g.norm().double_value(&[]));
    eprintln!("bf16 vs fp32 core gradients: relative L2 {rel_l2:.5}, cosine {cosine:.6}");
    assert!(
        rel_l2 < 0.05,
        "bf16 core gradients differ from fp32 by {rel_l2:.4} (relative L2)"
    );
    assert!(
        cosine > 0.999,
        "bf16 vs fp32 core gradient cosine {cosine:.5}"
    );
}

#[test]
fn bf16_forward_stays_close_to_fp32() {
    setup();
    let (ids, _) = batch(512, 1, 32, 5);
    let logits: Vec<Tensor> = [Precision::F32, Precision::Bf16Mixed]
        .into_iter()
        .map(|p| {
            let m = model("tiny", p);
            let init = fixed_state(&m, 1, 32);
            let out = tch::no_grad(|| m.forward(&ids, Depth::eval(4), &init)).unwrap();
            assert_eq!(
                out.state.kind(),
                Kind::Float,
                "{p:?}: the recurrent state must stay fp32"
            );
            assert_eq!(out.logits.kind(), Kind::Float);
            out.logits
        })
        .collect();
    let rel =
        (&logits[1] - &logits[0]).norm().double_value(&[]) / logits[0].norm().double_value(&[]);
    assert!(
        rel < 0.02,
        "bf16 logits differ from fp32 by {rel:.4} (relative L2)"
    );
}

#[test]
fn like_init_state_has_the_reference_scale() {
    setup();
    let m = model("tiny", Precision::F32);
    let e = Tensor::zeros([4, 64, 128], (Kind::Float, Device::Cpu));
    tch::manual_seed(0);
    let s = m.initial_state(&e, &InitState::Random).unwrap();
    // σ_e·sqrt(d) = sqrt(2/5) ≈ 0.632 before truncation, ≈ 0.624 after; bounded by 3σ.
    let std = s.std(true).double_value(&[]);
    assert!((std - 0.624).abs() < 0.01, "s0 std {std}");
    assert!(s.abs().max().double_value(&[]) <= 3.0 * 0.6325 + 1e-5);
    let z = m.initial_state(&e, &InitState::Zero).unwrap();
    assert_eq!(z.abs().sum(Kind::Float).double_value(&[]), 0.0);
}

#[test]
fn sequences_longer_than_block_size_are_refused() {
    setup();
    let m = model("micro", Precision::F32);
    let ids = Tensor::zeros([1, 65], (Kind::Int64, Device::Cpu));
    let err = m
        .forward(&ids, Depth::eval(1), &InitState::Zero)
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("block_size"), "{err:#}");
}

/// The data-parallel trainer reduces each region as soon as its stage is reported: by then the
/// region's gradient must already equal the final one, or ranks would average half-made gradients.
#[test]
fn each_region_is_final_when_its_stage_is_reported() {
    setup();
    for checkpointing in [false, true] {
        let m = model("micro", Precision::F32);
        let (ids, targets) = batch(256, 2, 16, 4);
        let init = fixed_state(&m, 2, 16);
        let regions = muninn_model::params::grad_regions(m.params().specs());
        let mut seen = Vec::new();
        let mut snapshots = Vec::new();
        let _loss = m
            .loss_backward(
                &ids,
                &targets,
                Depth::new(2, 3),
                &init,
                checkpointing,
                &mut |stage| {
                    let region = match stage {
                        GradStage::Coda => Some(0),
                        GradStage::Core => Some(1),
                        GradStage::Prelude => Some(2),
                        GradStage::CoreIteration => None,
                    };
                    seen.push(stage);
                    if let Some(i) = region {
                        let r = &regions[i];
                        snapshots.push((
                            i,
                            m.params()
                                .flat()
                                .grad()
                                .narrow(0, r.start, r.end - r.start)
                                .copy(),
                        ));
                    }
                },
            )
            .unwrap();
        let want_iterations = if checkpointing { 3 } else { 0 };
        assert_eq!(
            seen.iter()
                .filter(|s| **s == GradStage::CoreIteration)
                .count(),
            want_iterations
        );
        assert_eq!(
            seen.iter()
                .filter(|s| **s != GradStage::CoreIteration)
                .copied()
                .collect::<Vec<_>>(),
            [GradStage::Coda, GradStage::Core, GradStage::Prelude]
        );
        let fin = m.params().flat().grad();
        for (i, snap) in snapshots {
            let r = &regions[i];
            let now = fin.narrow(0, r.start, r.end - r.start);
            assert!(
                now.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "region {i} has no gradient"
            );
            assert_eq!(
                (&now - &snap).abs().max().double_value(&[]),
                0.0,
                "region {i} changed after its stage (checkpointing {checkpointing})"
            );
        }
        // The three regions tile the flat buffer.
        assert_eq!(regions[2].start, 0);
        assert_eq!(regions[2].end, regions[1].start);
        assert_eq!(regions[1].end, regions[0].start);
        assert_eq!(regions[0].end, m.params().numel());
    }
}
