//! COCONUT's multi-pass forward on a real GPT: without latents it is the plain forward; with them
//! it equals the cache-free oracle that recomputes the prefix for every thought; and the answer's
//! loss reaches the first thought.

use muninn_model::coconut::{self, Latents};
use muninn_model::{cross_entropy, Gpt, GptConfig, Precision, IGNORE};
use tch::{Device, Kind, Tensor};

const LATENT: i64 = 250;
const START: i64 = 251;
const END: i64 = 252;
const PAD: i64 = 0;

fn gpt() -> Gpt {
    tch::set_num_threads(1);
    let mut cfg = GptConfig::preset("gpt-micro").unwrap();
    cfg.block_size = 64;
    let m = Gpt::new(cfg, Device::Cpu, Precision::F32).unwrap();
    m.init(5);
    m
}

/// Three aligned rows (as `muninn_data::coconut::align` lays them out): 2, 1 and 0 latents, the
/// first latents in column 4, left pads before shorter questions, right pads after.
fn batch() -> (Tensor, Tensor, Tensor, Tensor) {
    let l = LATENT;
    let rows: [[i64; 12]; 3] = [
        [5, 6, 7, START, l, l, END, 20, 21, 22, 23, 2],
        [PAD, 8, 9, START, l, END, 30, 31, 2, PAD, PAD, PAD],
        [11, 12, 13, 14, 15, 16, 17, 18, 2, PAD, PAD, PAD],
    ];
    let real: [[bool; 12]; 3] = [
        [true; 12],
        [
            false, true, true, true, true, true, true, true, true, false, false, false,
        ],
        [
            true, true, true, true, true, true, true, true, true, false, false, false,
        ],
    ];
    let pos: [[i64; 12]; 3] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        [0, 0, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0],
    ];
    let ids = Tensor::from_slice(rows.as_flattened()).view([3, 12]);
    let real = Tensor::from_slice(real.as_flattened()).view([3, 12]);
    let pos = Tensor::from_slice(pos.as_flattened()).view([3, 12]);
    // Next-token targets, supervised only after the end marker (the answer).
    let mut tgt = vec![IGNORE; 36];
    for (r, from) in [(0usize, 6usize), (1, 5), (2, 4)] {
        for c in from..11 {
            if real.get(r as i64).int64_value(&[c as i64 + 1]) == 1 {
                tgt[r * 12 + c] = ids.int64_value(&[r as i64, c as i64 + 1]);
            }
        }
    }
    let tgt = Tensor::from_slice(&tgt).view([3, 12]);
    (ids, pos, real, tgt)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn without_latents_the_multi_pass_forward_is_the_plain_one() {
    let g = gpt();
    let ids = Tensor::randint(240, [2, 10], (Kind::Int64, Device::Cpu));
    let pos = Tensor::arange(10, (Kind::Int64, Device::Cpu)).repeat([2, 1]);
    let real = Tensor::ones([2, 10], (Kind::Bool, Device::Cpu));
    let lm = g.latent().unwrap();
    let out = tch::no_grad(|| coconut::forward(&lm, &ids, &pos, &real, LATENT)).unwrap();
    assert!(out.thoughts.is_empty());
    let plain = tch::no_grad(|| g.forward(&ids)).unwrap();
    let d = max_diff(&lm.logits(&out.hidden), &plain.logits);
    assert!(d < 1e-5, "logits differ by {d}");
    let tgt = ids.roll([-1], [1]);
    let (a, b) = (
        cross_entropy(&lm.logits(&out.hidden), &tgt).unwrap(),
        cross_entropy(&plain.logits, &tgt).unwrap(),
    );
    assert!(max_diff(&a, &b) < 1e-6, "losses {a} vs {b}");
}

