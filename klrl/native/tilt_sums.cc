// Fused power sums of the tilted weights, an XLA FFI custom call for the CPU (see klrl/_native.py).
//
// For each row, with s = r - center and t = exp(log p - shift + lam s):
//   out[..., 0..3] = sum t s^k (k = 0..3),  out[..., 4] = sum_{s < 0} t,  out[..., 5] = sum t log p
// (log p = -inf counts as the most negative double, so that its term is 0 * finite). With
// `single`, t and the products are float32 and only the first four sums are formed (the rest are
// 0), as in klrl.tilted's float32 passes: the exponent is formed in float64 and rounded once.
//
// One pass over the data in a loop the compiler vectorises, split into chunks of kChunk entries
// that the calling thread and XLA's intra-op thread pool take in turn. The chunks' partial sums
// are added in chunk order, so the result does not depend on the number of threads.
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunk = 8192;
constexpr int kSums = 6;

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define KLRL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KLRL_CLONES
#endif

template <typename To, typename From>
inline To Bits(From x) {
  To y;
  std::memcpy(&y, &x, sizeof(y));
  return y;
}

// exp(x) = 2^n e^f with x = n ln2 + f, |f| <= ln2 / 2: e^f by its Taylor polynomial (of degree
// 12 for float64, remainder below 2e-16 relative; 7 for float32) and 2^n built in the exponent
// bits. Accurate to 2 units in the last place (float64) and 3 (float32), tested. Results below the
// smallest normal number are 0 (as XLA's CPU code, which flushes subnormals to zero); -inf and
// NaN give 0, and x is clamped below overflow (the weights here are at most 1).
template <typename Float>
struct ExpConstants;

template <>
struct ExpConstants<double> {
  using Int = int64_t;
  static constexpr double kLow = -708.0, kHigh = 709.0;
  static constexpr double kShifter = 0x1.8p52;   // adding it rounds to an integer in the low bits
  static constexpr double kLog2e = 0x1.71547652b82fep0, kLn2Hi = 0x1.62e42fefa39efp-1,
                          kLn2Lo = 0x1.abc9e3b39803fp-56;
  static constexpr int kDegree = 12, kBias = 1023, kMantissa = 52;
};

template <>
struct ExpConstants<float> {
  using Int = int32_t;
  static constexpr float kLow = -87.0f, kHigh = 88.0f;
  static constexpr float kShifter = 0x1.8p23f;
  static constexpr float kLog2e = 0x1.715476p0f, kLn2Hi = 0x1.62e4p-1f, kLn2Lo = 0x1.7f7d1cp-20f;
  static constexpr int kDegree = 7, kBias = 127, kMantissa = 23;
};

constexpr double kInverseFactorial[] = {1.0,          1.0,           1.0 / 2,         1.0 / 6,        1.0 / 24,
                                        1.0 / 120,    1.0 / 720,     1.0 / 5040,      1.0 / 40320,    1.0 / 362880,
                                        1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600};

template <typename Float>
inline Float Exp(Float x) {
  using C = ExpConstants<Float>;
  const bool under = !(x >= C::kLow);
  x = under ? C::kLow : (x > C::kHigh ? C::kHigh : x);
  const Float k = x * C::kLog2e + C::kShifter;
  const Float n = k - C::kShifter;
  const Float f = (x - n * C::kLn2Hi) - n * C::kLn2Lo;
  Float p = static_cast<Float>(kInverseFactorial[C::kDegree]);
  for (int d = C::kDegree - 1; d >= 0; --d) p = p * f + static_cast<Float>(kInverseFactorial[d]);
  using Int = typename C::Int;
  const Int e = Bits<Int>(k) - Bits<Int>(C::kShifter) + C::kBias;
  return under ? Float(0) : p * Bits<Float>(static_cast<Int>(e << C::kMantissa));
}

KLRL_CLONES void Chunk64(const double* lp, const double* rw, int64_t n, double shift, double center, double lam,
                         double* out) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0, neg = 0, slp = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, neg, slp)
  for (int64_t i = 0; i < n; ++i) {
    const double l = lp[i], s = rw[i] - center;
    const double t = Exp<double>((l - shift) + lam * s);
    const double t1 = t * s, t2 = t1 * s;
    s0 += t;
    s1 += t1;
    s2 += t2;
    s3 += t2 * s;
    neg += s < 0 ? t : 0.0;
    slp += t * (l > -DBL_MAX ? l : -DBL_MAX);
  }
  const double sums[kSums] = {s0, s1, s2, s3, neg, slp};
  std::copy(sums, sums + kSums, out);
}

