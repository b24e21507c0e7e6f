//! The fused CPU kernels (RMSNorm, RoPE) against the composite ATen versions the other devices and
//! dtypes use: values and gradients.

use muninn_model::block::{rms_norm, Positions, Rope};
use tch::{Device, Kind, Tensor};

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let b = b.to_kind(Kind::Double);
    (a.to_kind(Kind::Double) - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[])
}

/// Output and input gradients of `f` at `inputs`, under the upstream gradient `up`.
fn run(f: impl Fn(&[Tensor]) -> Tensor, inputs: &[Tensor], up: &Tensor) -> (Tensor, Vec<Tensor>) {
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.detach().set_requires_grad(true))
        .collect();
    let y = f(&leaves);
    (&y * up.to_kind(y.kind())).sum(Kind::Double).backward();
    (y.detach(), leaves.iter().map(Tensor::grad).collect())
}

#[test]
fn fused_rms_norm_matches_the_composite_in_double() {
    tch::set_num_threads(2); // the weight gradient sums per-thread partials
    tch::manual_seed(5);
    let x = Tensor::randn([3, 37, 96], (Kind::Float, Device::Cpu)) * 3.0;
    let w = Tensor::randn([96], (Kind::Float, Device::Cpu));
    let up = Tensor::randn([3, 37, 96], (Kind::Float, Device::Cpu));
    let norm = |t: &[Tensor]| rms_norm(&t[0], &t[1], 1e-6);
    let (y, g) = run(norm, &[x.shallow_clone(), w.shallow_clone()], &up);
    let (y64, g64) = run(
        norm,
        &[x.to_kind(Kind::Double), w.to_kind(Kind::Double)],
        &up,
    );
    assert!(
        rel(&y, &y64) < 1e-6,
        "output differs by {:e}",
        rel(&y, &y64)
    );
    assert!(
        rel(&g[0], &g64[0]) < 1e-5,
        "∂x differs by {:e}",
        rel(&g[0], &g64[0])
    );
    assert!(
        rel(&g[1], &g64[1]) < 1e-5,
        "∂w differs by {:e}",
        rel(&g[1], &g64[1])
    );
}

#[test]
fn fused_rope_matches_the_composite_on_a_strided_input_and_an_offset() {
    tch::set_num_threads(1);
    tch::manual_seed(6);
    let rope = Rope::new(16, 32, 10_000.0, Device::Cpu);
    // q of a fused qkv: [B, T, H, hd] with the T stride of three heads' worth.
    let qkv = Tensor::randn([2, 9, 3 * 4 * 16], (Kind::Float, Device::Cpu));
    let q = qkv.narrow(2, 0, 64).view([2, 9, 4, 16]);
    assert!(!q.is_contiguous());
    let up = Tensor::randn([2, 9, 4, 16], (Kind::Float, Device::Cpu));
    for pos in [0, 5] {
        let f = |t: &[Tensor]| rope.apply_at(&t[0], &Positions::From(pos)).unwrap();
        let (y, g) = run(f, &[q.shallow_clone()], &up);
        // In double the composite path runs (and computes in fp32, as the fused kernel).
        let (y64, g64) = run(f, &[q.to_kind(Kind::Double)], &up);
        assert!(
            rel(&y, &y64) < 1e-6,
            "pos {pos}: output differs by {:e}",
            rel(&y, &y64)
        );
        assert!(
            rel(&g[0], &g64[0]) < 1e-6,
            "pos {pos}: ∂x differs by {:e}",
            rel(&g[0], &g64[0])
        );
        // And the rotation does something: position 5 differs from position 0.
        assert!(pos == 0 || rel(&y, &q) > 1e-2);
    }
}