#[test]
fn the_cached_passes_equal_recomputing_the_prefix_for_every_thought() {
    let g = gpt();
    let (ids, pos, real, tgt) = batch();
    let lat = Latents::find(&ids, LATENT).unwrap().unwrap();
    assert_eq!(lat.first, 4);
    assert_eq!(
        Vec::<bool>::try_from(lat.present.flatten(0, -1)).unwrap(),
        [true, true, true, false, false, false]
    );
    let lm = g.latent().unwrap();
    let out = tch::no_grad(|| coconut::forward(&lm, &ids, &pos, &real, LATENT)).unwrap();
    assert_eq!(out.thoughts.len(), 2);
    let oracle = tch::no_grad(|| coconut::recompute(&lm, &ids, &pos, &real, LATENT)).unwrap();
    let (a, b) = (lm.logits(&out.hidden), lm.logits(&oracle));
    // Only real tokens' outputs matter (a left pad sees everything, and nothing sees it).
    let keep = real.unsqueeze(-1);
    let d = max_diff(&a.where_self(&keep, &b), &b);
    assert!(d < 1e-5, "logits differ by {d}");
    let (la, lb) = (
        cross_entropy(&a, &tgt).unwrap(),
        cross_entropy(&b, &tgt).unwrap(),
    );
    assert!(max_diff(&la, &lb) < 1e-5, "losses {la} vs {lb}");
    // The thought really is a hidden state: treating latents as ordinary tokens changes the answer.
    let tokens = tch::no_grad(|| g.forward(&ids)).unwrap().logits;
    assert!(max_diff(&a.get(0).narrow(0, 7, 4), &tokens.get(0).narrow(0, 7, 4)) > 1e-3);
}

#[test]
fn the_answer_loss_reaches_the_first_thought() {
    let g = gpt();
    let (ids, pos, real, tgt) = batch();
    let lm = g.latent().unwrap();
    let out = coconut::forward(&lm, &ids, &pos, &real, LATENT).unwrap();
    let loss = cross_entropy(&lm.logits(&out.hidden), &tgt).unwrap();
    let grads = Tensor::run_backward(&[&loss], &[&out.thoughts[0]], false, false);
    let norm = grads[0].get(0).norm().double_value(&[]);
    assert!(norm > 1e-6, "the first thought's gradient has norm {norm}");
    // Row 2 has no latent: its "thought" slot feeds nothing.
    assert_eq!(grads[0].get(2).abs().max().double_value(&[]), 0.0);
}

#[test]
fn scattered_latents_are_refused() {
    let l = LATENT;
    let ids = Tensor::from_slice(&[1i64, l, 3, l, 5, 6, 7, 8]).view([2, 4]);
    assert!(Latents::find(&ids, LATENT).is_err());
    let ids = Tensor::from_slice(&[1i64, l, 3, 4, 5, 6, l, 8]).view([2, 4]);
    let err = Latents::find(&ids, LATENT).unwrap_err().to_string();
    assert!(err.contains("align"), "{err}");
}

fn huginn() -> muninn_model::Huginn {
    tch::set_num_threads(1);
    let mut cfg = muninn_model::HuginnConfig::preset("micro").unwrap();
    cfg.block_size = 64;
    let m = muninn_model::Huginn::new(cfg, Device::Cpu, Precision::F32).unwrap();
    m.init(5);
    m
}

#[test]
fn huginn_thoughts_match_the_oracle_and_the_plain_forward() {
    use muninn_model::{Depth, InitState, Input};
    let h = huginn();
    // Two iterations without a graph and two with, from a zero state in every pass.
    let lm = h.latent(Depth::new(2, 2), InitState::Zero);
    let (ids, pos, real, tgt) = batch();
    let out = coconut::forward(&lm, &ids, &pos, &real, LATENT).unwrap();
    let oracle = tch::no_grad(|| coconut::recompute(&lm, &ids, &pos, &real, LATENT)).unwrap();
    let (a, b) = (lm.logits(&out.hidden), lm.logits(&oracle));
    let d = max_diff(&a.where_self(&real.unsqueeze(-1), &b), &b);
    assert!(d < 1e-5, "huginn logits differ by {d}");
    let loss = cross_entropy(&a, &tgt).unwrap();
    let lb = cross_entropy(&b, &tgt).unwrap();
    assert!(max_diff(&loss, &lb) < 1e-5, "losses {loss} vs {lb}");
    let grads = Tensor::run_backward(&[&loss], &[&out.thoughts[0]], false, false);
    assert!(grads[0].get(0).norm().double_value(&[]) > 1e-6);

    // No latents: the plain forward at the same depth.
    let plain_ids = Tensor::randint(240, [2, 10], (Kind::Int64, Device::Cpu));
    let p = Tensor::arange(10, (Kind::Int64, Device::Cpu)).repeat([2, 1]);
    let r = Tensor::ones([2, 10], (Kind::Bool, Device::Cpu));
    let multi = tch::no_grad(|| coconut::forward(&lm, &plain_ids, &p, &r, LATENT)).unwrap();
    let plain = tch::no_grad(|| {
        h.forward_with(
            Input::Ids(&plain_ids),
            &muninn_model::Attend::causal(),
            Depth::eval(4),
            &InitState::Zero,
        )
    })
    .unwrap();
    let d = max_diff(&multi.hidden, &plain.hidden);
    assert!(d < 1e-5, "huginn without latents differs by {d}");
}

