// Runs a chain's elementwise step over every leaf of a tree (float32, bfloat16 or float16),
// in one pass.
//
// gradxform's `update_and_apply` traces a chain's elementwise tail (momentum, RMS, Adam, Lion,
// weight decay, the learning rate and the parameter step) and writes it as one small C++ loop
// (gradxform/_fused/program.py), compiled once per machine and registered here by name with
// `gx_register_program`. This handler calls that loop over all leaves of the call, split over
// the cores: every leaf's arrays are read once and written once.
//
// Operands: scalars f32[S], then per leaf its k inputs (the update entering the tail, the
// parameter, the raw gradient if the chain fixed one, each state slot). Results: per leaf its
// r outputs (the new parameter, then each new slot), aliased by the caller to the parameter
// and the slots; the loop reads those from the result buffers and writes them in place. With
// `writes` 0 the first result is the new update instead (`update`'s pass, which only reads
// the parameter), aliased to the incoming update.
// A slot kept quantized (`state_dtype="int8"`) is two arrays, its int8 codes and its float32
// scales, one per block of `block` elements (the bits of `per_block` mark the scales among a
// leaf's inputs); its program steps whole blocks, so each thread gets whole blocks.

#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// A compiled program: the step for elements [lo, hi) of one leaf, given its buffers.
// Buffers are of the dtypes the program was generated for.
using Loop = void (*)(const float* scalars, void* const* buffers, int64_t lo, int64_t hi);

std::mutex registry_mutex;
std::unordered_map<std::string, Loop>& Registry() {
  static auto* loops = new std::unordered_map<std::string, Loop>();
  return *loops;
}

struct Leaf {
  std::vector<void*> buffers;
  int64_t n;
};

int64_t RoundUp(int64_t x, int64_t block) { return x <= 0 ? 0 : (x + block - 1) / block * block; }

// Elements [lo, hi) of the leaves laid end to end. With `block` > 1 (a program that keeps
// state quantized per block of that many elements) each leaf's part starts and ends on a
// block's boundary (or the leaf's end): the blocks starting in [lo, hi), so that the threads'
// parts never share a block.
void Span(Loop loop, const float* scalars, const std::vector<Leaf>& leaves, int64_t lo,
          int64_t hi, int64_t block) {
  int64_t base = 0;
  for (const Leaf& l : leaves) {
    const int64_t a = RoundUp(lo - base, block);
    const int64_t b = std::min(l.n, RoundUp(std::min(hi - base, l.n), block));
    if (a < b) loop(scalars, l.buffers.data(), a, b);
    base += l.n;
    if (base >= hi) break;
  }
}

bool Stored(ffi::DataType t) {
  return t == ffi::DataType::F32 || t == ffi::DataType::BF16 || t == ffi::DataType::F16;
}

int Cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// Splits the elements over the cores this process may run on, at least 64k elements a thread
// (below that, starting a thread costs more than the pass).
void Run(Loop loop, const float* scalars, const std::vector<Leaf>& leaves, int64_t total,
         int64_t block = 1) {
  static const int cores = Cores();
  const int64_t parts = std::min<int64_t>(cores, total >> 16);
  if (parts <= 1) {
    Span(loop, scalars, leaves, 0, total, block);
    return;
  }
  const int64_t chunk = ((total + parts - 1) / parts + 15) / 16 * 16;
  std::vector<std::thread> helpers;
  for (int64_t t = 1; t < parts; ++t) {
    const int64_t lo = t * chunk, hi = std::min(total, lo + chunk);
    if (lo >= hi) continue;
    try {
      helpers.emplace_back([=, &leaves] { Span(loop, scalars, leaves, lo, hi, block); });
    } catch (const std::system_error&) {  // no thread to be had: this one does that part too
      Span(loop, scalars, leaves, lo, hi, block);
    }
  }
  Span(loop, scalars, leaves, 0, std::min(total, chunk), block);
  for (std::thread& h : helpers) h.join();
}

// The loop registered as `program`, or nullptr.
Loop Find(std::string_view program) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto it = Registry().find(std::string(program));
  return it == Registry().end() ? nullptr : it->second;
}

