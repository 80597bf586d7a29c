// Direct convolutions for XLA's CPU backend, called through the XLA FFI (mu_jax/ops/native.py).
//
// Layout: activations NHWC, kernels HWIO, float32. The input arrives already padded (the pad is
// fused by XLA into the batch norm and ReLU that produce it), so no kernel below tests borders.
//
//   conv_fwd: y[n, oh, ow, co] = sum_{kh, kw, ci} xp[n, oh*s + kh, ow*s + kw, ci] * w[kh, kw, ci, co]
//   conv_dw:  dw[kh, kw, ci, co] = sum_{n, oh, ow} xp[n, oh*s + kh, ow*s + kw, ci] * dy[n, oh, ow, co]
//
// The input gradient of a stride-1 convolution is conv_fwd over the padded output gradient with
// the kernel rotated by 180 degrees and its channel axes swapped (done by the caller).
//
// Why these exist: XLA's convolutions run on Eigen's or YNNPACK's generic kernels, which ran at
// 50-75% of the speed of oneDNN's on ResNet-18's stem and first stage, and XLA computes the weight
// gradient from transposed copies of the activations. Both kernels here keep a register tile of
// accumulators (R output pixels by V vectors of output channels for conv_fwd; KB input taps by V
// vectors for conv_dw) and stream the other operand from the cache.
// For a fixed kernel row, the taps of one output pixel form one contiguous run of KW*C_in floats
// in the padded input (kw and ci merged into one index k), which is what both inner loops walk.
//
// Work is split into chunks that the calling thread and XLA's intra-op pool claim from an atomic
// counter; the caller waits only for chunks already claimed, so a pool thread that is busy
// elsewhere (or never runs its task) cannot stall the call. Every output element is summed in
// one fixed order whichever thread computes it, so results do not depend on the scheduling or on
// the number of threads.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// One vector register: 16 floats with AVX-512 (32 registers), else 8 (AVX2's 16 registers; two
// NEON registers of 32 elsewhere). Tiles below are V vectors of output channels wide.
#ifdef __AVX512F__
constexpr int kLanes = 16, kRegisters = 32;
#else
constexpr int kLanes = 8, kRegisters = 16;
#endif
typedef float vec __attribute__((vector_size(4 * kLanes)));
typedef float vec_u __attribute__((vector_size(4 * kLanes), aligned(4)));

inline vec load(const float* p) { return *reinterpret_cast<const vec_u*>(p); }
inline void store(float* p, vec v) { *reinterpret_cast<vec_u*>(p) = v; }

// Rows of a tile (output pixels in the forward, taps in the weight gradient) for V vectors of
// channels: R*V accumulators, V vectors of the streamed operand and one broadcast in registers.
template <int V>
constexpr int tile_rows() { return std::min(14, (kRegisters - 1 - V) / V); }

// Calls fn with n (1 <= n <= max_rows) as a compile-time std::integral_constant<int, n>: a tile
// of fewer rows than the full one (a forward's last pixels, a weight gradient's last taps).
template <typename Fn, int... N>
void with_rows_in(int64_t n, const Fn& fn, std::integer_sequence<int, N...>) {
  ((n == N + 1 ? fn(std::integral_constant<int, N + 1>{}) : void()), ...);
}
template <int max_rows, typename Fn>
void with_rows(int64_t n, const Fn& fn) {
  with_rows_in(n, fn, std::make_integer_sequence<int, max_rows>{});
}

// Calls fn with the widest block of channel vectors that divides C_out (64 channels with AVX-512,
// 16 otherwise; C_out is a multiple of 16) as a compile-time std::integral_constant<int, V>.
template <typename Fn>
void with_block(int64_t co, const Fn& fn) {
  if (kLanes == 16 && co % 64 == 0) fn(std::integral_constant<int, 4>{});
  else if (co % (2 * kLanes) == 0) fn(std::integral_constant<int, 2>{});
  else fn(std::integral_constant<int, 1>{});
}

// Below this many multiply-adds a call runs on the calling thread alone: waking a pool thread
// costs more than it saves.
constexpr int64_t kMinParallelMacs = int64_t{1} << 20;

int64_t threads_for(ffi::ThreadPool& pool, int64_t macs) {
  return macs < kMinParallelMacs ? 1 : std::max<int64_t>(pool.num_threads(), 1);
}

