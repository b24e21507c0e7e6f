// Fused CPU kernels for the two elementwise parts of a sandwich block that libtorch runs as chains of
// small ops: RMSNorm (6 kernels forward, about 10 backward) and interleaved-pair RoPE (about 10 each
// way). Each is one autograd node and one pass over memory each way. fp32 on the CPU only: the Rust
// side keeps the composite ATen version for every other dtype and device (on a GPU the chain is
// cheap next to the matmuls, and bf16 inputs must round as the reference rounds them).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include "error.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

namespace {

using muninn::error_string;

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

constexpr int64_t kGrainRows = 16;

// y = (x · inv_rms) · w per row of x [N, d], inv_rms = 1/sqrt(mean(x²) + eps), in the reference's
// order of operations.
struct RmsNorm : torch::autograd::Function<RmsNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            double eps) {
    const int64_t d = x.size(-1), n = x.numel() / d;
    auto y = at::empty_like(x);
    auto inv = at::empty({n}, x.options());
    const float *px = x.data_ptr<float>(), *pw = w.data_ptr<float>();
    float *py = y.data_ptr<float>(), *pinv = inv.data_ptr<float>();
    at::parallel_for(0, n, kGrainRows, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* xr = px + r * d;
        float* yr = py + r * d;
        float ss = 0.f;  // in SIMD lanes: independent partial sums, as ATen's reductions
#pragma omp simd reduction(+ : ss)
        for (int64_t j = 0; j < d; ++j) ss += xr[j] * xr[j];
        const float iv = static_cast<float>(1.0 / std::sqrt(static_cast<double>(ss) / d + eps));
        pinv[r] = iv;
        for (int64_t j = 0; j < d; ++j) yr[j] = (xr[j] * iv) * pw[j];
      }
    });
    ctx->save_for_backward({x, w, inv});
    return y;
  }

  // ∂x = inv·g·w − x·inv³·Σ(g·w·x)/d;  ∂w = Σ_rows g·x·inv (per-thread partial sums, then added).
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &inv = saved[2];
    const at::Tensor g = grads[0].contiguous();
    const int64_t d = x.size(-1), n = x.numel() / d;
    auto gx = at::empty_like(x);
    const int threads = at::get_num_threads();
    auto partial = at::zeros({threads, d}, x.options());
    const float *px = x.data_ptr<float>(), *pw = w.data_ptr<float>(), *pg = g.data_ptr<float>(),
                *pinv = inv.data_ptr<float>();
    float *pgx = gx.data_ptr<float>(), *ppart = partial.data_ptr<float>();
    at::parallel_for(0, n, kGrainRows, [&](int64_t begin, int64_t end) {
      float* acc = ppart + at::get_thread_num() * d;
      for (int64_t r = begin; r < end; ++r) {
        const float *xr = px + r * d, *gr = pg + r * d;
        float* gxr = pgx + r * d;
        const float iv = pinv[r];
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < d; ++j) dot += gr[j] * pw[j] * xr[j];
        const float c = static_cast<float>(static_cast<double>(iv) * iv * iv * dot / d);
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) {
          gxr[j] = iv * gr[j] * pw[j] - c * xr[j];
          acc[j] += gr[j] * xr[j] * iv;
        }
      }
    });
    return {gx, partial.sum(0), at::Tensor()};
  }
};

// Rotates adjacent pairs (a, b) = (x[2i], x[2i+1]) of x [B, T, H, hd] (last dimension contiguous,
// any other strides) by the angle of token t: (a·cos − b·sin, b·cos + a·sin), cos/sin [T, hd/2]
// (every row at the same positions) or [B, T, hd/2] (each row its own).
// `sign` = −1 rotates back (the backward). Returns a contiguous [B, T, H, hd].
at::Tensor rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, float sign) {
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), hd = x.size(3), half = hd / 2;
  TORCH_CHECK(x.stride(3) == 1, "rope: the head dimension must be contiguous");
  auto out = at::empty({B, T, H, hd}, x.options());
  const int64_t sb = x.stride(0), st = x.stride(1), sh = x.stride(2);
  const float *px = x.data_ptr<float>(), *pc = cos.data_ptr<float>(), *ps = sin.data_ptr<float>();
  float* po = out.data_ptr<float>();
  const bool per_row = cos.dim() == 3;
  at::parallel_for(0, B * T, 4, [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / T, t = bt % T;
      const int64_t row = per_row ? bt : t;
      const float *c = pc + row * half, *s = ps + row * half;
      for (int64_t h = 0; h < H; ++h) {
        const float* xr = px + b * sb + t * st + h * sh;
        float* o = po + ((bt * H) + h) * hd;
        for (int64_t i = 0; i < half; ++i) {
          const float a = xr[2 * i], bb = xr[2 * i + 1], si = sign * s[i];
          o[2 * i] = a * c[i] - bb * si;
          o[2 * i + 1] = bb * c[i] + a * si;
        }
      }
    }
  });
  return out;
}

struct Rope : torch::autograd::Function<Rope> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    return rotate(x, cos, sin, 1.f);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    return {rotate(grads[0], saved[0], saved[1], -1.f), at::Tensor(), at::Tensor()};
  }
};

bool cpu_f32(const at::Tensor& t) { return t.device().is_cpu() && t.scalar_type() == at::kFloat; }

}  // namespace

extern "C" {

// *out = RmsNorm(x, w): x [..., d] contiguous fp32 on the CPU, w [d] fp32.
char* muninn_rms_norm(at::Tensor* x, at::Tensor* w, double eps, at::Tensor** out) {
  try {
    TORCH_CHECK(cpu_f32(*x) && cpu_f32(*w) && x->is_contiguous() && w->is_contiguous(),
                "rms_norm: needs contiguous fp32 CPU tensors");
    TORCH_CHECK(w->dim() == 1 && w->size(0) == x->size(-1), "rms_norm: weight ", w->sizes(),
                " for input ", x->sizes());
    *out = new at::Tensor(RmsNorm::apply(*x, *w, eps));
    return nullptr;
  } catch (const std::exception& e) {
    return error_string(e.what());
  }
}

// *out = RoPE(x) with cos/sin [T, hd/2] or [B, T, hd/2] (rows for x's positions): x [B, T, H, hd]
// fp32 CPU.
char* muninn_rope(at::Tensor* x, at::Tensor* cos, at::Tensor* sin, at::Tensor** out) {
  try {
    TORCH_CHECK(cpu_f32(*x) && cpu_f32(*cos) && cpu_f32(*sin), "rope: needs fp32 CPU tensors");
    TORCH_CHECK(x->dim() == 4 && x->size(3) % 2 == 0, "rope: input ", x->sizes());
    const auto shared = std::vector<int64_t>{x->size(1), x->size(3) / 2};
    const auto per_row = std::vector<int64_t>{x->size(0), x->size(1), x->size(3) / 2};
    const bool fits = cos->sizes() == shared || cos->sizes() == per_row;
    TORCH_CHECK(fits && sin->sizes() == cos->sizes() && cos->is_contiguous() &&
                    sin->is_contiguous(),
                "rope: cos/sin ", cos->sizes(), " for input ", x->sizes());
    *out = new at::Tensor(Rope::apply(*x, *cos, *sin));
    return nullptr;
  } catch (const std::exception& e) {
    return error_string(e.what());
  }
}

}  // extern "C"