// Points `l.buffers[b]` at operand `arg` (read only) or, when `ret` >= 0, at that result, which
// the caller aliases to the operand. The first array bound sets the leaf's size (`first`);
// every other must match it. A quantized slot's arrays: its int8 `codes`, then its float32
// scales, one element per block of `per` elements (`per` > 1).
ffi::Error Bind(const ffi::RemainingArgs& args, const ffi::RemainingRets& rets, int64_t arg,
                int64_t ret, bool first, int64_t b, Leaf& l, int64_t per = 1,
                bool codes = false) {
  auto x = args.get<ffi::AnyBuffer>(arg);
  const ffi::DataType t = x.has_error() ? ffi::DataType::INVALID : x->element_type();
  if (codes ? t != ffi::DataType::S8 : (per > 1 ? t != ffi::DataType::F32 : !Stored(t)))
    return ffi::Error::InvalidArgument("gx_elementwise: leaves must be f32, bf16 or f16 (a "
                                       "quantized slot: s8 codes, f32 scales)");
  if (first) l.n = x->element_count();
  if (static_cast<int64_t>(x->element_count()) != (per > 1 ? (l.n + per - 1) / per : l.n))
    return ffi::Error::InvalidArgument("gx_elementwise: a leaf's arrays differ in size");
  if (ret < 0) {
    l.buffers[b] = x->untyped_data();
    return ffi::Error::Success();
  }
  auto y = rets.get<ffi::AnyBuffer>(ret);
  if (y.has_error() || (*y)->element_count() != x->element_count() ||
      (*y)->element_type() != x->element_type())
    return ffi::Error::InvalidArgument("gx_elementwise: a result differs from its operand");
  l.buffers[b] = (*y)->untyped_data();
  return ffi::Error::Success();
}

ffi::Error Apply(ffi::RemainingArgs args, ffi::RemainingRets rets, std::string_view program,
                 int64_t k, int64_t block, int64_t per_block, int64_t writes) {
  Loop loop = Find(program);
  if (loop == nullptr)
    return ffi::Error::Internal("gx_elementwise: program " + std::string(program) +
                                " is not loaded in this process");
  const int64_t rest = static_cast<int64_t>(args.size()) - 1;
  if (k < 2 || k > 62 || block < 1 || rest < 0 || rest % k != 0 || rets.size() == 0 ||
      rest == 0 || (writes != 0 && writes != 1) ||
      static_cast<int64_t>(rets.size()) % (rest / k) != 0)
    return ffi::Error::InvalidArgument("gx_elementwise: operands do not match the program");
  auto scalars = args.get<ffi::Buffer<ffi::F32>>(0);
  if (scalars.has_error())
    return ffi::Error::InvalidArgument("gx_elementwise: operand 0 must be float32");
  const int64_t n_leaves = rest / k, r = static_cast<int64_t>(rets.size()) / n_leaves;
  if (r < 1 || r > k - 1)
    return ffi::Error::InvalidArgument("gx_elementwise: operands do not match the program");
  std::vector<Leaf> leaves(n_leaves);
  int64_t total = 0;
  for (int64_t li = 0; li < n_leaves; ++li) {
    Leaf& l = leaves[li];
    l.buffers.resize(k);
    for (int64_t i = 0; i < k; ++i) {
      // The parameter (input 1; the update, input 0, where `writes` is 0) and the slots (the
      // last r - 1 inputs) are read from, and written to, their results: the caller aliases
      // each to its operand.
      const int64_t out = i == writes ? 0 : (i >= k - (r - 1) ? 1 + i - (k - (r - 1)) : -1);
      ffi::Error e = Bind(args, rets, 1 + li * k + i, out < 0 ? -1 : li * r + out, i == 0, i, l,
                          (per_block >> i) & 1 ? block : 1, (per_block >> (i + 1)) & 1);
      if (e.failure()) return e;
    }
    total += l.n;
  }
  Run(loop, scalars->typed_data(), leaves, total, block);
  return ffi::Error::Success();
}

// `gx_elementwise_packed`: the same programs over the pieces of packed 1-D buffers
// (`gx.flatten`'s state): each piece of the parameter is an array of its own, written in
// place, while each state slot is one buffer holding every piece, piece j at `offsets[j]`
// elements from its start. The update is per piece too, or (`shared_update`) one packed
// buffer read at the same offsets. Operands: scalars f32[S], then per piece its own arrays
// (the update unless shared, the parameter), then the packed buffers (the update if shared,
// then the slots' arrays). Results: per piece its new parameter, then the slots' arrays,
// aliased by the caller to those operands. `k` counts the program's buffers (2 + the slots'
// arrays).
//
// A slot kept quantized (`per_block`, as in `gx_elementwise`) is its packed int8 codes and
// its scales, one per block of `block` elements of the packed space, so a block may hold the
// ends of several pieces. Then the call steps the blocks in [first, end) of the packed space
// (its pieces are those that overlap it; a piece split by `first` or `end` is stepped by the
// calls on either side, each writing its own part): a block inside one piece in place, any
// other with the update's and the parameter's entries gathered from its pieces into buffers
// of its own and the parameter's written back.
struct Piece {
  char* g;  // the piece's update (not shared), else null
  char* p;  // its parameter
  int64_t at, n;
};