// Runs fn(chunk) for chunk in [0, total) on the calling thread and on up to threads - 1 threads
// of XLA's intra-op pool.
template <typename Fn>
void parallel_chunks(ffi::ThreadPool& pool, int64_t total, int64_t threads, const Fn& fn) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    int64_t total = 0;
    const Fn* fn = nullptr;
  };
  auto state = std::make_shared<State>();
  state->total = total;
  state->fn = &fn;
  auto work = [](State* s) {
    for (int64_t c; (c = s->next.fetch_add(1)) < s->total;) {
      (*s->fn)(c);
      s->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min(threads, total) - 1;
  // A helper that starts after every chunk is claimed returns without touching fn or the buffers.
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([state, work] { work(state.get()); });
  work(state.get());
  while (state->done.load(std::memory_order_acquire) < total) std::this_thread::yield();
}

// A convolution's sizes: batch, padded input, kernel, output and stride.
struct Shape {
  int64_t n, hp, wp, ci, kh, kw, co, ho, wo, s;
};

// The sizes of x [N, H_p, W_p, C_in], w [KH, KW, C_in, C_out] and y [N, H_out, W_out, C_out]
// (dims in that order), or an error naming what does not fit.
ffi::Error shape_of(const char* name, ffi::Span<const int64_t> xd, ffi::Span<const int64_t> wd,
                    ffi::Span<const int64_t> yd, int64_t stride, Shape* d) {
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4)
    return ffi::Error::InvalidArgument(std::string(name) +
                                       ": operands must be rank 4 (NHWC, HWIO)");
  *d = Shape{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], yd[1], yd[2], stride};
  if (wd[2] != d->ci || yd[0] != d->n || yd[3] != d->co || d->co % 16 != 0 || stride < 1 ||
      d->ho != (d->hp - d->kh) / stride + 1 || d->wo != (d->wp - d->kw) / stride + 1)
    return ffi::Error::InvalidArgument(std::string(name) +
                                       ": shapes do not match a valid convolution with C_out a "
                                       "multiple of 16");
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------
// Forward: R output pixels (consecutive in N*H_out*W_out order, so a tile may span rows and
// images and only the very last tile is short) by V vectors of output channels.

// Offset of output pixel p's receptive field (its top-left tap) in the padded input.
inline int64_t fwd_origin(const Shape& d, int64_t p) {
  const int64_t n = p / (d.ho * d.wo), q = p % (d.ho * d.wo);
  return ((n * d.hp + (q / d.wo) * d.s) * d.wp + (q % d.wo) * d.s) * d.ci;
}

// Taps [k0, k1) of every kernel row for R output pixels starting at p, onto y (or from zero).
template <int R, int V>
inline void fwd_tile(const Shape& d, const float* x, int64_t p, const float* w, int64_t k0,
                     int64_t k1, bool first, float* y) {
  const float* xb[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) xb[r] = x + fwd_origin(d, p + r);
  float* yp = y + p * d.co;
  vec acc[R][V];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < V; ++j) acc[r][j] = first ? vec{} : load(yp + r * d.co + kLanes * j);
  const int64_t kdim = d.kw * d.ci, row = d.wp * d.ci;
  for (int64_t a = 0; a < d.kh; ++a) {
    const float* wr = w + a * kdim * d.co;
    const int64_t off = a * row;
    for (int64_t k = k0; k < k1; ++k) {
      vec wv[V];
#pragma GCC unroll 4
      for (int j = 0; j < V; ++j) wv[j] = load(wr + k * d.co + kLanes * j);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const float xv = xb[r][off + k];
#pragma GCC unroll 4
        for (int j = 0; j < V; ++j) acc[r][j] += xv * wv[j];
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < V; ++j) store(yp + r * d.co + kLanes * j, acc[r][j]);
}

// Pixels [p0, p1) of the output, channels of one V-block (w and y point at its first channel),
// taps [k0, k1) of every kernel row.
template <int V>
void fwd_pixels(const Shape& d, const float* x, int64_t p0, int64_t p1, const float* w,
                int64_t k0, int64_t k1, bool first, float* y) {
  constexpr int R = tile_rows<V>();
  int64_t p = p0;
  for (; p + R <= p1; p += R) fwd_tile<R, V>(d, x, p, w, k0, k1, first, y);
  // Fewer than R pixels left.
  with_rows<R - 1>(p1 - p, [&](auto rows) { fwd_tile<rows, V>(d, x, p, w, k0, k1, first, y); });
}

