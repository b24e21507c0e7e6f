//! A first end-to-end check of TRM's pieces before they become a trainer family: the tiny CPU
//! recipe of `trm-reference.md` §6 on generated sudoku — deep supervision over persistent slots,
//! AdamATan2 with warmup, sign-SGD on the puzzle embedding, EMA, and exact accuracy of the EMA
//! weights on held-out puzzles after N_sup steps. Prints `step, seconds, exact accuracy` lines.
//!
//!   cargo run --release -p muninn-trainer --example trm_sudoku -- [BOX=2x2] [STEPS=800]

use std::time::Instant;

use anyhow::Result;
use muninn_data::sudoku::{generate, tokens, Boxes, PuzzleLoader, PuzzleSet};
use muninn_model::trm::{exploration_floors, loss, Slots, Trm, TrmConfig};
use muninn_trainer::optim::{adam_atan2_, sign_sgd_rows_, Ema};
use tch::{Device, Kind, Tensor};

fn main() -> Result<()> {
    tch::set_num_threads(1);
    let args: Vec<String> = std::env::args().collect();
    let boxes: Boxes = args.get(1).map_or("2x2", String::as_str).parse()?;
    let steps: u64 = args.get(2).map_or(Ok(800), |s| s.parse())?;
    let n = boxes.n();
    let mut cfg =
        TrmConfig::preset(if n == 4 { "trm-sudoku4" } else { "trm-sudoku6" }).expect("preset");
    cfg.seq_len = (n * n) as i64;
    cfg.vocab_size = n as i64 + 2;
    let (b, lr, wd, warmup, ema_decay, seed) = (32i64, 1e-3, 0.1, 200u64, 0.995, 0u64);

    let train = PuzzleSet {
        boxes,
        pairs: generate(boxes, 1000, seed, 0),
    };
    let test = generate(boxes, 200, seed, 1);
    let (tx, ty, _) = tokens(&test, boxes);
    let shape = [test.len() as i64, cfg.seq_len];
    let (test_x, test_y) = (
        Tensor::from_slice(&tx).view(shape),
        Tensor::from_slice(&ty).view(shape),
    );

    let mut m = Trm::new(cfg.clone(), Device::Cpu)?;
    m.init(seed);
    m.puzzle_table = m.puzzle_table.set_requires_grad(true);
    let mut flat = m.params().flat().detach();
    let (mut mom, mut var) = (flat.zeros_like(), flat.zeros_like());
    let mut ema = Ema::new(&flat, ema_decay);
    let mut loader = PuzzleLoader::new(&train, seed, true);
    let mut slots = Slots::new(&m, b);
    let ids = Tensor::zeros([b], (Kind::Int64, Device::Cpu));
    let start = Instant::now();
    let evaluate = |m: &Trm, ema: &Ema, flat: &mut Tensor| -> Result<f64> {
        let saved = flat.copy();
        tch::no_grad(|| flat.copy_(&ema.weights));
        let test_ids = Tensor::zeros([shape[0]], (Kind::Int64, Device::Cpu));
        let mut carry = m.initial_carry(shape[0]);
        let mut last = None;
        for _ in 0..cfg.halt_max_steps {
            let s = tch::no_grad(|| m.step(&carry, &test_x, &test_ids))?;
            carry = muninn_model::trm::Carry {
                y: s.carry.y.shallow_clone(),
                z: s.carry.z.shallow_clone(),
            };
            last = Some(s);
        }
        tch::no_grad(|| flat.copy_(&saved));
        let l = loss(&last.expect("a step"), &test_y)?;
        Ok(l.row_correct
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]))
    };
    for step in 1..=steps {
        let batch = loader.next_batch(0, 1, b as usize);
        let (x, y) = (
            Tensor::from_slice(&batch.inputs).view([b, cfg.seq_len]),
            Tensor::from_slice(&batch.labels).view([b, cfg.seq_len]),
        );
        slots.refill(&m, &x, &y, &ids);
        let out = m.step(&slots.carry, &slots.inputs, &slots.puzzle_ids)?;
        let l = loss(&out, &slots.labels)?;
        (&l.total / b as f64).backward();
        let floors = Tensor::from_slice(&exploration_floors(
            seed,
            step,
            0..b as u64,
            cfg.halt_exploration_prob,
            cfg.halt_max_steps,
        ));
        slots.advance(&m, &out, true, &floors);
        let lr_t = lr * (step as f64 / warmup as f64).min(1.0);
        let grad = m.params().flat().grad();
        adam_atan2_(
            &mut flat,
            &grad,
            &mut mom,
            &mut var,
            step,
            lr_t,
            (0.9, 0.95),
            wd,
        );
        let table_grad = m.puzzle_table.grad();
        let zero = Tensor::zeros([1], (Kind::Int64, Device::Cpu));
        sign_sgd_rows_(
            &mut m.puzzle_table.detach(),
            &zero,
            &table_grad.narrow(0, 0, 1),
            lr_t,
            wd,
        );
        let _ = grad.shallow_clone().zero_();
        let _ = table_grad.shallow_clone().zero_();
        ema.update(&flat);
        if step % 100 == 0 || step == steps {
            let acc = evaluate(&m, &ema, &mut flat)?;
            let mean_steps = slots
                .steps
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[]);
            println!(
                "step {step} {:.1} s exact {:.3} loss {:.4} slot steps {mean_steps:.2}",
                start.elapsed().as_secs_f64(),
                acc,
                l.total.double_value(&[]) / b as f64
            );
        }
    }
    Ok(())
}
