//! The language-model loss: mean cross-entropy over the tied head, plain (for evaluation) and fused
//! with its own backward (for training).

use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

/// Mean cross-entropy in fp32 over all positions. logits [B, T, V], targets [B, T] (i64).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (b, t, v) = logits.size3()?;
    ensure!(
        targets.size() == [b, t],
        "targets have shape {:?}, logits {:?}",
        targets.size(),
        logits.size()
    );
    Ok(logits
        .reshape([b * t, v])
        .to_kind(Kind::Float)
        .cross_entropy_for_logits(&targets.reshape([b * t])))
}

/// The smallest chunk of logits [`linear_cross_entropy`] makes, in elements (1 MiB fp32): large
/// enough for efficient matmuls, small enough to stay in a CPU's cache.
const MIN_CHUNK_ELEMENTS: i64 = 1 << 18;

/// Mean cross-entropy of the logits `x · headᵀ` against `targets`, and its gradients, without ever
/// holding all [N, V] logits or their gradient (the chunked "linear cross-entropy" of Liger-Kernel
/// and torchtune). Each chunk of rows makes its logits (fp32, as [`cross_entropy`]), the loss and
///   ∂L/∂logits = (softmax − onehot(target)) / N,
/// which gives the chunk's ∂L/∂x at once and is added into `grad_head` (fp32, [V, d]), then is
/// freed. Against autograd through [`cross_entropy`] this skips the log-softmax backward and the
/// zero-filled one-hot gradient, and at a 65k vocabulary the multi-GiB logits tensor.
///
/// x [N, d] and head [V, d] in the compute dtype, targets [N] (i64), under `no_grad`. Returns the
/// detached mean loss (fp32 scalar) and ∂L/∂x [N, d] in x's dtype.
pub fn linear_cross_entropy(
    x: &Tensor,
    head: &Tensor,
    targets: &Tensor,
    grad_head: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (n, d) = x.size2()?;
    let (v, dh) = head.size2()?;
    ensure!(dh == d, "head is [{v}, {dh}], hidden states [{n}, {d}]");
    ensure!(
        targets.size() == [n],
        "targets have shape {:?}, expected [{n}]",
        targets.size()
    );
    let inv_n = 1.0 / n as f64;
    // A chunk's logits are no larger than the hidden states themselves (Liger-Kernel's rule).
    let rows = ((n * d).max(MIN_CHUNK_ELEMENTS) / v).clamp(1, n.max(1));
    let mut loss = Tensor::zeros([], (Kind::Float, x.device()));
    let grad_x = x.zeros_like();
    let mut start = 0;
    while start < n {
        let len = rows.min(n - start);
        let xc = x.narrow(0, start, len); // [n_c, d]
        let tc = targets.narrow(0, start, len).unsqueeze(1); // [n_c, 1]
        let mut logp = xc
            .matmul(&head.tr())
            .to_kind(Kind::Float)
            .log_softmax(-1, Kind::Float); // [n_c, V]
        loss -= logp.gather(1, &tc, false).sum(Kind::Float);
        let mut g = logp.exp_(); // softmax, in place
        let _ = g.scatter_add_(
            1,
            &tc,
            &Tensor::full([len, 1], -1.0, (Kind::Float, x.device())),
        );
        let g = g.to_kind(x.kind());
        // The 1/N goes on the small [n_c, d] sides of the two matmuls, not on the [n_c, V] one.
        grad_x
            .narrow(0, start, len)
            .copy_(&(g.matmul(head) * inv_n));
        let xs = &xc * inv_n;
        let mut acc = grad_head.shallow_clone();
        if g.kind() == Kind::Float {
            let _ = acc.addmm_(&g.tr(), &xs); // straight into the gradient buffer
        } else {
            let _ = acc.g_add_(&g.tr().matmul(&xs).to_kind(Kind::Float));
        }
        start += len;
    }
    Ok((loss * inv_n, grad_x))
}