ffi::Error ConvFwdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t stride) {
  Shape d;
  ffi::Error error =
      shape_of("conv_fwd", x.dimensions(), w.dimensions(), y->dimensions(), stride, &d);
  if (error.failure()) return error;
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* yp = y->typed_data();
  with_block(d.co, [&](auto block_vectors) {
    constexpr int V = decltype(block_vectors)::value;
    constexpr int64_t vblock = V * kLanes, tile = tile_rows<V>();
    const int64_t blocks = d.co / vblock;
    // The weights a tile reads (every kernel row's taps [k0, k1) for one channel block) are cut
    // to about 192 KB, so that they stay in the L2 cache while a chunk's tiles pass over them:
    // at 4×4×512 a block's whole 1.2 MB streamed from L3 for every 6 pixels.
    const int64_t kdim = d.kw * d.ci;
    const int64_t k_step = std::max<int64_t>(
        1, std::min<int64_t>(kdim, (192 << 10) / (d.kh * vblock * int64_t{sizeof(float)})));
    // Chunks of whole tiles: at least two per thread, and at most ~1024 pixels, whose outputs
    // then stay in the L2 cache between blocks of taps; the more pixels, the more often the
    // weights in L2 are reused.
    const int64_t pixels = d.n * d.ho * d.wo;
    const int64_t macs = pixels * d.kh * kdim * d.co;
    const int64_t threads = threads_for(pool, macs);
    const int64_t per_chunk =
        std::max<int64_t>(1, std::min<int64_t>(1024, pixels / (2 * threads)) / tile) * tile;
    const int64_t chunks = (pixels + per_chunk - 1) / per_chunk;
    parallel_chunks(pool, chunks, threads, [&](int64_t c) {
      const int64_t p0 = c * per_chunk, p1 = std::min(pixels, p0 + per_chunk);
      for (int64_t b = 0; b < blocks; ++b)
        for (int64_t k0 = 0; k0 < kdim; k0 += k_step)
          fwd_pixels<V>(d, xp, p0, p1, wp + b * vblock, k0, std::min(kdim, k0 + k_step), k0 == 0,
                        yp + b * vblock);
    });
  });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------
// Weight gradient: KB consecutive taps k (of one kernel row) by V*16 output channels, summed
// over a run of output pixels.


// Output rows [r0, r1) in N*H_out order; x points at kernel row a's tap k of the padded input's
// first element, dy at the V-block's first channel, acc at dw[a, k, block].
template <int KB, int V>
inline void dw_tile(const Shape& d, const float* x, const float* dy, int64_t r0, int64_t r1,
                    float* acc_out) {
  vec acc[KB][V];
#pragma GCC unroll 16
  for (int b = 0; b < KB; ++b)
#pragma GCC unroll 4
    for (int j = 0; j < V; ++j) acc[b][j] = load(acc_out + b * d.co + kLanes * j);
  const int64_t xstep = d.s * d.ci;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / d.ho, oh = r % d.ho;
    const float* xr = x + (n * d.hp + oh * d.s) * d.wp * d.ci;
    const float* gr = dy + r * d.wo * d.co;
    for (int64_t ow = 0; ow < d.wo; ++ow) {
      vec gv[V];
#pragma GCC unroll 4
      for (int j = 0; j < V; ++j) gv[j] = load(gr + ow * d.co + kLanes * j);
      const float* xp = xr + ow * xstep;
#pragma GCC unroll 16
      for (int b = 0; b < KB; ++b) {
        const float xv = xp[b];
#pragma GCC unroll 4
        for (int j = 0; j < V; ++j) acc[b][j] += xv * gv[j];
      }
    }
  }
#pragma GCC unroll 16
  for (int b = 0; b < KB; ++b)
#pragma GCC unroll 4
    for (int j = 0; j < V; ++j) store(acc_out + b * d.co + kLanes * j, acc[b][j]);
}

// One tile of dw: kernel row a, taps [k, k + width) of its KW*C_in, one V-block of channels,
// summed over output rows [r0, r1) onto what dw holds there.
template <int V>
void dw_tile_at(const Shape& d, const float* x, const float* dy, int64_t a, int64_t k,
                int64_t width, int64_t block, int64_t r0, int64_t r1, float* dw) {
  constexpr int KB = tile_rows<V>();
  const float* xa = x + a * d.wp * d.ci + k;
  const float* gb = dy + block * kLanes * V;
  float* acc = dw + (a * d.kw * d.ci + k) * d.co + block * kLanes * V;
  with_rows<KB>(width, [&](auto taps) { dw_tile<taps, V>(d, xa, gb, r0, r1, acc); });
}

