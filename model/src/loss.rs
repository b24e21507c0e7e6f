//! The language-model loss: mean cross-entropy over the tied head, plain (for evaluation) and fused
//! with its own backward (for training).

use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

/// The target label that takes no part in the loss (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// Mean cross-entropy in fp32 over the positions whose target is not [`IGNORE`]. logits [B, T, V],
/// targets [B, T] (i64). NaN when no target counts; [`cross_entropy_sum`] has no such case.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (logits, targets) = rows(logits, targets)?;
    Ok(logits.cross_entropy_for_logits(&targets))
}

/// logits [B, T, V] and targets [B, T] as rows: fp32 [B·T, V] and [B·T].
fn rows(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let (b, t, v) = logits.size3()?;
    ensure!(
        targets.size() == [b, t],
        "targets have shape {:?}, logits {:?}",
        targets.size(),
        logits.size()
    );
    Ok((
        logits.reshape([b * t, v]).to_kind(Kind::Float),
        targets.reshape([b * t]),
    ))
}

/// (Σ cross-entropy over the targets that count, how many count), fp32 and i64 scalars: what a
/// token-weighted mean over several batches (or ranks) adds up.
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let (logits, targets) = rows(logits, targets)?;
    let sum = logits.log_softmax(-1, Kind::Float).g_nll_loss(
        &targets,
        None::<Tensor>,
        tch::Reduction::Sum,
        IGNORE,
    );
    Ok((sum, valid_targets(&targets)))
}

/// How many targets count (are not [`IGNORE`]), as an i64 scalar on their device.
pub fn valid_targets(targets: &Tensor) -> Tensor {
    targets.ne(IGNORE).sum(Kind::Int64)
}

/// The smallest chunk of logits [`linear_cross_entropy`] makes, in elements (1 MiB fp32): large
/// enough for efficient matmuls, small enough to stay in a CPU's cache.
const MIN_CHUNK_ELEMENTS: i64 = 1 << 18;

/// L = scale · Σ_t CE(x_t · headᵀ, target_t) over the targets that count (not [`IGNORE`]), and its
/// gradients: [`linear_cross_entropy_weighted`] with one weight for every target. Returns the
/// detached L (fp32 scalar) and ∂L/∂x [N, d] in x's dtype. With scale = 1/N and every target
/// counting, L is the mean cross-entropy.
pub fn linear_cross_entropy(
    x: &Tensor,
    head: &Tensor,
    targets: &Tensor,
    grad_head: &Tensor,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    let weights = Tensor::full([], scale, (Kind::Float, x.device()));
    let (values, grad_x) = linear_cross_entropy_weighted(x, head, targets, grad_head, &weights)?;
    Ok((values.total, grad_x))
}

/// The detached values of a fused loss.
pub struct LossValues {
    /// Each row's (or position's) cross-entropy, fp32, zero where the target does not count,
    /// unweighted.
    pub ce: Tensor,
    /// L = Σ w · CE, an fp32 scalar: summed chunk by chunk, and a weight shared by every row
    /// applied once to the sum (so plain next-token training reports the loss it always did, to
    /// the bit).
    pub total: Tensor,
}