// What a call's blocks are stepped over: its pieces in order, the packed buffers (each one's
// data, the program's buffer index, bytes an element, and whether it holds block scales),
// and the program's buffer count, the update's and parameter's bytes an element, the block
// and the packed space's size.
struct Packing {
  std::vector<Piece> pieces;
  std::vector<char*> base;
  std::vector<int64_t> index, width;
  std::vector<bool> scales;
  int64_t k, gw, pw, block, total;
};

// The blocks starting in [lo, hi) of the packed space.
void Blocks(Loop loop, const float* scalars, const Packing& packing, int64_t lo, int64_t hi) {
  const std::vector<Piece>& pieces = packing.pieces;
  const int64_t block = packing.block, total = packing.total, gw = packing.gw, pw = packing.pw;
  std::vector<void*> buffers(packing.k, nullptr);
  std::vector<char> g_tmp(block * gw), p_tmp(block * pw);
  size_t j = 0;
  while (j < pieces.size() && pieces[j].at + pieces[j].n <= lo) ++j;
  for (int64_t a = lo, e; a < hi; a = e) {
    e = std::min(a + block, total);
    while (j < pieces.size() && pieces[j].at + pieces[j].n <= a) ++j;
    for (size_t i = 0; i < packing.base.size(); ++i)
      buffers[packing.index[i]] =
          packing.base[i] + (packing.scales[i] ? a / block : a) * packing.width[i];
    const bool inside = j < pieces.size() && pieces[j].at <= a && e <= pieces[j].at + pieces[j].n;
    if (inside) {  // this block and the next ones inside the piece, in one run of the loop
      const Piece& q = pieces[j];
      const int64_t stop = std::min(hi, q.at + q.n);
      e = stop == hi || stop == total ? stop : a + (stop - a) / block * block;
      if (q.g) buffers[0] = q.g + (a - q.at) * gw;
      buffers[1] = q.p + (a - q.at) * pw;
      loop(scalars, buffers.data(), 0, e - a);
      continue;
    }
    for (size_t m = j; m < pieces.size() && pieces[m].at < e; ++m) {  // gather
      const Piece& q = pieces[m];
      const int64_t x = std::max(a, q.at), y = std::min(e, q.at + q.n);
      if (q.g) memcpy(g_tmp.data() + (x - a) * gw, q.g + (x - q.at) * gw, (y - x) * gw);
      memcpy(p_tmp.data() + (x - a) * pw, q.p + (x - q.at) * pw, (y - x) * pw);
    }
    if (pieces[j].g) buffers[0] = g_tmp.data();
    buffers[1] = p_tmp.data();
    loop(scalars, buffers.data(), 0, e - a);
    for (size_t m = j; m < pieces.size() && pieces[m].at < e; ++m) {  // scatter
      const Piece& q = pieces[m];
      const int64_t x = std::max(a, q.at), y = std::min(e, q.at + q.n);
      memcpy(q.p + (x - q.at) * pw, p_tmp.data() + (x - a) * pw, (y - x) * pw);
    }
  }
}