ffi::Error ConvDwImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dw, int64_t stride) {
  Shape d;
  ffi::Error error = shape_of("conv_dw", x.dimensions(), dw->dimensions(), dy.dimensions(), stride,
                              &d);
  if (error.failure()) return error;
  const float* xp = x.typed_data();
  const float* gp = dy.typed_data();
  float* out = dw->typed_data();
  // dw is cut into tiles (kernel row, run of taps, block of channels) and the tiles into one
  // group per thread; the output rows are cut into `parts` contiguous parts. A work item is one
  // group over one part: it passes over the part's rows in runs (their slices of x and dy stay
  // in the L2 cache while the group's tiles pass over them) and sums
  // into the part's own buffer; the parts' buffers are then added in order. The number of parts
  // depends on the shape only and the grouping of tiles changes no sum, so the result is the
  // same for any thread count and scheduling; several parts per group let a thread that is
  // slowed down elsewhere leave more of the work to the others.
  const int64_t kdim = d.kw * d.ci;
  const int64_t size = d.kh * kdim * d.co;
  const int64_t rows = d.n * d.ho;
  // Runs of output pixels whose slices of x and dy take about 512 KB (64 to 1024 pixels).
  const int64_t pixel_bytes = int64_t{sizeof(float)} * (d.ci * d.s * d.s + d.co);
  const int64_t run_pixels = std::clamp<int64_t>((512 << 10) / pixel_bytes, 64, 1024);
  const int64_t run = std::max<int64_t>(1, (run_pixels + d.wo - 1) / d.wo);
  const int64_t macs = rows * d.wo * size;
  // Up to 8 parts, with at most 16 MB of buffers.
  const int64_t parts = macs < kMinParallelMacs ? 1 : std::max<int64_t>(1, std::min<int64_t>(
      {8, rows, (int64_t{16} << 20) / (size * int64_t{sizeof(float)})}));
  std::vector<std::unique_ptr<float[]>> partial(parts);
  for (auto& buffer : partial) buffer.reset(new float[size]());
  with_block(d.co, [&](auto block_vectors) {
    constexpr int V = decltype(block_vectors)::value;
    constexpr int64_t taps = tile_rows<V>();
    const int64_t k_tiles = (kdim + taps - 1) / taps;
    const int64_t tiles = d.kh * k_tiles * (d.co / (V * kLanes));
    const int64_t groups = std::min(threads_for(pool, macs), tiles);
    parallel_chunks(pool, parts * groups, groups, [&](int64_t item) {
      const int64_t part = item / groups, g = item % groups;
      const int64_t t0 = tiles * g / groups, t1 = tiles * (g + 1) / groups;
      const int64_t lo = rows * part / parts, hi = rows * (part + 1) / parts;
      float* acc = partial[part].get();
      for (int64_t r0 = lo; r0 < hi; r0 += run) {
        const int64_t r1 = std::min(hi, r0 + run);
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t block = t / (d.kh * k_tiles), a = (t / k_tiles) % d.kh;
          const int64_t k = (t % k_tiles) * taps, width = std::min(taps, kdim - k);
          dw_tile_at<V>(d, xp, gp, a, k, width, block, r0, r1, acc);
        }
      }
    });
  });
  std::memcpy(out, partial[0].get(), size * sizeof(float));
  for (int64_t part = 1; part < parts; ++part) {
    const float* src = partial[part].get();
    for (int64_t i = 0; i < size; ++i) out[i] += src[i];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MuJaxConvFwd, ConvFwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MuJaxConvDw, ConvDwImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride"));

// The vector width the library was compiled for: 512 with AVX-512 (where the kernels were
// measured and mu_jax's plan uses them), 256 with AVX2 and FMA, else 0. Every build is correct;
// only AVX-512 builds are chosen by the plan.
extern "C" int MuJaxVectorBits() {
#if defined(__AVX512F__)
  return 512;
#elif defined(__AVX2__) && defined(__FMA__)
  return 256;
#else
  return 0;
#endif
}
