//! TRM's network against the specification's computed figures (`trm-reference.md` §1, §6) and its
//! formulas: parameter counts of the paper and tiny shapes, the SwiGLU width rule, the init, the
//! stablemax, and one supervision step's shapes and graph.

use muninn_model::params::ParamCounts;
use muninn_model::trm::{log_stablemax, param_specs, swiglu_width, Carry, Trm, TrmConfig};
use muninn_model::Part;
use tch::{Device, Kind, Tensor};

fn count(cfg: &TrmConfig) -> i64 {
    ParamCounts::from_specs(
        &param_specs(cfg),
        &[Part::Embedding, Part::Layers, Part::Head],
    )
    .total
}

#[test]
fn parameter_counts_match_the_reference() {
    let p = |n| TrmConfig::preset(n).unwrap();
    assert_eq!(count(&p("trm-sudoku-mlp")), 5_028_866);
    assert_eq!(count(&p("trm-sudoku-att")), 6_828_034);
    assert_eq!(count(&p("trm-sudoku6")), 160_898);
    assert_eq!(count(&p("trm-sudoku4")), 129_922);
    // Maze-Hard (V 6, L 900): attention 6,822,914, MLP-t 18,795,522.
    let maze = |mlp_t: bool| TrmConfig {
        vocab_size: 6,
        seq_len: 900,
        mlp_t,
        pos_encodings: if mlp_t {
            muninn_model::trm::PosEncoding::None
        } else {
            muninn_model::trm::PosEncoding::Rope
        },
        ..p("trm-sudoku-att")
    };
    assert_eq!(count(&maze(false)), 6_822_914);
    assert_eq!(count(&maze(true)), 18_795_522);
    assert_eq!(
        (
            swiglu_width(4.0, 512),
            swiglu_width(4.0, 97),
            swiglu_width(4.0, 64)
        ),
        (1536, 512, 256)
    );
}

#[test]
fn init_follows_the_reference() {
    tch::set_num_threads(1);
    let m = Trm::new(
        TrmConfig::preset("trm-sudoku-mlp").unwrap(),
        Device::Cpu,
        muninn_model::Precision::F32,
    )
    .unwrap();
    m.init(3);
    let named: std::collections::HashMap<String, Tensor> =
        m.params().named_detached().into_iter().collect();
    assert_eq!(
        named["inner.q_head.weight"].abs().max().double_value(&[]),
        0.0
    );
    assert!(named["inner.q_head.bias"].eq(-5.0).all().int64_value(&[]) == 1);
    // JAX's corrected truncated normal: the actual std is the target, values within ±2σ′.
    let w = &named["inner.L_level.layers.0.mlp.gate_up_proj.weight"];
    let target = 1.0 / 512f64.sqrt();
    let std = w.std(true).double_value(&[]);
    assert!((std / target - 1.0).abs() < 0.01, "std {std} vs {target}");
    assert!(w.abs().max().double_value(&[]) <= 2.0 * target / 0.8796 * (1.0 + 1e-5));
    assert!((m.h_init.std(true).double_value(&[]) - 1.0).abs() < 0.2);
    assert!(m.puzzle_table.abs().max().double_value(&[]) == 0.0);
}

#[test]
fn stablemax_is_the_reference_formula() {
    let v = Tensor::from_slice(&[-2.0f64, 0.0, 1.5, 3.0]).view([1, 4]);
    let s = [1.0 / 3.0, 1.0, 2.5, 4.0];
    let total: f64 = s.iter().sum();
    let got = log_stablemax(&v);
    for (i, si) in s.iter().enumerate() {
        assert!((got.double_value(&[0, i as i64]) - (si / total).ln()).abs() < 1e-12);
    }
    assert_eq!(got.kind(), Kind::Double);
}

#[test]
fn a_supervision_step_has_the_reference_shapes_and_one_cycle_of_graph() {
    tch::set_num_threads(1);
    for name in ["trm-sudoku4", "trm-sudoku-att"] {
        let mut cfg = TrmConfig::preset(name).unwrap();
        cfg.hidden_size = 64;
        cfg.num_heads = 2;
        let m = Trm::new(cfg.clone(), Device::Cpu, muninn_model::Precision::F32).unwrap();
        m.init(1);
        let b = 3;
        tch::manual_seed(0);
        let inputs = Tensor::randint(cfg.vocab_size, [b, cfg.seq_len], (Kind::Int64, Device::Cpu));
        let ids = Tensor::zeros([b], (Kind::Int64, Device::Cpu));
        let carry = m.initial_carry(b);
        let out = m.step(&carry, &inputs, &ids).unwrap();
        assert_eq!(
            out.logits.size(),
            [b, cfg.seq_len, cfg.vocab_size],
            "{name}"
        );
        assert_eq!(out.q_halt.size(), [b]);
        // q starts at the bias: weight 0, bias −5.
        assert!((out.q_halt + 5.0).abs().max().double_value(&[]) < 1e-6);
        assert_eq!(out.carry.y.size(), [b, cfg.positions(), cfg.hidden_size]);
        assert!(!out.carry.y.requires_grad(), "the carry is detached");
        // Stepping on from the carry changes the answer; the same carry gives the same step.
        let again = m
            .step(
                &Carry {
                    y: carry.y.copy(),
                    z: carry.z.copy(),
                },
                &inputs,
                &ids,
            )
            .unwrap();
        assert!(again.logits.equal(&out.logits));
        let next = m.step(&out.carry, &inputs, &ids).unwrap();
        assert!((next.logits - &out.logits).abs().max().double_value(&[]) > 1e-6);
        // The loss reaches every trained parameter through the graph cycle.
        let loss = out.logits.square().mean(Kind::Float) + again.q_continue.sum(Kind::Float);
        loss.backward();
        for (n, g) in m.params().named_grads() {
            assert!(
                g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{name}: {n} has no gradient"
            );
        }
    }
}