ffi::Error ApplyPacked(ffi::RemainingArgs args, ffi::RemainingRets rets,
                       std::string_view program, int64_t k, int64_t shared_update,
                       ffi::Span<const int64_t> offsets, int64_t block, int64_t per_block,
                       int64_t first, int64_t end) {
  Loop loop = Find(program);
  if (loop == nullptr)
    return ffi::Error::Internal("gx_elementwise_packed: program " + std::string(program) +
                                " is not loaded in this process");
  const int64_t n = static_cast<int64_t>(offsets.size());
  const int64_t s = static_cast<int64_t>(rets.size()) - n;  // the slots' arrays
  const int64_t own = shared_update ? 1 : 2;                 // arrays of each piece
  if (n < 1 || s < 0 || k != 2 + s || k > 62 || block < 1 ||
      static_cast<int64_t>(args.size()) != 1 + n * own + (2 - own) + s)
    return ffi::Error::InvalidArgument("gx_elementwise_packed: operands do not match");
  auto scalars = args.get<ffi::Buffer<ffi::F32>>(0);
  if (scalars.has_error())
    return ffi::Error::InvalidArgument("gx_elementwise_packed: operand 0 must be float32");
  // The packed buffers, by the program's buffer index (0: the update, 2 + j: slot array j).
  std::vector<int64_t> index;
  std::vector<char*> base;
  std::vector<int64_t> size, width;
  std::vector<bool> scales;
  int64_t total = -1;  // the packed space's size: the first slot array's that is not scales
  for (int64_t j = 0; j < (2 - own) + s; ++j) {
    const bool update = j < 2 - own;
    const int64_t b = update ? 0 : 2 + j - (2 - own);
    const bool is_scales = (per_block >> b) & 1, is_codes = (per_block >> (b + 1)) & 1;
    auto x = args.get<ffi::AnyBuffer>(1 + n * own + j);
    const ffi::DataType t = x.has_error() ? ffi::DataType::INVALID : x->element_type();
    if (is_codes ? t != ffi::DataType::S8 : (is_scales ? t != ffi::DataType::F32 : !Stored(t)))
      return ffi::Error::InvalidArgument("gx_elementwise_packed: buffers must be f32, bf16 "
                                         "or f16 (a quantized slot: s8 codes, f32 scales)");
    void* data = x->untyped_data();  // read only (the update)
    if (!update) {
      auto y = rets.get<ffi::AnyBuffer>(n + j - (2 - own));
      if (y.has_error() || (*y)->element_type() != x->element_type() ||
          (*y)->element_count() != x->element_count())
        return ffi::Error::InvalidArgument("gx_elementwise_packed: a slot differs from its "
                                           "result");
      data = (*y)->untyped_data();
    }
    index.push_back(b);
    base.push_back(static_cast<char*>(data));
    size.push_back(static_cast<int64_t>(x->element_count()));
    width.push_back(static_cast<int64_t>(ffi::ByteWidth(x->element_type())));
    scales.push_back(is_scales);
    if (!is_scales && total < 0) total = size.back();
  }
  for (size_t j = 0; j < index.size(); ++j)
    if (scales[j] ? size[j] != (total + block - 1) / block : size[j] != total)
      return ffi::Error::InvalidArgument("gx_elementwise_packed: packed buffers differ in "
                                         "size");
  std::vector<Leaf> leaves(n);
  std::vector<Piece> pieces(n);
  for (int64_t li = 0; li < n; ++li) {
    Leaf& l = leaves[li];
    l.buffers.resize(k);
    for (int64_t i = 0; i < own; ++i) {
      const int64_t b = own == 1 ? 1 : i;  // the program's buffer: the update, the parameter
      ffi::Error e = Bind(args, rets, 1 + li * own + i, b == 1 ? li : -1, i == 0, b, l);
      if (e.failure()) return e;
    }
    if (offsets[li] < 0 || (total >= 0 && offsets[li] + l.n > total))
      return ffi::Error::InvalidArgument("gx_elementwise_packed: a piece lies outside a "
                                         "packed buffer");
    for (size_t j = 0; j < index.size(); ++j)
      l.buffers[index[j]] = base[j] + offsets[li] * width[j];
    pieces[li] = {own == 2 ? static_cast<char*>(l.buffers[0]) : nullptr,
                  static_cast<char*>(l.buffers[1]), offsets[li], l.n};
  }
  if (per_block == 0) {
    int64_t elements = 0;
    for (const Leaf& l : leaves) elements += l.n;
    Run(loop, scalars->typed_data(), leaves, elements);
    return ffi::Error::Success();
  }
  // The pieces must tile [first, end) of the packed space, in order.
  bool tiled = first >= 0 && first % block == 0 && first <= end && end <= total &&
               pieces.front().at <= first && pieces.back().at + pieces.back().n >= end;
  for (int64_t li = 1; li < n; ++li)
    tiled = tiled && pieces[li].at == pieces[li - 1].at + pieces[li - 1].n;
  if (!tiled)
    return ffi::Error::InvalidArgument("gx_elementwise_packed: the pieces do not cover the "
                                       "blocks to step");
  auto args_width = [&](int64_t arg) {
    auto x = args.get<ffi::AnyBuffer>(arg);
    return static_cast<int64_t>(ffi::ByteWidth(x->element_type()));
  };
  const int64_t gw = own == 2 ? args_width(1) : width[0], pw = args_width(own);
  const Packing packing{std::move(pieces), std::move(base), std::move(index),
                        std::move(width), std::move(scales), k, gw, pw, block, total};
  // Whole blocks for each thread, at least 64k elements a thread.
  static const int cores = Cores();
  const int64_t blocks = (end - first + block - 1) / block;
  const int64_t parts = std::min<int64_t>({cores, (end - first) >> 16, blocks});
  const float* sc = scalars->typed_data();
  if (parts <= 1) {
    Blocks(loop, sc, packing, first, end);
    return ffi::Error::Success();
  }
  const int64_t chunk = (blocks + parts - 1) / parts * block;
  std::vector<std::thread> helpers;
  for (int64_t t = 1; t < parts; ++t) {
    const int64_t lo = first + t * chunk, hi = std::min(end, lo + chunk);
    if (lo >= hi) continue;
    try {
      helpers.emplace_back([=, &packing] { Blocks(loop, sc, packing, lo, hi); });
    } catch (const std::system_error&) {  // no thread to be had: this one does that part too
      Blocks(loop, sc, packing, lo, hi);
    }
  }
  Blocks(loop, sc, packing, first, std::min(end, first + chunk));
  for (std::thread& h : helpers) h.join();
  return ffi::Error::Success();
}

