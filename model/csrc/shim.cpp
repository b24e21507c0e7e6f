// The few libtorch calls Muninn needs that tch 0.24 does not expose. Plain C entry points over tch's
// `at::Tensor*` handles; errors come back as malloc'd strings (freed by the caller), never as
// exceptions across the FFI boundary.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/full.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include "error.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

namespace {

using muninn::error_string;

// A wrapper around libtorch's CPU allocator that counts what passes through it: current and peak
// bytes, and allocations at least `threshold` bytes large. Installed once per process, on request.
struct CountingAllocator final : c10::Allocator {
  c10::Allocator* inner = nullptr;
  std::atomic<uint64_t> current{0}, peak{0}, large{0}, threshold{UINT64_MAX};

  struct Ctx {
    c10::DataPtr inner;
    size_t n;
    CountingAllocator* owner;
  };

  static void free_ctx(void* p) {
    auto* c = static_cast<Ctx*>(p);
    c->owner->current.fetch_sub(c->n);
    delete c;  // frees the inner allocation through its own deleter
  }

  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr d = inner->allocate(n);
    void* data = d.get();
    c10::Device device = d.device();
    uint64_t now = current.fetch_add(n) + n;
    uint64_t p = peak.load();
    while (now > p && !peak.compare_exchange_weak(p, now)) {
    }
    if (n >= threshold.load()) large.fetch_add(1);
    return c10::DataPtr(data, new Ctx{std::move(d), n, this}, &free_ctx, device);
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

CountingAllocator* counting() {
  static CountingAllocator* a = [] {
    auto* c = new CountingAllocator();  // lives as long as the process: tensors may outlive main
    c->inner = c10::GetCPUAllocator();
    c10::SetCPUAllocator(c, /*priority=*/UINT8_MAX);
    return c;
  }();
  return a;
}

}  // namespace

extern "C" {

// t.grad = g: the gradient autograd accumulates into, in place, from now on. `g` must have t's
// shape, dtype and device; it may be a view (of a flat gradient buffer).
char* muninn_set_grad(at::Tensor* t, at::Tensor* g) {
  try {
    TORCH_CHECK(t->is_leaf() && t->requires_grad(), "set_grad: not a leaf that requires grad");
    TORCH_CHECK(t->sizes() == g->sizes(), "set_grad: gradient shape ", g->sizes(),
                " differs from the tensor's ", t->sizes());
    TORCH_CHECK(t->dtype() == g->dtype() && t->device() == g->device(),
                "set_grad: gradient dtype/device differ from the tensor's");
    t->mutable_grad() = *g;
    return nullptr;
  } catch (const std::exception& e) {
    return error_string(e.what());
  }
}

// torch.autograd.backward(t, grad_tensors=g): backpropagates the vector-Jacobian product of g
// (t's shape) through t's graph, freeing it, without a `(t * g).sum()` surrogate.
char* muninn_backward(at::Tensor* t, at::Tensor* g) {
  try {
    torch::autograd::backward({*t}, {*g});
    return nullptr;
  } catch (const std::exception& e) {
    return error_string(e.what());
  }
}

// Whether autograd records operations on this thread (false inside tch::no_grad).
bool muninn_grad_mode_enabled() { return c10::GradMode::is_enabled(); }

// Routes libtorch's CPU allocations through the counter from now on (idempotent) and resets it:
// peak := current, and allocations of at least `threshold` bytes are counted from zero.
void muninn_cpu_alloc_reset(uint64_t threshold) {
  auto* c = counting();
  c->peak.store(c->current.load());
  c->large.store(0);
  c->threshold.store(threshold);
}

// {bytes allocated now, peak since the reset, allocations >= threshold since the reset}, counting
// only memory allocated after the first reset.
void muninn_cpu_alloc_stats(uint64_t* out) {
  auto* c = counting();
  out[0] = c->current.load();
  out[1] = c->peak.load();
  out[2] = c->large.load();
}

// torch.optim.AdamW(fused=True)'s kernel over n tensors (one pass over p, g, m, v each; CPU and
// CUDA): decoupled decay p *= 1 - lr·wd, moments, bias corrections at `step` (1-based), update.
char* muninn_fused_adamw(at::Tensor** p, at::Tensor** g, at::Tensor** m, at::Tensor** v, int64_t n,
                         double lr, double beta1, double beta2, double weight_decay, double eps,
                         int64_t step) {
  try {
    std::vector<at::Tensor> ps, gs, ms, vs, steps;
    if (n == 0) return nullptr;
    at::Tensor t = at::full({}, static_cast<double>(step), p[0]->options().dtype(at::kFloat));
    for (int64_t i = 0; i < n; ++i) {
      ps.push_back(*p[i]);
      gs.push_back(*g[i]);
      ms.push_back(*m[i]);
      vs.push_back(*v[i]);
      steps.push_back(t);
    }
    at::_fused_adamw_(ps, gs, ms, vs, {}, steps, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false);
    return nullptr;
  } catch (const std::exception& e) {
    return error_string(e.what());
  }
}

// The caching allocator of device `index` of type CUDA (ROCm builds too): {allocated now, allocated
// peak, reserved now, reserved peak} in bytes, aggregated over pools.
char* muninn_cuda_memory(int64_t index, int64_t* out) {
  try {
    auto* a = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    auto d = static_cast<c10::DeviceIndex>(index);
    auto stats = a->getDeviceStats(d);
    auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    out[0] = stats.allocated_bytes[agg].current;
    out[1] = stats.allocated_bytes[agg].peak;
    out[2] = stats.reserved_bytes[agg].current;
    out[3] = stats.reserved_bytes[agg].peak;
    return nullptr;
  } catch (const std::exception& e) {
    return error_string(e.what());
  }
}

// libtorch's CPU profiler (what torch.profiler records): every operator call from now on, on every
// thread, until muninn_profiler_stop.
char* muninn_profiler_start() {
  try {
    using namespace torch::profiler::impl;
    ProfilerConfig config(ProfilerState::KINETO, /*report_input_shapes=*/true,
                          /*profile_memory=*/false, /*with_stack=*/false, /*with_flops=*/false,
                          /*with_modules=*/false);
    std::set<ActivityType> activities{ActivityType::CPU};
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
    return nullptr;
  } catch (const std::exception& e) {
    return error_string(e.what());
  }
}

// Ends the profile started by muninn_profiler_start and writes it as a Chrome trace (Perfetto).
char* muninn_profiler_stop(const char* path) {
  try {
    auto result = torch::autograd::profiler::disableProfiler();
    TORCH_CHECK(result, "profiler_stop: no profile was running");
    result->save(path);
    return nullptr;
  } catch (const std::exception& e) {
    return error_string(e.what());
  }
}

}  // extern "C"