/// The reference code's own outputs (tests/reference/trm_fixture.py on SamsungSAILMontreal/
/// TinyRecursiveModels e7b6871, float32): the same weights, batch and initial carry give the same
/// logits, q logits and states for 3 supervision steps, both variants, within 1e-4.
#[test]
fn three_supervision_steps_equal_the_reference_code() {
    tch::set_num_threads(1);
    for variant in ["mlp", "att"] {
        let (f, m) = reference_model(variant);
        let (inputs, ids) = (
            f.get("batch.inputs").unwrap(),
            f.get("batch.puzzle_identifiers").unwrap(),
        );
        let mut carry = m.initial_carry(inputs.size()[0]);
        for k in 0..3 {
            let out = tch::no_grad(|| m.step(&carry, &inputs, &ids)).unwrap();
            let close = |what: &str, ours: &Tensor| {
                let theirs = f.get(&format!("step{k}.{what}")).unwrap();
                assert_eq!(ours.size(), theirs.size(), "{variant} step {k}: {what}");
                let d = (ours - &theirs).abs().max().double_value(&[]);
                // The fixture comes from another CPU: there the reference itself differs from its
                // run here by 1.5e-4 of the logits at step 3 (recursion amplifies fp32 rounding),
                // so later steps get a wider bound. Same-machine parity (identical) is tests/trm.rs's.
                let scale = theirs.abs().max().double_value(&[]).max(1.0);
                let tol = if k < 2 { 1e-4 } else { 1e-3 };
                assert!(
                    d <= tol * scale,
                    "{variant} step {k}: {what} differs by {d}"
                );
            };
            close("logits", &out.logits);
            close("q_halt_logits", &out.q_halt);
            close("q_continue_logits", &out.q_continue);
            close("z_H", &out.carry.y);
            close("z_L", &out.carry.z);
            carry = out.carry;
        }
    }
}

/// The first training-mode supervision step against the reference: the loss head's loss, lm and
/// q_halt losses, and (loss / B)'s gradient of every parameter and of the puzzle table, both
/// variants, within 1e-4 relative.
#[test]
fn the_first_training_step_has_the_reference_loss_and_gradients() {
    tch::set_num_threads(1);
    for variant in ["mlp", "att"] {
        let (f, mut m) = reference_model(variant);
        m.puzzle_table = m.puzzle_table.detach().set_requires_grad(true);
        let (inputs, ids, labels) = (
            f.get("batch.inputs").unwrap(),
            f.get("batch.puzzle_identifiers").unwrap(),
            f.get("batch.labels").unwrap(),
        );
        let b = inputs.size()[0];
        let step = m.step(&m.initial_carry(b), &inputs, &ids).unwrap();
        let l = muninn_model::trm::loss(&step, &labels).unwrap();
        for (what, ours) in [
            ("loss", &l.total),
            ("lm_loss", &l.lm),
            ("q_halt_loss", &l.q_halt),
        ] {
            let theirs = f.get(&format!("train.{what}")).unwrap().double_value(&[0]);
            let ours = ours.double_value(&[]);
            assert!(
                (ours - theirs).abs() <= 1e-5 * theirs.abs().max(1.0),
                "{variant}: {what} {ours} vs {theirs}"
            );
        }
        (&l.total / b as f64).backward();
        let mut grads = m.params().named_grads();
        grads.push(("inner.puzzle_emb.weights".into(), m.puzzle_table.grad()));
        for (name, g) in grads {
            let theirs = f.get(&format!("grad.{name}")).unwrap();
            let d = (&g.to_kind(Kind::Float) - &theirs)
                .abs()
                .max()
                .double_value(&[]);
            let scale = theirs.abs().max().double_value(&[]);
            assert!(
                scale > 0.0 && d <= 1e-4 * scale,
                "{variant}: grad of {name} differs by {d} (max {scale})"
            );
        }
    }
}