// `gx_codec`: an int8 state leaf's codes and block scales from its float32 values
// (`quantize` = 1; operand: the values; results: the codes, then the scales), or the values
// from the codes and scales (`quantize` = 0), by the loop registered as `program`
// (gradxform/_fused/codec.py). The loop's buffers are always {values, codes, scales} and it
// steps whole blocks of `block` entries, so each thread gets whole blocks.
ffi::Error Codec(ffi::RemainingArgs args, ffi::RemainingRets rets, std::string_view program,
                 int64_t block, int64_t quantize) {
  Loop loop = Find(program);
  if (loop == nullptr)
    return ffi::Error::Internal("gx_codec: program " + std::string(program) +
                               " is not loaded in this process");
  if (block < 1 || args.size() != (quantize ? 1u : 2u) || rets.size() != (quantize ? 2u : 1u))
    return ffi::Error::InvalidArgument("gx_codec: operands do not match the direction");
  // Each array's data, element type and size: {values, codes, scales}.
  void* data[3];
  ffi::DataType type[3];
  int64_t size[3];
  for (int64_t j = 0; j < 3; ++j) {
    const bool in = quantize ? j == 0 : j > 0;  // an operand, else a result
    const int64_t at = quantize ? (in ? 0 : j - 1) : (in ? j - 1 : 0);
    if (in) {
      auto x = args.get<ffi::AnyBuffer>(at);
      if (x.has_error()) return ffi::Error::InvalidArgument("gx_codec: a missing operand");
      data[j] = x->untyped_data(), type[j] = x->element_type(), size[j] = x->element_count();
    } else {
      auto y = rets.get<ffi::AnyBuffer>(at);
      if (y.has_error()) return ffi::Error::InvalidArgument("gx_codec: a missing result");
      data[j] = (*y)->untyped_data(), type[j] = (*y)->element_type();
      size[j] = (*y)->element_count();
    }
  }
  if (type[0] != ffi::DataType::F32 || type[1] != ffi::DataType::S8 ||
      type[2] != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("gx_codec: f32 values, s8 codes and f32 scales expected");
  const int64_t n = size[0];
  if (size[1] != n || size[2] != (n + block - 1) / block)
    return ffi::Error::InvalidArgument("gx_codec: codes or scales of the wrong size");
  std::vector<Leaf> leaf(1);
  leaf[0].buffers = {data[0], data[1], data[2]};
  leaf[0].n = n;
  Run(loop, nullptr, leaf, n, block);
  return ffi::Error::Success();
}

}  // namespace

// Makes the compiled program `fn` callable as `name` (gradxform/_fused/build.py calls this).
extern "C" void gx_register_program(const char* name, void* fn) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  Registry()[name] = reinterpret_cast<Loop>(fn);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(GxElementwise, Apply,
                              ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<std::string_view>("program")
                                  .Attr<int64_t>("k")
                                  .Attr<int64_t>("block")
                                  .Attr<int64_t>("per_block")
                                  .Attr<int64_t>("writes"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GxElementwisePacked, ApplyPacked,
                              ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<std::string_view>("program")
                                  .Attr<int64_t>("k")
                                  .Attr<int64_t>("shared_update")
                                  .Attr<ffi::Span<const int64_t>>("offsets")
                                  .Attr<int64_t>("block")
                                  .Attr<int64_t>("per_block")
                                  .Attr<int64_t>("first")
                                  .Attr<int64_t>("end"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GxCodec, Codec,
                              ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<std::string_view>("program")
                                  .Attr<int64_t>("block")
                                  .Attr<int64_t>("quantize"));