#[test]
fn batched_cached_generation_equals_one_row_at_a_time_without_a_cache() {
    let g = gpt();
    let lm = g.latent().unwrap();
    let head = |h: &Tensor| lm.logits(h);
    let l = LATENT;
    let prompts = vec![
        vec![5i64, 6, 7, 8, START, l, l, END],
        vec![9i64, 10, START, l, l, END],
    ];
    let batched = coconut::generate(
        &lm,
        &head,
        &prompts,
        (LATENT, PAD),
        (12, 64),
        2,
        Device::Cpu,
    )
    .unwrap();
    for (p, got) in prompts.iter().zip(&batched) {
        let alone = coconut::generate(
            &lm,
            &head,
            std::slice::from_ref(p),
            (LATENT, PAD),
            (12, 64),
            2,
            Device::Cpu,
        )
        .unwrap()
        .remove(0);
        assert_eq!(got, &alone, "batched vs alone");
        // The oracle: recompute everything (thoughts included) for every new token.
        let mut seq = p.clone();
        let mut want = Vec::new();
        for _ in 0..12 {
            let t = seq.len() as i64;
            let ids = Tensor::from_slice(&seq).view([1, t]);
            let pos = Tensor::arange(t, (Kind::Int64, Device::Cpu)).view([1, t]);
            let real = Tensor::ones([1, t], (Kind::Bool, Device::Cpu));
            let h = tch::no_grad(|| coconut::recompute(&lm, &ids, &pos, &real, LATENT)).unwrap();
            let next = lm
                .logits(&h)
                .get(0)
                .get(-1)
                .argmax(-1, false)
                .int64_value(&[]);
            want.push(next);
            seq.push(next);
            if next == 2 {
                break;
            }
        }
        assert_eq!(got, &want, "cached vs recomputed");
    }
}

#[test]
fn a_warm_start_grows_the_vocabulary_from_the_init_token() {
    use muninn_model::checkpoint::{
        load_weights_grown, model_files, write_model_files, TensorFiles,
    };
    let src = gpt(); // vocabulary 256
    let dir = tempfile::tempdir().unwrap();
    write_model_files(&src, dir.path()).unwrap();
    let mut cfg = GptConfig::preset("gpt-micro").unwrap();
    cfg.block_size = 64;
    cfg.vocab_size = 259;
    let grown = Gpt::new(cfg, Device::Cpu, Precision::F32).unwrap();
    grown.init(9);
    let files = TensorFiles::open(&model_files(dir.path()).unwrap()).unwrap();
    assert_eq!(load_weights_grown(&grown, &files, Some(60)).unwrap(), 3);
    let embed = |m: &Gpt| {
        m.params()
            .named_detached()
            .into_iter()
            .find(|(n, _)| n == "model.embed_tokens.weight")
            .unwrap()
            .1
    };
    let (a, b) = (embed(&src), embed(&grown));
    assert_eq!(max_diff(&a, &b.narrow(0, 0, 256)), 0.0);
    for r in 256..259 {
        assert_eq!(
            max_diff(&a.get(60), &b.get(r)),
            0.0,
            "row {r} copies row 60"
        );
    }
    // Without an init row new rows are refused; a smaller model is refused outright.
    assert!(load_weights_grown(&grown, &files, None).is_err());
    let mut small = GptConfig::preset("gpt-micro").unwrap();
    small.vocab_size = 200;
    let small = Gpt::new(small, Device::Cpu, Precision::F32).unwrap();
    assert!(load_weights_grown(&small, &files, Some(1)).is_err());
}