KLRL_CLONES void Chunk32(const double* lp, const double* rw, int64_t n, double shift, double center, double lam,
                         double* out) {
  // Float32 sums over runs of kRun entries (rounding error about that of a pairwise sum), added in float64.
  constexpr int64_t kRun = 512;
  double sums[kSums] = {};
  for (int64_t lo = 0; lo < n; lo += kRun) {
    const int64_t hi = std::min(n, lo + kRun);
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t i = lo; i < hi; ++i) {
      const double s = rw[i] - center;
      const float t = Exp<float>(static_cast<float>((lp[i] - shift) + lam * s));
      const float sf = static_cast<float>(s);
      const float t1 = t * sf, t2 = t1 * sf;
      s0 += t;
      s1 += t1;
      s2 += t2;
      s3 += t2 * sf;
    }
    sums[0] += s0;
    sums[1] += s1;
    sums[2] += s2;
    sums[3] += s3;
  }
  std::copy(sums, sums + kSums, out);
}

// The chunks of one call; shared with the helper tasks, which may start after the call returned.
struct Work {
  const double *lp, *rw, *shift, *center, *lam;
  int64_t width, per_row, total;
  bool single;
  std::vector<double> partial;
  std::atomic<int64_t> next{0}, done{0};

  void Run() {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < total;) {
      const int64_t row = c / per_row, lo = (c % per_row) * kChunk;
      const int64_t at = row * width + lo, n = std::min(kChunk, width - lo);
      (single ? Chunk32 : Chunk64)(lp + at, rw + at, n, shift[row], center[row], lam[row], &partial[kSums * c]);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error TiltSums(ffi::ThreadPool pool, ffi::Buffer<ffi::F64> logp, ffi::Buffer<ffi::F64> reward,
                    ffi::Buffer<ffi::F64> shift, ffi::Buffer<ffi::F64> center, ffi::Buffer<ffi::F64> lam,
                    bool single, ffi::ResultBuffer<ffi::F64> out) {
  const auto dims = logp.dimensions();
  if (dims.size() == 0 || reward.element_count() != logp.element_count()) {
    return ffi::Error::InvalidArgument("klrl_tilt_sums: logp and reward must have one shape (..., V)");
  }
  const int64_t width = dims.back();
  const int64_t rows = width > 0 ? logp.element_count() / width : 0;
  if (shift.element_count() != rows || center.element_count() != rows || lam.element_count() != rows ||
      out->element_count() != kSums * rows) {
    return ffi::Error::InvalidArgument("klrl_tilt_sums: per-row arguments must have shape (...)");
  }
  auto work = std::make_shared<Work>();
  work->lp = logp.typed_data();
  work->rw = reward.typed_data();
  work->shift = shift.typed_data();
  work->center = center.typed_data();
  work->lam = lam.typed_data();
  work->single = single;
  work->width = width;
  work->per_row = width > 0 ? (width + kChunk - 1) / kChunk : 0;
  work->total = rows * work->per_row;
  work->partial.assign(kSums * work->total, 0.0);
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), work->total) - 1;
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([work] { work->Run(); });
  work->Run();
  // Every chunk has been taken; wait for those still being summed by helpers.
  while (work->done.load(std::memory_order_acquire) < work->total) std::this_thread::yield();
  double* o = out->typed_data();
  for (int64_t row = 0; row < rows; ++row) {
    double acc[kSums] = {};
    for (int64_t c = row * work->per_row; c < (row + 1) * work->per_row; ++c) {
      for (int k = 0; k < kSums; ++k) acc[k] += work->partial[kSums * c + k];
    }
    std::copy(acc, acc + kSums, o + kSums * row);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(KlrlTiltSums, TiltSums,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F64>>()  // logp
                                  .Arg<ffi::Buffer<ffi::F64>>()  // reward
                                  .Arg<ffi::Buffer<ffi::F64>>()  // shift
                                  .Arg<ffi::Buffer<ffi::F64>>()  // center
                                  .Arg<ffi::Buffer<ffi::F64>>()  // lam
                                  .Attr<bool>("single")
                                  .Ret<ffi::Buffer<ffi::F64>>());