#[test]
fn slots_refill_only_halted_rows_and_halt_as_the_recipe_says() {
    use muninn_model::trm::{exploration_floors, Slots};
    tch::set_num_threads(1);
    let cfg = TrmConfig::preset("trm-sudoku4").unwrap();
    let m = Trm::new(cfg.clone(), Device::Cpu, muninn_model::Precision::F32).unwrap();
    m.init(2);
    let b = 4;
    let batch = |seed: i64| {
        tch::manual_seed(seed);
        (
            Tensor::randint(cfg.vocab_size, [b, cfg.seq_len], (Kind::Int64, Device::Cpu)),
            Tensor::randint(cfg.vocab_size, [b, cfg.seq_len], (Kind::Int64, Device::Cpu)),
            Tensor::zeros([b], (Kind::Int64, Device::Cpu)),
        )
    };
    let mut slots = Slots::new(&m, b);
    let (x1, y1, p1) = batch(1);
    slots.refill(&m, &x1, &y1, &p1);
    assert!(slots.inputs.equal(&x1), "the first refill fills every slot");
    let none = Tensor::zeros([b], (Kind::Int64, Device::Cpu));
    // Evaluation: no slot halts before N_sup, whatever q says.
    for k in 1..=cfg.halt_max_steps {
        let step = tch::no_grad(|| m.step(&slots.carry, &slots.inputs, &slots.puzzle_ids)).unwrap();
        slots.advance(&m, &step, false, &none);
        let halted = slots.halted.sum(Kind::Int64).int64_value(&[]);
        assert_eq!(
            halted,
            if k == cfg.halt_max_steps { b } else { 0 },
            "step {k}"
        );
        if k < cfg.halt_max_steps {
            // Not halted: a refill keeps the slot's row and states.
            let (x2, y2, p2) = batch(10 + k);
            let before = slots.carry.y.copy();
            slots.refill(&m, &x2, &y2, &p2);
            assert!(slots.inputs.equal(&x1) && slots.carry.y.equal(&before));
        }
    }
    // Training: q_halt > 0 halts at once, unless exploration holds the slot back.
    let mut step = tch::no_grad(|| m.step(&slots.carry, &slots.inputs, &slots.puzzle_ids)).unwrap();
    step.q_halt = Tensor::from_slice(&[1.0f32, -1.0, 1.0, 1.0]);
    slots.steps = Tensor::from_slice(&[0i64, 0, 0, 0]);
    let floors = Tensor::from_slice(&[0i64, 0, 3, 1]);
    slots.advance(&m, &step, true, &floors);
    let halted: Vec<bool> = (0..b)
        .map(|i| slots.halted.int64_value(&[i]) == 1)
        .collect();
    assert_eq!(halted, [true, false, false, true]);
    // Halted slots take fresh rows and restart from the init states; the others keep theirs.
    let (x3, y3, p3) = batch(99);
    let kept_y = slots.carry.y.get(1).copy();
    slots.refill(&m, &x3, &y3, &p3);
    assert!(slots.inputs.get(0).equal(&x3.get(0)) && slots.inputs.get(1).equal(&x1.get(1)));
    assert!(slots.carry.y.get(1).equal(&kept_y));
    assert!(slots.carry.y.get(0).equal(&m.initial_carry(1).y.get(0)));
    assert_eq!(slots.steps.int64_value(&[0]), 0);

    // Exploration floors: a pure function of (seed, step, global row), about `prob` of them set.
    let all = exploration_floors(5, 7, 0..1000, 0.1, 16);
    assert_eq!(
        exploration_floors(5, 7, 500..1000, 0.1, 16),
        all[500..].to_vec()
    );
    let set = all.iter().filter(|&&k| k > 0).count();
    assert!((60..140).contains(&set), "{set} of 1000");
    assert!(all.iter().all(|&k| k == 0 || (2..=16).contains(&k)));
    assert_ne!(exploration_floors(5, 8, 0..1000, 0.1, 16), all);
}

/// The fixture of `variant` and a model holding its weights, init states and puzzle table.
fn reference_model(variant: &str) -> (muninn_model::st::StFile, Trm) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../tests/fixtures/trm/{variant}.safetensors"));
    let f = muninn_model::st::StFile::open(&path).unwrap();
    let mut cfg = TrmConfig::preset("trm-sudoku4").unwrap();
    cfg.num_puzzle_identifiers = 2;
    if variant == "att" {
        cfg.mlp_t = false;
        cfg.pos_encodings = muninn_model::trm::PosEncoding::Rope;
    }
    let m = Trm::new(cfg, Device::Cpu, muninn_model::Precision::F32).unwrap();
    for spec in param_specs(m.config()) {
        m.params()
            .set(&spec.name, &f.get(&spec.name).unwrap())
            .unwrap();
    }
    tch::no_grad(|| {
        m.h_init
            .shallow_clone()
            .copy_(&f.get("inner.H_init").unwrap());
        m.l_init
            .shallow_clone()
            .copy_(&f.get("inner.L_init").unwrap());
        m.puzzle_table
            .shallow_clone()
            .copy_(&f.get("inner.puzzle_emb.weights").unwrap());
    });
    (f, m)
}
