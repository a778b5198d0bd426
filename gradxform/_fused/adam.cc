// One pass of Adam / AdamW over every float32 leaf of a tree, parameters included.
//
// gradxform's `update_and_apply` calls this on CPU for a chain that ends in Adam's parts
// (see gradxform/_fused/adam.py, which builds the call and holds the reference equations).
// Per element, in float32 and in this order (the order XLA evaluates the per-leaf chain in):
//   m ← b1·m + (1−b1)·g          v ← b2·v + ((1−b2)·g)·g
//   u ← (m·r1) / (√(v·r2 [+ ε_root]) + ε)     r1 = 1/(1−b1^t), r2 = 1/(1−b2^t)
//   [u ← u + λ·p]                 p ← p + s·u   (s = −η_t)
// reading g, p, m, v once and writing p, m, v once. p, m and v are updated in place: the
// caller aliases each of those operands to its result.

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Scalars {
  float b1, c1, b2, c2, r1, r2, eps, eps_root, wd, scale;
};

struct Leaf {
  const float* g;
  float* p;
  float* m;
  float* v;
  int64_t n;
};

template <bool kRoot, bool kDecay>
void Elements(const Scalars& s, const float* __restrict g, float* __restrict p,
              float* __restrict m, float* __restrict v, int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; ++i) {
    const float gi = g[i];
    const float mi = s.b1 * m[i] + s.c1 * gi;
    const float vi = s.b2 * v[i] + (s.c2 * gi) * gi;
    m[i] = mi;
    v[i] = vi;
    float vh = vi * s.r2;
    if (kRoot) vh = vh + s.eps_root;
    float u = (mi * s.r1) / (std::sqrt(vh) + s.eps);
    if (kDecay) u = u + s.wd * p[i];
    p[i] = p[i] + s.scale * u;
  }
}

// Elements [lo, hi) of the leaves laid end to end.
template <bool kRoot, bool kDecay>
void Span(const Scalars& s, const std::vector<Leaf>& leaves, int64_t lo, int64_t hi) {
  int64_t base = 0;
  for (const Leaf& l : leaves) {
    const int64_t a = std::max(lo, base), b = std::min(hi, base + l.n);
    if (a < b) Elements<kRoot, kDecay>(s, l.g, l.p, l.m, l.v, a - base, b - base);
    base += l.n;
    if (base >= hi) break;
  }
}

int Cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// Splits the elements over the cores this process may run on, at least 64k elements a thread
// (below that, starting a thread costs more than the pass).
template <bool kRoot, bool kDecay>
void Run(const Scalars& s, const std::vector<Leaf>& leaves, int64_t total) {
  static const int cores = Cores();
  const int64_t parts = std::min<int64_t>(cores, total >> 16);
  if (parts <= 1) {
    Span<kRoot, kDecay>(s, leaves, 0, total);
    return;
  }
  const int64_t chunk = ((total + parts - 1) / parts + 15) / 16 * 16;
  std::vector<std::thread> helpers;
  for (int64_t t = 1; t < parts; ++t) {
    const int64_t lo = t * chunk, hi = std::min(total, lo + chunk);
    if (lo < hi) helpers.emplace_back([&s, &leaves, lo, hi] { Span<kRoot, kDecay>(s, leaves, lo, hi); });
  }
  Span<kRoot, kDecay>(s, leaves, 0, std::min(total, chunk));
  for (std::thread& h : helpers) h.join();
}

// Operands: scalars f32[10], then g, p, m, v for each leaf. Results: p, m, v for each leaf,
// aliased to the operands of the same name.
ffi::Error AdamApply(ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t root,
                     int64_t decay) {
  if (args.size() < 1 || (args.size() - 1) % 4 != 0 || rets.size() != (args.size() - 1) / 4 * 3)
    return ffi::Error::InvalidArgument("gx_adam_apply: expected 1 + 4k operands, 3k results");
  auto scalars = args.get<ffi::Buffer<ffi::F32>>(0);
  if (scalars.has_error() || scalars->element_count() != 10)
    return ffi::Error::InvalidArgument("gx_adam_apply: operand 0 must be f32[10]");
  const float* c = scalars->typed_data();
  const Scalars s{c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9]};
  const int64_t n_leaves = (args.size() - 1) / 4;
  std::vector<Leaf> leaves;
  leaves.reserve(n_leaves);
  int64_t total = 0;
  for (int64_t i = 0; i < n_leaves; ++i) {
    auto g = args.get<ffi::Buffer<ffi::F32>>(1 + 4 * i);
    auto p = rets.get<ffi::Buffer<ffi::F32>>(3 * i);
    auto m = rets.get<ffi::Buffer<ffi::F32>>(3 * i + 1);
    auto v = rets.get<ffi::Buffer<ffi::F32>>(3 * i + 2);
    if (g.has_error() || p.has_error() || m.has_error() || v.has_error())
      return ffi::Error::InvalidArgument("gx_adam_apply: every leaf must be float32");
    const int64_t n = g->element_count();
    if ((*p)->element_count() != n || (*m)->element_count() != n || (*v)->element_count() != n)
      return ffi::Error::InvalidArgument("gx_adam_apply: g, p, m, v of a leaf differ in size");
    leaves.push_back(Leaf{g->typed_data(), (*p)->typed_data(), (*m)->typed_data(),
                          (*v)->typed_data(), n});
    total += n;
  }
  if (root) {
    if (decay) Run<true, true>(s, leaves, total); else Run<true, false>(s, leaves, total);
  } else {
    if (decay) Run<false, true>(s, leaves, total); else Run<false, false>(s, leaves, total);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GxAdamApply, AdamApply,
                              ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("root")
                                  .Attr<int64_t>("decay"));
