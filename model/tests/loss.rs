//! The fused linear cross-entropy against autograd through the plain one.

use muninn_model::loss::{cross_entropy, cross_entropy_sum, linear_cross_entropy, IGNORE};
use tch::{Device, Kind, Tensor};

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[])
}

#[test]
fn fused_loss_and_gradients_match_autograd_over_several_chunks() {
    tch::set_num_threads(1);
    tch::manual_seed(3);
    // 2,100 rows of 4,096 logits: chunks of 64 rows (1 MiB), the last one short.
    let (n, d, v) = (2100, 24, 4096);
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([n, d], opts).set_requires_grad(true);
    let head = (Tensor::randn([v, d], opts) * 0.3).set_requires_grad(true);
    let targets = Tensor::randint(v, [n], (Kind::Int64, Device::Cpu));

    let loss = cross_entropy(&x.matmul(&head.tr()).unsqueeze(0), &targets.unsqueeze(0)).unwrap();
    loss.backward();

    // The fused gradient adds into what the head's gradient already holds.
    let before = Tensor::randn([v, d], opts) * 1e-5; // small: the difference below stays exact
    let grad_head = before.copy();
    let (fused, grad_x) = tch::no_grad(|| {
        linear_cross_entropy(
            &x.detach(),
            &head.detach(),
            &targets,
            &grad_head,
            1.0 / n as f64,
        )
    })
    .unwrap();
    let l = loss.double_value(&[]);
    assert!(
        (fused.double_value(&[]) - l).abs() < 1e-6 * l,
        "{fused:?} vs {l}"
    );
    assert!(
        rel(&grad_x, &x.grad()) < 1e-5,
        "∂L/∂x differs by {:e}",
        rel(&grad_x, &x.grad())
    );
    let gh = &grad_head - &before;
    assert!(
        rel(&gh, &head.grad()) < 1e-5,
        "∂L/∂head differs by {:e}",
        rel(&gh, &head.grad())
    );
}

#[test]
fn fused_loss_refuses_mismatched_shapes() {
    let opts = (Kind::Float, Device::Cpu);
    let (x, head) = (Tensor::zeros([4, 8], opts), Tensor::zeros([16, 8], opts));
    let err = linear_cross_entropy(
        &x,
        &head,
        &Tensor::zeros([5], (Kind::Int64, Device::Cpu)),
        &head,
        1.0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("expected [4]"), "{err}");
    let err = linear_cross_entropy(
        &x,
        &Tensor::zeros([16, 7], opts),
        &Tensor::zeros([4], (Kind::Int64, Device::Cpu)),
        &head,
        1.0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("head is [16, 7]"), "{err}");
}

#[test]
fn ignored_targets_take_no_part_and_a_batch_of_none_gives_zero() {
    tch::set_num_threads(1);
    tch::manual_seed(4);
    let (n, d, v) = (300, 16, 512);
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([n, d], opts).set_requires_grad(true);
    let head = (Tensor::randn([v, d], opts) * 0.3).set_requires_grad(true);
    // Every third target is ignored.
    let targets = Tensor::randint(v, [n], (Kind::Int64, Device::Cpu));
    let ignored = Tensor::arange(n, (Kind::Int64, Device::Cpu))
        .remainder(3)
        .eq(0);
    let targets = targets.masked_fill(&ignored, IGNORE);
    let (sum, count) =
        cross_entropy_sum(&x.matmul(&head.tr()).unsqueeze(0), &targets.unsqueeze(0)).unwrap();
    assert_eq!(count.int64_value(&[]), 200);
    let scale = 0.37;
    (&sum * scale).backward();

    let grad_head = Tensor::zeros([v, d], opts);
    let (fused, grad_x) = tch::no_grad(|| {
        linear_cross_entropy(&x.detach(), &head.detach(), &targets, &grad_head, scale)
    })
    .unwrap();
    let want = sum.double_value(&[]) * scale;
    assert!(
        (fused.double_value(&[]) - want).abs() < 1e-6 * want,
        "{fused:?} vs {want}"
    );
    assert!(rel(&grad_x, &x.grad()) < 1e-5);
    assert!(rel(&grad_head, &head.grad()) < 1e-5);
    // Ignored rows get no gradient at all.
    let rows = grad_x.index_select(0, &ignored.nonzero().squeeze_dim(1));
    assert_eq!(rows.abs().max().double_value(&[]), 0.0);

    // A batch where nothing counts: zero loss, zero gradient, no NaN.
    let none = Tensor::full([n], IGNORE, (Kind::Int64, Device::Cpu));
    let grad_head = Tensor::zeros([v, d], opts);
    let (loss, grad_x) = tch::no_grad(|| {
        linear_cross_entropy(&x.detach(), &head.detach(), &none, &grad_head, scale)
    })
    .unwrap();
    assert_eq!(loss.double_value(&[]), 0.0);
    assert_eq!(grad_x.abs().max().double_value(&[]), 0.0);
    assert_eq!(grad_head.abs().max().double_value(&[]), 0.0);
}
