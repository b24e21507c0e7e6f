//! Measurements for scripts/bench-step.sh that need the model from the inside (prints JSON lines):
//!
//! - `backward THREADS`: forward and backward time of one micro-step against the parameter count at
//!   a fixed number of tensors (the 1/2/1 layout, widths 256…1024; B×T = 4×64, (n, k) = (0, 2)).
//! - `memory THREADS`: peak libtorch CPU memory of one micro-step at r = 4, 16, 64 with k = 4 and
//!   activation checkpointing (the d512 bench shape; the shim's counting allocator, weights and the
//!   gradient buffer excluded).
//! - `tiny THREADS`: the best forward and forward + backward of 30 on a tiny shape, for quick
//!   before/after checks while working on the model.
//!
//! `cargo run --release -p muninn-model --example step_parts -- backward 1`

use std::time::Instant;

use muninn_model::shim::{cpu_alloc_reset, cpu_alloc_stats};
use muninn_model::{Depth, Huginn, HuginnConfig, InitState, Precision};
use tch::{Device, Kind, Tensor};

fn shape(d: i64, prelude: i64, core: i64, coda: i64) -> HuginnConfig {
    HuginnConfig::from_toml_str(&format!(
        "[model]\npreset = \"tiny\"\nn_embd = {d}\nn_heads = {}\nintermediate_size = {}\n\
         vocab_size = 4096\nn_layers_in_prelude = {prelude}\nn_layers_in_recurrent_block = {core}\n\
         n_layers_in_coda = {coda}\nmean_recurrence = 8\nmean_backprop_depth = 4\n",
        d / 64,
        4 * d
    ))
    .expect("a valid bench shape")
}

fn batch(b: i64, t: i64) -> (Tensor, Tensor) {
    let ids = (Tensor::arange(b * (t + 1), (Kind::Int64, Device::Cpu)) * 7919).remainder(4096);
    let ids = ids.view([b, t + 1]);
    (ids.narrow(1, 0, t), ids.narrow(1, 1, t))
}

fn model(cfg: HuginnConfig) -> Huginn {
    let m = Huginn::new(cfg, Device::Cpu, Precision::F32).expect("model");
    m.init(1);
    m
}

/// The best of `reps` (forward + loss, forward + loss + backward) wall times, seconds.
fn best_micro_step(m: &Huginn, x: &Tensor, y: &Tensor, depth: Depth, reps: usize) -> (f64, f64) {
    let (mut fwd, mut total) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..reps {
        let t0 = Instant::now();
        let out = m.forward(x, depth, &InitState::Zero).expect("forward");
        let _ = muninn_model::cross_entropy(&out.logits, y).expect("loss");
        fwd = fwd.min(t0.elapsed().as_secs_f64());
        drop(out);
        let t0 = Instant::now();
        let _ = m
            .loss_backward(x, y, depth, &InitState::Zero, false, &mut |_| {})
            .expect("backward");
        total = total.min(t0.elapsed().as_secs_f64());
    }
    (fwd, total)
}

fn backward() {
    let (x, y) = batch(4, 64);
    let depth = Depth::new(0, 2);
    for d in [256, 512, 768, 1024] {
        let m = model(shape(d, 1, 2, 1));
        let (fwd, total) = best_micro_step(&m, &x, &y, depth, 4);
        println!(
            "{{\"kind\": \"backward\", \"n_embd\": {d}, \"params\": {}, \"tensors\": {}, \
             \"forward_ms\": {:.2}, \"backward_ms\": {:.2}}}",
            m.params().numel(),
            m.params().specs().len(),
            fwd * 1e3,
            (total - fwd) * 1e3
        );
    }
}

fn memory() {
    let (x, y) = batch(4, 64);
    let m = model(shape(512, 2, 4, 2));
    // The gradient buffer is allocated by the first backward; measure from the second.
    let _ = m
        .loss_backward(
            &x,
            &y,
            Depth::new(0, 4),
            &InitState::Zero,
            true,
            &mut |_| {},
        )
        .expect("warm-up");
    for r in [4, 16, 64] {
        cpu_alloc_reset(u64::MAX);
        let base = cpu_alloc_stats().current;
        let _ = m
            .loss_backward(
                &x,
                &y,
                Depth::new(r - 4, 4),
                &InitState::Zero,
                true,
                &mut |_| {},
            )
            .expect("micro-step");
        let peak = cpu_alloc_stats().peak - base;
        println!(
            "{{\"kind\": \"memory\", \"r\": {r}, \"k\": 4, \"params\": {}, \"peak_bytes\": {peak}}}",
            m.params().numel()
        );
    }
}

fn tiny() {
    let (x, y) = batch(8, 64);
    let m = model(shape(128, 1, 2, 1));
    let depth = Depth::new(2, 2);
    let best = best_micro_step(&m, &x, &y, depth, 30);
    println!(
        "tiny forward {:.1} ms, forward+backward {:.1} ms",
        best.0 * 1e3,
        best.1 * 1e3
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: i32 = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(1);
    tch::set_num_threads(threads);
    match args.get(1).map(String::as_str) {
        Some("backward") => backward(),
        Some("memory") => memory(),
        Some("tiny") => tiny(),
        _ => {
            eprintln!("usage: step_parts backward|memory THREADS");
            std::process::exit(2);
        }
    }
}