/// L = Σ_t w_t · CE(x_t · headᵀ, target_t) over the targets that count (not [`IGNORE`]), and its
/// gradients, without ever holding all [N, V] logits or their gradient (the chunked "linear
/// cross-entropy" of Liger-Kernel and torchtune). Each chunk of rows makes its logits (fp32, as
/// [`cross_entropy`]), the loss and
///   ∂L/∂logits = w · (softmax − onehot(target)),  zero for the rows that do not count,
/// which gives the chunk's ∂L/∂x at once and is added into `grad_head` (fp32, [V, d]), then is
/// freed. Against autograd through [`cross_entropy`] this skips the log-softmax backward and the
/// zero-filled one-hot gradient, and at a 65k vocabulary the multi-GiB logits tensor.
///
/// x [N, d] and head [V, d] in the compute dtype, targets [N] (i64), `weights` fp32 of [N] or a
/// scalar, under `no_grad`. Returns the detached values (each row's cross-entropy [N] and L) and
/// ∂L/∂x [N, d] in x's dtype.
pub fn linear_cross_entropy_weighted(
    x: &Tensor,
    head: &Tensor,
    targets: &Tensor,
    grad_head: &Tensor,
    weights: &Tensor,
) -> Result<(LossValues, Tensor)> {
    let (n, d) = x.size2()?;
    let (v, dh) = head.size2()?;
    ensure!(dh == d, "head is [{v}, {dh}], hidden states [{n}, {d}]");
    ensure!(
        targets.size() == [n],
        "targets have shape {:?}, expected [{n}]",
        targets.size()
    );
    ensure!(
        weights.dim() == 0 || weights.size() == [n],
        "loss weights have shape {:?}, expected [] or [{n}]",
        weights.size()
    );
    let shared = weights.dim() == 0;
    let weights = weights.to_kind(Kind::Float).to_device(x.device());
    let row_weights = weights.expand([n], false);
    // A chunk's logits are no larger than the hidden states themselves (Liger-Kernel's rule).
    let rows = ((n * d).max(MIN_CHUNK_ELEMENTS) / v).clamp(1, n.max(1));
    let ce = Tensor::zeros([n], (Kind::Float, x.device()));
    let mut total = Tensor::zeros([], (Kind::Float, x.device()));
    let grad_x = x.zeros_like();
    let mut start = 0;
    while start < n {
        let len = rows.min(n - start);
        let xc = x.narrow(0, start, len); // [n_c, d]
        let tc = targets.narrow(0, start, len).unsqueeze(1); // [n_c, 1]
                                                             // Rows that do not count take part with target 0 and weight 0.
        let counts = tc.ne(IGNORE).to_kind(Kind::Float);
        let tc = tc.clamp_min(0);
        let wc = row_weights.narrow(0, start, len);
        let weight = &counts * wc.unsqueeze(1); // [n_c, 1]
        let mut logp = xc
            .matmul(&head.tr())
            .to_kind(Kind::Float)
            .log_softmax(-1, Kind::Float); // [n_c, V]
        let mut ce_c = ce.narrow(0, start, len);
        ce_c.copy_(&(-(logp.gather(1, &tc, false) * &counts)).squeeze_dim(1));
        total += if shared {
            ce_c.sum(Kind::Float)
        } else {
            (&ce_c * &wc).sum(Kind::Float)
        };
        let mut g = logp.exp_(); // softmax, in place
        let _ = g.scatter_add_(
            1,
            &tc,
            &Tensor::full([len, 1], -1.0, (Kind::Float, x.device())),
        );
        let g = g.to_kind(x.kind());
        // The weights go on the small [n_c, d] sides of the two matmuls, not on the [n_c, V] one
        // (in fp32, rounded once to the compute dtype).
        grad_x
            .narrow(0, start, len)
            .copy_(&(g.matmul(head) * &weight));
        let xs = (&xc * &weight).to_kind(x.kind());
        let mut acc = grad_head.shallow_clone();
        if g.kind() == Kind::Float {
            let _ = acc.addmm_(&g.tr(), &xs); // straight into the gradient buffer
        } else {
            let _ = acc.g_add_(&g.tr().matmul(&xs).to_kind(Kind::Float));
        }
        start += len;
    }
    if shared {
        total *= &weights;
    }
    Ok((LossValues { ce, total }, grad_x))
}

/// What a language model's fused backward differentiates: L = Σ_t w_t · CE(logits_t, target_t)
/// over the targets [B, T] that count, the T tokens attending as `attend` says. Plain next-token
/// training weighs every target alike (the trainer's scale); TiDAR weighs its two halves.
pub struct LmLoss<'a> {
    pub targets: &'a Tensor,
    /// fp32: a scalar, or [T] (the same for every row).
    pub weights: Tensor,
    pub attend: &'a crate::block::Attend,
}

impl LmLoss<'_> {
    /// Every target weighed `scale` under causal attention.
    pub fn next_token<'a>(
        targets: &'a Tensor,
        scale: f64,
        attend: &'a crate::block::Attend,
    ) -> LmLoss<'a> {
        LmLoss {
            targets,
            weights: Tensor::full([], scale, (Kind::Float, targets.device())),
            attend,
        }
    }

    /// The fused loss over hidden states h [B, T, d] (detached here) and the tied or untied head:
    /// the loss's values (each position's cross-entropy [B, T]) and ∂L/∂h.
    pub(crate) fn fused(
        &self,
        h: &Tensor,
        head: &Tensor,
        grad_head: &Tensor,
    ) -> Result<(LossValues, Tensor)> {
        let (b, t, d) = h.size3()?;
        ensure!(
            self.targets.size() == [b, t],
            "targets have shape {:?}, expected [{b}, {t}]",
            self.targets.size()
        );
        let weights = match self.weights.dim() {
            0 => self.weights.shallow_clone(),
            _ => {
                ensure!(
                    self.weights.size() == [t],
                    "loss weights have shape {:?}, expected [{t}]",
                    self.weights.size()
                );
                self.weights
                    .to_device(h.device())
                    .expand([b, t], false)
                    .reshape([b * t])
            }
        };
        tch::no_grad(|| {
            let x = h.detach().reshape([b * t, d]).to_kind(head.kind());
            let targets = self.targets.reshape([b * t]);
            let (values, grad) =
                linear_cross_entropy_weighted(&x, head, &targets, grad_head, &weights)?;
            let values = LossValues {
                ce: values.ce.view([b, t]),
                ..values
            };
            Ok((values, grad.to_kind(h.kind()).view([b, t, d])))
        })
    }
}
