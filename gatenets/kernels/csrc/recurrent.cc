// Native CPU sequence kernels for the LSTM and GRU of gatenets, called through XLA FFI.
//
// Each handler runs a whole time loop in one call: per step one GEMM for the input projection
// (skipped when the inputs come pre-projected), one for the recurrent matmul, then the gate
// math fused over the [batch, gates * hidden] block. The backward handlers compute only the
// sequential part in the loop (the pre-activation gradient dz and dh_prev = dz U^T); the weight
// gradients are one large GEMM each after the loop. The arithmetic mirrors
// gatenets/kernels/lstm.py and gatenets/kernels/gru.py expression by expression, so that the
// results agree with the JAX kernels to rounding.
//
// Layout, after ATen's RNN.cpp and jax's examples/ffi: ONE forward and ONE backward time loop
// (run_forward, run_backward) templated over a cell policy (LstmCell<T>, GruCell<T>: the gate
// math of a step and its backward, and what the cell saves); the sizes, weights and options of
// a call bundled in CellParams<T>; the attributes decoded into one Options struct; one dtype
// dispatch (float32, float64); four small handlers that check shapes, fill the parameters and
// call the loop.
//
// Conventions: arrays are row-major and time-major ([time, batch, ...]). Optional arguments
// that are absent arrive as zero-size buffers; the Options flags say which are present.
// `valid` is uint8 [time, batch] (0: hold the carry at that step). The loop visits
// s = reverse ? T-1-k : k for k = 0..T-1.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

// The BLAS: OpenBLAS of the scipy-openblas32 wheel (symbols prefixed scipy_), or MKL when built
// with GATENETS_USE_MKL (its packed GEMM keeps the recurrent kernel packed for the whole loop).
#ifdef GATENETS_USE_MKL
#include "mkl.h"
#define GATENETS_SGEMM cblas_sgemm
#define GATENETS_DGEMM cblas_dgemm
#else
#include "cblas.h"
#define GATENETS_SGEMM scipy_cblas_sgemm
#define GATENETS_DGEMM scipy_cblas_dgemm
#endif
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// ---------------------------------------------------------------------------------------------
// BLAS

// C = alpha * op(A) op(B) + beta * C, row-major. A k of zero still honours beta (some BLAS
// builds return early without touching C; the weight gradient of an empty sequence must be 0).
inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  GATENETS_SGEMM(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
                 int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0 ? 0.0 : beta * c[i * ldc + j];
    return;
  }
  GATENETS_DGEMM(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

#ifdef GATENETS_USE_MKL
// MKL's threads would compete with the loops' own: the sequential layer, set before any call.
const int kMklLayer = mkl_set_threading_layer(MKL_THREADING_SEQUENTIAL);
#endif

// The right-hand factor op(B) [k, n] of a GEMM repeated at every step with the same B (a block
// of the recurrent kernel): C = A op(B) + beta C for A [m, k]. A BLAS GEMM packs B into its
// blocked layout at every call, which at batch 64 costs about a quarter of the step's matmul
// time; with MKL, B is packed once per loop (cblas_sgemm_pack) instead.
template <typename T>
class FixedOperand {
 public:
  FixedOperand(int64_t m, int64_t n, int64_t k, bool tb, const T* b, int64_t ldb)
      : m_(m), n_(n), k_(k), tb_(tb), b_(b), ldb_(ldb) {}
  void multiply(const T* a, int64_t lda, T beta, T* c, int64_t ldc) const {
    gemm(false, tb_, m_, n_, k_, T(1), a, lda, b_, ldb_, beta, c, ldc);
  }

 private:
  int64_t m_, n_, k_;
  bool tb_;
  const T* b_;
  int64_t ldb_;
};

#ifdef GATENETS_USE_MKL
template <>
class FixedOperand<float> {
 public:
  FixedOperand(int64_t m, int64_t n, int64_t k, bool tb, const float* b, int64_t ldb)
      : m_(m), n_(n), k_(k), tb_(tb), b_(b), ldb_(ldb) {
    if (m == 0 || n == 0 || k == 0) return;
    packed_ = static_cast<float*>(
        mkl_malloc(cblas_sgemm_pack_get_size(CblasBMatrix, m, n, k), 64));
    if (packed_ == nullptr) return;  // multiply() then falls back to the plain GEMM
    cblas_sgemm_pack(CblasRowMajor, CblasBMatrix, tb ? CblasTrans : CblasNoTrans, m, n, k, 1.0f,
                     b, ldb, packed_);
  }
  ~FixedOperand() {
    if (packed_ != nullptr) mkl_free(packed_);
  }
  FixedOperand(const FixedOperand&) = delete;
  FixedOperand& operator=(const FixedOperand&) = delete;
  FixedOperand(FixedOperand&& other) noexcept
      : m_(other.m_), n_(other.n_), k_(other.k_), tb_(other.tb_), b_(other.b_),
        ldb_(other.ldb_), packed_(other.packed_) {
    other.packed_ = nullptr;
  }

  void multiply(const float* a, int64_t lda, float beta, float* c, int64_t ldc) const {
    if (packed_ == nullptr) {
      gemm(false, tb_, m_, n_, k_, 1.0f, a, lda, b_, ldb_, beta, c, ldc);
      return;
    }
    cblas_sgemm_compute(CblasRowMajor, CblasNoTrans, CblasPacked, m_, n_, k_, a, lda, packed_,
                        n_, beta, c, ldc);
  }

 private:
  int64_t m_, n_, k_;
  bool tb_;
  const float* b_;
  int64_t ldb_;
  float* packed_ = nullptr;
};
#endif

// ---------------------------------------------------------------------------------------------
// Activations
//
// glibc's expf/tanhf are scalar calls that the compiler cannot vectorise without -ffast-math,
// and at batch 64, hidden 256 the five transcendental calls per unit and step would cost more
// than the step's matmuls. These branch-free float versions (Cephes' polynomials, about 1-2 ulp)
// vectorise; double keeps the libm functions (float64 is for checking, not for speed).

inline float exp_approx(float x) {
  // exp(88) and exp(-87) keep 2^n a normal float; beyond them sigmoid and tanh are saturated.
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // Round x / ln 2 to the nearest integer with the 1.5 * 2^23 trick (no floor: SSE2 vectorises
  // this, and it is exact for |value| < 2^22).
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  // ln 2 in two parts (Cody-Waite) so that x - n ln 2 loses no bits.
  x = x - n * 0.693359375f;
  x = x - n * -2.12194440e-4f;
  const float x2 = x * x;
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * x2 + x + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

inline float tanh_act(float x) {
  // Small |x|: odd polynomial (1 - 2 / (e^{2x} + 1) would cancel); large: via exp.
  const float s = x * x;
  float p = -5.70498872745e-3f;
  p = p * s + 2.06390887954e-2f;
  p = p * s - 5.37397155531e-2f;
  p = p * s + 1.33314422036e-1f;
  p = p * s - 3.33332819422e-1f;
  const float small = p * s * x + x;
  const float ax = std::fabs(x);
  const float large = std::copysign(1.0f - 2.0f / (exp_approx(2.0f * ax) + 1.0f), x);
  return ax < 0.625f ? small : large;
}

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_act(double x) { return std::tanh(x); }

// ---------------------------------------------------------------------------------------------
// Shared helpers

template <typename T>
const T* data(const ffi::AnyBuffer& b) {
  return static_cast<const T*>(b.untyped_data());
}
template <typename T>
T* data(ffi::Result<ffi::AnyBuffer>& b) {
  return static_cast<T*>(b->untyped_data());
}

inline int64_t step_index(int64_t k, int64_t steps, bool reverse) {
  return reverse ? steps - 1 - k : k;
}

// Index of the step visited just before the k-th one, or -1 for the initial carry.
inline int64_t previous_index(int64_t k, int64_t steps, bool reverse) {
  if (k == 0) return -1;
  return reverse ? steps - k : k - 1;
}

// Rows [s * batch, (s + 1) * batch) hold h_{s-1} (in loop order) times the recurrent mask: the
// left factor of the recurrent kernel's gradient, sum_s h_in[s]^T dz[s].
template <typename T>
void previous_states(int64_t steps, int64_t batch, int64_t hidden, const T* hs, const T* h0,
                     const T* mask, bool reverse, T* out) {
  const int64_t block = batch * hidden;
  for (int64_t k = 0; k < steps; ++k) {
    const int64_t s = step_index(k, steps, reverse);
    const int64_t p = previous_index(k, steps, reverse);
    const T* src = p < 0 ? h0 : hs + p * block;
    T* dst = out + s * block;
    if (mask == nullptr) {
      std::memcpy(dst, src, sizeof(T) * block);
    } else {
      for (int64_t i = 0; i < block; ++i) dst[i] = src[i] * mask[i];
    }
  }
}

template <typename T>
void column_sums(int64_t rows, int64_t cols, const T* a, int64_t lda, T* out) {
  std::fill(out, out + cols, T(0));
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = a + r * lda;
    for (int64_t j = 0; j < cols; ++j) out[j] += row[j];
  }
}

ffi::Error shape_error(const std::string& what) { return ffi::Error::InvalidArgument(what); }

std::string dims_string(const ffi::AnyBuffer& b) {
  std::string out = "[";
  auto d = b.dimensions();
  for (size_t i = 0; i < d.size(); ++i) out += (i ? ", " : "") + std::to_string(d[i]);
  return out + "]";
}

// Checks `b` has exactly the dimensions `want`; names the argument in the error.
ffi::Error expect_dims(const char* name, const ffi::AnyBuffer& b,
                       std::initializer_list<int64_t> want) {
  auto d = b.dimensions();
  bool ok = d.size() == want.size();
  size_t i = 0;
  for (int64_t w : want) ok = ok && d[i++] == w;
  if (ok) return ffi::Error::Success();
  std::string expected = "[";
  i = 0;
  for (int64_t w : want) expected += (i++ ? ", " : "") + std::to_string(w);
  return shape_error(std::string(name) + " has shape " + dims_string(b) + "; expected " +
                     expected + "]");
}

#define RETURN_IF_ERROR(expr)              \
  do {                                     \
    ffi::Error _e = (expr);                \
    if (_e.failure()) return _e;           \
  } while (0)

// Constant gates as arithmetic, gate = activation * keep + offset with keep in {0, 1}, which is
// exact either way: a select on a bool stops GCC from vectorising the unit loops.
struct Overrides {
  bool active[3];
  double value[3];
  template <typename T>
  T keep(int gate) const {
    return active[gate] ? T(0) : T(1);
  }
  template <typename T>
  T offset(int gate) const {
    return active[gate] ? T(value[gate]) : T(0);
  }
};

// ---------------------------------------------------------------------------------------------
// Threads
//
// The hidden units are split across threads: at each step every thread multiplies h_{t-1} by its
// own columns of U (one GEMM per gate block) and runs the gate math of its own units, so both the
// matmul and the elementwise work are shared, with one fork-join per step (two in the backward
// loop, whose recurrent matmul needs every unit's dz). OpenBLAS itself is kept single-threaded
// (set from Python): its threads spin, and the split is coarser and cheaper than OpenBLAS's.
//
// Workers spin briefly for the next step, then sleep, so an idle pool costs nothing and a
// busy machine is not flooded with spinning threads. One region runs at a time; an FFI call that
// finds the pool busy (XLA may run two calls at once) runs its parts serially.

class Pool {
 public:
  static Pool& get() {
    static Pool pool;
    return pool;
  }

  int threads() const { return threads_.load(); }

  void set_threads(int count) {
    std::lock_guard<std::mutex> region(busy_);
    count = std::max(1, std::min(count, 256));
    while (static_cast<int>(workers_.size()) < count - 1) {
      const int id = static_cast<int>(workers_.size()) + 1;
      // The generation is read here, under the region lock, not in the new thread: a thread
      // that starts late would otherwise take the next region's generation as already seen.
      const uint64_t start = generation_.load(std::memory_order_acquire);
      workers_.emplace_back([this, id, start] { Work(id, start); });
    }
    threads_.store(count);
  }

  // Calls fn(part) for part in [0, parts); the caller runs part 0.
  template <typename F>
  void run(int parts, F&& fn) {
    if (parts <= 1) {
      if (parts == 1) fn(0);
      return;
    }
    std::unique_lock<std::mutex> region(busy_, std::try_to_lock);
    if (!region.owns_lock() || parts > threads()) {
      for (int p = 0; p < parts; ++p) fn(p);
      return;
    }
    std::function<void(int)> task(std::ref(fn));
    task_ = &task;
    active_ = parts;
    remaining_.store(parts - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(wake_mutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    fn(0);
    for (int spins = 0; remaining_.load(std::memory_order_acquire) != 0; ++spins) {
      if (spins > 2000) std::this_thread::yield();
    }
    task_ = nullptr;
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(wake_mutex_);
      stop_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    for (auto& worker : workers_) worker.join();
  }

 private:
  Pool() = default;

  void Work(int id, uint64_t seen) {
    for (;;) {
      uint64_t now = generation_.load(std::memory_order_acquire);
      // About 50 microseconds of polling covers the gap between two steps; then sleep.
      for (int spins = 0; now == seen && spins < 20000; ++spins) {
        if (spins > 1000 && spins % 64 == 0) std::this_thread::yield();
        now = generation_.load(std::memory_order_acquire);
      }
      if (now == seen) {
        std::unique_lock<std::mutex> lock(wake_mutex_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        now = generation_.load(std::memory_order_acquire);
      }
      seen = now;
      if (stop_) return;
      if (id < active_) {
        (*task_)(id);
        remaining_.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  std::mutex busy_;
  std::vector<std::thread> workers_;
  std::atomic<int> threads_{1};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> remaining_{0};
  std::function<void(int)>* task_ = nullptr;
  int active_ = 0;
  bool stop_ = false;
  std::mutex wake_mutex_;
  std::condition_variable wake_;
};

// [0, count) cut into at most Pool::threads() ranges of whole 16-element blocks (full vectors
// for the unit loops; fewer ranges when count is small).
struct Split {
  int64_t step;
  int parts;
  Split(int64_t count, int threads) {
    const int64_t blocks = (count + 15) / 16;
    const int64_t per = std::max<int64_t>(1, (blocks + threads - 1) / threads);
    step = per * 16;
    parts = count == 0 ? 0 : static_cast<int>((count + step - 1) / step);
  }
  int64_t begin(int part, int64_t count) const { return std::min(count, part * step); }
  int64_t end(int part, int64_t count) const { return std::min(count, (part + 1) * step); }
};

inline int pool_threads() { return Pool::get().threads(); }

// A GEMM with its output columns shared among the pool's threads.
template <typename T>
void gemm_cols(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
               const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  // Below ~1 MFLOP a second thread costs more than it saves.
  const int threads = 2 * m * n * k < (int64_t(1) << 20) ? 1 : pool_threads();
  const Split split(n, threads);
  Pool::get().run(split.parts, [&](int part) {
    const int64_t j0 = split.begin(part, n), j1 = split.end(part, n);
    gemm(ta, tb, m, j1 - j0, k, T(1), a, lda, tb ? b + j0 * ldb : b + j0, ldb, beta, c + j0, ldc);
  });
}

// Projects the inputs of several steps at once: the input kernel is packed by the BLAS once per
// chunk instead of once per step, and a [chunk * batch, features] GEMM runs closer to peak than
// per-step [batch, features] ones. Chunks are sized to about 512 rows and at most 8 MiB, so the
// extra memory stays small whatever the sequence length.
template <typename T>
class InputProjection {
 public:
  InputProjection(bool active, int64_t steps, int64_t batch, int64_t features, int64_t width,
                  bool reverse, const T* x, const T* w, const T* b)
      : steps_(steps), batch_(batch), features_(features), width_(width), reverse_(reverse),
        x_(x), w_(w), b_(b) {
    if (!active || steps == 0 || batch == 0) return;
    const int64_t by_rows = (512 + batch - 1) / batch;
    const int64_t by_bytes = std::max<int64_t>(1, (int64_t(8) << 20) / (batch * width * sizeof(T)));
    chunk_ = std::max<int64_t>(1, std::min({steps, by_rows, by_bytes}));
    buffer_.resize(chunk_ * batch * width);
  }

  // The projected inputs of step s, [batch, width]; writable scratch for the step's GEMM.
  T* step(int64_t s) {
    if (s < lo_ || s > hi_) {
      lo_ = reverse_ ? std::max<int64_t>(0, s - chunk_ + 1) : s;
      hi_ = reverse_ ? s : std::min(steps_ - 1, s + chunk_ - 1);
      const int64_t rows = (hi_ - lo_ + 1) * batch_;
      for (int64_t r = 0; r < rows; ++r) std::memcpy(&buffer_[r * width_], b_, sizeof(T) * width_);
      gemm_cols(false, false, rows, width_, features_, x_ + lo_ * batch_ * features_, features_,
                w_, width_, T(1), buffer_.data(), width_);
    }
    return &buffer_[(s - lo_) * batch_ * width_];
  }

 private:
  int64_t steps_, batch_, features_, width_;
  bool reverse_;
  const T* x_;
  const T* w_;
  const T* b_;
  int64_t chunk_ = 0, lo_ = 0, hi_ = -1;
  std::vector<T> buffer_;
};

// Each thread's share of the recurrent matmul h U as ONE GEMM: its columns of every gate block
// of U ([hidden, gates * hidden]) are copied once per call into a contiguous
// [hidden, gates * width] matrix (width = its number of units), so that a step costs each
// thread one [batch, hidden] x [hidden, gates * width] product into its own buffer, instead of
// one narrow product per gate.
template <typename T>
class RecurrentBlocks {
 public:
  RecurrentBlocks(const Split& split, int64_t batch, int64_t hidden, int gates, const T* u)
      : batch_(batch), hidden_(hidden) {
    const int64_t n = gates * hidden;
    for (int p = 0; p < split.parts; ++p) {
      const int64_t j0 = split.begin(p, hidden), j1 = split.end(p, hidden), width = j1 - j0;
      weights_.emplace_back(hidden * gates * width);
      T* dst = weights_.back().data();
      for (int64_t row = 0; row < hidden; ++row)
        for (int q = 0; q < gates; ++q)
          std::memcpy(dst + row * gates * width + q * width, u + row * n + q * hidden + j0,
                      sizeof(T) * width);
      outputs_.emplace_back(batch * gates * width);
      widths_.push_back(gates * width);
    }
    operands_.reserve(split.parts);
    for (int p = 0; p < split.parts; ++p)
      operands_.emplace_back(batch, widths_[p], hidden, false, weights_[p].data(), widths_[p]);
  }

  // h [batch, hidden] times part p's block: [batch, gates * width], gate q of unit j at
  // [r * gates * width + q * width + j].
  const T* multiply(int part, const T* h) {
    T* out = outputs_[part].data();
    operands_[part].multiply(h, hidden_, T(0), out, widths_[part]);
    return out;
  }

 private:
  int64_t batch_, hidden_;
  std::vector<std::vector<T>> weights_, outputs_;
  std::vector<int64_t> widths_;
  std::vector<FixedOperand<T>> operands_;
};

// Copies columns [j0, j1) of a [rows, width] block.
template <typename T>
void copy_cols(int64_t rows, int64_t width, int64_t j0, int64_t j1, const T* src, T* dst) {
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst + r * width + j0, src + r * width + j0, sizeof(T) * (j1 - j0));
}

// ---------------------------------------------------------------------------------------------
// Call options and parameters

// The attributes of every handler, decoded by name into one struct (the Python side passes all
// of them to each call). Absent optional arrays arrive as zero-size buffers; these flags say
// which are present.
struct Options {
  int64_t reverse;
  int64_t has_input;           // input_kernel and bias given: the projection runs in the loop
  int64_t has_valid;           // valid [time, batch] given
  int64_t has_mask;            // recurrent_mask [batch, hidden] given
  int64_t has_recurrent_bias;  // GRU: b_hn given
  int64_t has_gate_cotangent;  // backward: the returned gates have a cotangent
  int64_t override_mask;       // bit q set: gate q is the constant override_q
  double override_0;
  double override_1;
  double override_2;
};

Overrides make_overrides(const Options& o) {
  const int64_t m = o.override_mask;
  return Overrides{{(m & 1) != 0, (m & 2) != 0, (m & 4) != 0},
                   {o.override_0, o.override_1, o.override_2}};
}

struct Sizes {
  int64_t steps, batch, features, hidden;
};

// The sizes, weights and options of one call in one place, as ATen's CellParams: the loops and
// the cells read them from here instead of taking a dozen arguments each.
template <typename T>
struct CellParams {
  int64_t steps, batch, features, hidden;
  bool reverse;
  bool has_input;
  const T* x;             // [steps, batch, features]: raw inputs (has_input) or projected ones
  const T* w;             // [features, gates * hidden] with has_input, else null
  const T* b;             // [gates * hidden] with has_input in the forward call, else null
  const T* u;             // [hidden, gates * hidden]
  const T* h0;            // [batch, hidden]
  const uint8_t* valid;   // [steps, batch] (0: hold the carry at that step), or null
  const T* mask;          // [batch, hidden] multiplier of h_{t-1}, or null
  Overrides overrides;
};

template <typename T>
CellParams<T> make_params(const Sizes& n, const Options& o, const ffi::AnyBuffer& xs,
                          const ffi::AnyBuffer& input_kernel, const ffi::AnyBuffer* bias,
                          const ffi::AnyBuffer& recurrent_kernel, const ffi::AnyBuffer& h0,
                          const ffi::AnyBuffer& valid, const ffi::AnyBuffer& mask) {
  CellParams<T> p;
  p.steps = n.steps;
  p.batch = n.batch;
  p.features = n.features;
  p.hidden = n.hidden;
  p.reverse = o.reverse != 0;
  p.has_input = o.has_input != 0;
  p.x = data<T>(xs);
  p.w = p.has_input ? data<T>(input_kernel) : nullptr;
  p.b = p.has_input && bias != nullptr ? data<T>(*bias) : nullptr;
  p.u = data<T>(recurrent_kernel);
  p.h0 = data<T>(h0);
  p.valid = o.has_valid ? static_cast<const uint8_t*>(valid.untyped_data()) : nullptr;
  p.mask = o.has_mask ? data<T>(mask) : nullptr;
  p.overrides = make_overrides(o);
  return p;
}

// An output that the caller may leave empty: its data, or null.
template <typename T>
T* optional_data(ffi::Result<ffi::AnyBuffer>& b) {
  return b->element_count() > 0 ? data<T>(b) : nullptr;
}

// Checks the arrays every forward call takes, for a cell of `gates` gate blocks.
ffi::Error forward_sizes(int gates, const ffi::AnyBuffer& xs, const ffi::AnyBuffer& input_kernel,
                         const ffi::AnyBuffer& bias, const ffi::AnyBuffer& recurrent_kernel,
                         const ffi::AnyBuffer& h0, const ffi::AnyBuffer& valid,
                         const ffi::AnyBuffer& mask, const Options& o, Sizes* n) {
  auto xd = xs.dimensions();
  if (xd.size() != 3) return shape_error("xs must be [time, batch, features]; got " + dims_string(xs));
  if (recurrent_kernel.dimensions().size() != 2)
    return shape_error("recurrent_kernel must be 2-d; got " + dims_string(recurrent_kernel));
  *n = Sizes{xd[0], xd[1], xd[2], recurrent_kernel.dimensions()[0]};
  const int64_t width = gates * n->hidden;
  RETURN_IF_ERROR(expect_dims("recurrent_kernel", recurrent_kernel, {n->hidden, width}));
  RETURN_IF_ERROR(expect_dims("h0", h0, {n->batch, n->hidden}));
  if (o.has_input) {
    RETURN_IF_ERROR(expect_dims("input_kernel", input_kernel, {n->features, width}));
    RETURN_IF_ERROR(expect_dims("bias", bias, {width}));
  } else if (n->features != width) {
    return shape_error("xs (pre-projected) has shape " + dims_string(xs) + "; expected last " +
                       "dimension " + std::to_string(gates) + " * hidden = " +
                       std::to_string(width));
  }
  if (o.has_valid) RETURN_IF_ERROR(expect_dims("valid", valid, {n->steps, n->batch}));
  if (o.has_mask) RETURN_IF_ERROR(expect_dims("recurrent_mask", mask, {n->batch, n->hidden}));
  return ffi::Error::Success();
}

// Checks the arrays every backward call takes. xs is read only with the projection inside the
// loop (else it arrives empty): the sizes come from the saved states.
ffi::Error backward_sizes(int gates, const ffi::AnyBuffer& xs, const ffi::AnyBuffer& input_kernel,
                          const ffi::AnyBuffer& recurrent_kernel, const ffi::AnyBuffer& h0,
                          const ffi::AnyBuffer& valid, const ffi::AnyBuffer& mask,
                          const ffi::AnyBuffer& hs, const ffi::AnyBuffer& dh_last,
                          const ffi::AnyBuffer& dhs, const Options& o, Sizes* n) {
  auto hd = hs.dimensions();
  if (hd.size() != 3) return shape_error("hs must be [time, batch, hidden]; got " + dims_string(hs));
  if (recurrent_kernel.dimensions().size() != 2)
    return shape_error("recurrent_kernel must be 2-d; got " + dims_string(recurrent_kernel));
  if (o.has_input && input_kernel.dimensions().size() != 2)
    return shape_error("input_kernel must be 2-d; got " + dims_string(input_kernel));
  const int64_t hidden = recurrent_kernel.dimensions()[0], width = gates * hidden;
  *n = Sizes{hd[0], hd[1], o.has_input ? input_kernel.dimensions()[0] : width, hidden};
  if (o.has_input) RETURN_IF_ERROR(expect_dims("xs", xs, {n->steps, n->batch, n->features}));
  if (o.has_input) RETURN_IF_ERROR(expect_dims("input_kernel", input_kernel, {n->features, width}));
  RETURN_IF_ERROR(expect_dims("recurrent_kernel", recurrent_kernel, {hidden, width}));
  RETURN_IF_ERROR(expect_dims("hs", hs, {n->steps, n->batch, hidden}));
  RETURN_IF_ERROR(expect_dims("h0", h0, {n->batch, hidden}));
  RETURN_IF_ERROR(expect_dims("dh_last", dh_last, {n->batch, hidden}));
  RETURN_IF_ERROR(expect_dims("dhs", dhs, {n->steps, n->batch, hidden}));
  if (o.has_valid) RETURN_IF_ERROR(expect_dims("valid", valid, {n->steps, n->batch}));
  if (o.has_mask) RETURN_IF_ERROR(expect_dims("recurrent_mask", mask, {n->batch, hidden}));
  return ffi::Error::Success();
}

// Threads for a step's recurrent matmul: one per ~1 MFLOP of it at least.
inline Split unit_split(int64_t batch, int64_t hidden, int gates) {
  return Split(hidden, 2 * batch * hidden * gates * hidden < (int64_t(1) << 20) ? 1 : pool_threads());
}

// ---------------------------------------------------------------------------------------------
// The time loops, written once for every cell
//
// A Cell policy (LstmCell, GruCell below) provides:
//   kGates                       gate blocks of the pre-activation ([batch, kGates * hidden])
//   forward_units(s, r, j0, width, zx, zh, zh_stride, h_old, h_new, keep)
//       the gate math of units [j0, j0 + width) of batch row r at step s, with zx the projected
//       inputs (gate q of unit j at q * hidden + j) and zh the recurrent part (at
//       q * zh_stride + j); reads h_old, writes h_new (held: copied), saves what it keeps.
//   store_step(s, j0, j1)        after a step's rows: the cell's own per-step copies.
//   state_before(prev)           backward: the saved state the step before reads (-1: initial).
//   backward_units(s, r, j0, width, before, dh_out, dh, keep)
//       the backward gate math of those units: writes the pre-activation gradient.
//   recurrent_cotangent(s)       [batch, kGates * hidden] to multiply by U^T for dh_{t-1}.
//   carry_units(s, j0, j1, dh_rec, dh)   dh_{t-1} of units [j0, j1) of every row from dh_rec.
//   input_cotangent()            [time * batch, kGates * hidden] gradient of the projected inputs.
//   recurrent_gradient(rows, h_in, du)   dU (and any recurrent bias) after the loop.

// Forward: per step the projected inputs (a chunk of steps at a time inside the loop, else the
// given ones), h_{t-1} times the recurrent mask, then per thread ONE GEMM with its block of U
// and the cell's gate math over its units, row by row. h alternates between two buffers: the
// other threads still read h_{t-1} in their matmul while a thread writes h_t.
template <typename Cell, typename T>
void run_forward(const CellParams<T>& p, Cell& cell, T* hs, T* h_last) {
  constexpr int kGates = Cell::kGates;
  const int64_t batch = p.batch, hidden = p.hidden, g = kGates * hidden;
  std::vector<T> h_a(p.h0, p.h0 + batch * hidden), h_b(batch * hidden);
  T* h_cur = h_a.data();
  T* h_nxt = h_b.data();
  const uint8_t* v = p.valid;
  const T* mask = p.mask;
  std::vector<T> h_in(mask != nullptr ? batch * hidden : 0);
  InputProjection<T> projection(p.has_input, p.steps, batch, p.features, g, p.reverse, p.x, p.w,
                                p.b);
  const Split split = unit_split(batch, hidden, kGates);
  RecurrentBlocks<T> blocks(split, batch, hidden, kGates, p.u);
  for (int64_t k = 0; k < p.steps; ++k) {
    const int64_t s = step_index(k, p.steps, p.reverse);
    const T* zx = p.has_input ? projection.step(s) : p.x + s * batch * g;
    const T* hp = h_cur;
    if (mask != nullptr) {
      for (int64_t i = 0; i < batch * hidden; ++i) h_in[i] = h_cur[i] * mask[i];
      hp = h_in.data();
    }
    Pool::get().run(split.parts, [&](int part) {
      const int64_t j0 = split.begin(part, hidden), j1 = split.end(part, hidden);
      const int64_t width = j1 - j0;
      const T* zh = blocks.multiply(part, hp);
      for (int64_t r = 0; r < batch; ++r) {
        const bool keep = v == nullptr || v[s * batch + r];
        const int64_t o = r * hidden + j0;
        cell.forward_units(s, r, j0, width, zx + r * g + j0, zh + r * kGates * width, width,
                           h_cur + o, h_nxt + o, keep);
      }
      copy_cols(batch, hidden, j0, j1, h_nxt, hs + s * batch * hidden);
      cell.store_step(s, j0, j1);
    });
    std::swap(h_cur, h_nxt);
  }
  std::memcpy(h_last, h_cur, sizeof(T) * batch * hidden);
}

// Backward (reverse loop order): per step, each thread runs the cell's backward gate math of its
// units, then (once every unit's pre-activation gradient is there: a second fork-join) its
// columns of dh_{t-1} = (cotangent U^T) * mask. Only this is sequential; dU, dW, db and dX are
// one large GEMM (or sum) each after the loop. `dh` holds dh_last on entry and dh0 on return.
template <typename Cell, typename T>
void run_backward(const CellParams<T>& p, Cell& cell, const T* hs, const T* dhs, T* dh, T* du,
                  T* dw, T* db, T* dx) {
  constexpr int kGates = Cell::kGates;
  const int64_t steps = p.steps, batch = p.batch, hidden = p.hidden, g = kGates * hidden;
  const uint8_t* v = p.valid;
  std::vector<T> dh_rec(batch * hidden);
  const Split split = unit_split(batch, hidden, kGates);
  // Thread part's columns of cotangent U^T: rows [j0, j1) of U, transposed.
  std::vector<FixedOperand<T>> operands;
  operands.reserve(split.parts);
  for (int part = 0; part < split.parts; ++part) {
    const int64_t j0 = split.begin(part, hidden), j1 = split.end(part, hidden);
    operands.emplace_back(batch, j1 - j0, g, true, p.u + j0 * g, g);
  }

  for (int64_t k = steps - 1; k >= 0; --k) {
    const int64_t s = step_index(k, steps, p.reverse);
    const T* before = cell.state_before(previous_index(k, steps, p.reverse));
    Pool::get().run(split.parts, [&](int part) {
      const int64_t j0 = split.begin(part, hidden), j1 = split.end(part, hidden);
      for (int64_t r = 0; r < batch; ++r) {
        const int64_t row = s * batch + r;
        const bool keep = v == nullptr || v[row];
        cell.backward_units(s, r, j0, j1 - j0, before + r * hidden + j0,
                            dhs + row * hidden + j0, dh + r * hidden + j0, keep);
      }
    });
    Pool::get().run(split.parts, [&](int part) {
      const int64_t j0 = split.begin(part, hidden), j1 = split.end(part, hidden);
      operands[part].multiply(cell.recurrent_cotangent(s), g, T(0), dh_rec.data() + j0, hidden);
      cell.carry_units(s, j0, j1, dh_rec.data(), dh);
    });
  }

  const int64_t rows = steps * batch;
  std::vector<T> h_in(rows * hidden);
  previous_states(steps, batch, hidden, hs, p.h0, p.mask, p.reverse, h_in.data());
  cell.recurrent_gradient(rows, h_in.data(), du);
  if (p.has_input) {
    const T* dproj = cell.input_cotangent();
    const int64_t features = p.features;
    gemm_cols(true, false, features, g, rows, p.x, features, dproj, g, T(0), dw, g);
    column_sums(rows, g, dproj, g, db);
    gemm_cols(false, true, rows, features, g, dproj, g, p.w, g, T(0), dx, features);
  }
}

// Calls the unit function `run(std::bool_constant<a>, ...)` with its runtime flags as
// compile-time ones: a branch inside a unit loop would stop it vectorising.
template <typename F>
void with_flags(F&& run, bool a, bool b) {
  const std::true_type yes;
  const std::false_type no;
  if (a) {
    b ? run(yes, yes) : run(yes, no);
  } else {
    b ? run(no, yes) : run(no, no);
  }
}

// ---------------------------------------------------------------------------------------------
// LSTM
//
// z = x_t (+ x_t W + b) + (h_{t-1} * mask) U;  [i, f, g, o] = [sig, sig, tanh, sig](z)
// c_t = f c_{t-1} + i g;  h_t = o tanh(c_t);  held where valid[t] is 0.
//
// Backward, per step: dh += dhs[t]; masked by valid;
// dc_t = dc + dh o (1 - tanh(c_t)^2); d[i, f, g, o] = [dc_t g, dc_t c_{t-1}, dc_t i, dh tanh c_t]
// (+ the gates' cotangent); dz = d * activation slope (0 for a constant gate);
// dh_prev = (dz U^T) * mask; dc_prev = dc_t f. After the loop: dU = H_in^T dz,
// and with the projection inside the loop dW = X^T dz, db = sum dz, dX = dz W^T.

template <typename T>
class LstmCell {
 public:
  static constexpr int kGates = 4;

  explicit LstmCell(const CellParams<T>& p)
      : p_(p), batch_(p.batch), hidden_(p.hidden), g4_(4 * p.hidden) {}

  // Forward buffers: the cell state lives in c (the c_last output, started from c0); acts
  // [time, batch, 4 hidden] and cs [time, batch, hidden] are kept when not null.
  void start_forward(const T* c0, T* c, T* acts, T* cs) {
    std::memcpy(c, c0, sizeof(T) * batch_ * hidden_);
    c_ = c;
    acts_ = acts;
    cs_ = cs;
  }

  // Backward buffers: the saved c0, cs, acts, the gates' cotangent (or null), dc (dc_last in,
  // dc0 out) and dz [time, batch, 4 hidden], the gradient of the projected inputs.
  void start_backward(const T* c0, const T* cs, const T* acts, const T* dacts, const T* dc_last,
                      T* dc, T* dz) {
    std::memcpy(dc, dc_last, sizeof(T) * batch_ * hidden_);
    c0_ = c0;
    saved_cs_ = cs;
    saved_acts_ = acts;
    dacts_ = dacts;
    dc_ = dc;
    dz_ = dz;
  }

  void forward_units(int64_t s, int64_t r, int64_t j0, int64_t width, const T* zx, const T* zh,
                     int64_t zh_stride, const T* h_old, T* h_new, bool keep) const {
    T* ar = acts_ != nullptr ? acts_ + (s * batch_ + r) * g4_ + j0 : nullptr;
    T* c = c_ + r * hidden_ + j0;
    const Overrides& ov = p_.overrides;
    if (ar != nullptr) {
      if (keep) {
        units<true, true>(width, hidden_, zx, zh, zh_stride, c, h_old, h_new, ar, ov);
      } else {
        units<true, false>(width, hidden_, zx, zh, zh_stride, c, h_old, h_new, ar, ov);
      }
    } else if (keep) {
      units<false, true>(width, hidden_, zx, zh, zh_stride, c, h_old, h_new, ar, ov);
    } else {
      std::memcpy(h_new, h_old, sizeof(T) * width);
    }
  }

  void store_step(int64_t s, int64_t j0, int64_t j1) const {
    if (cs_ != nullptr) copy_cols(batch_, hidden_, j0, j1, c_, cs_ + s * batch_ * hidden_);
  }

  const T* state_before(int64_t prev) const {
    return prev < 0 ? c0_ : saved_cs_ + prev * batch_ * hidden_;
  }

  void backward_units(int64_t s, int64_t r, int64_t j0, int64_t width, const T* c_prev,
                      const T* dh_out, T* dh, bool keep) const {
    const int64_t row = s * batch_ + r;
    const T* dar = dacts_ != nullptr ? dacts_ + row * g4_ + j0 : nullptr;
    with_flags(
        [&](auto with_dacts, auto kept) {
          units_backward<decltype(with_dacts)::value, decltype(kept)::value>(
              width, hidden_, saved_acts_ + row * g4_ + j0, dar, saved_cs_ + row * hidden_ + j0,
              c_prev, dh_out, dc_ + r * hidden_ + j0, dh, dz_ + row * g4_ + j0, p_.overrides);
        },
        dar != nullptr, keep);
  }

  const T* recurrent_cotangent(int64_t s) const { return dz_ + s * batch_ * g4_; }

  void carry_units(int64_t s, int64_t j0, int64_t j1, const T* dh_rec, T* dh) const {
    const uint8_t* v = p_.valid;
    for (int64_t r = 0; r < batch_; ++r) {
      // A held step passes its dh through to the step before, beside the recurrent part.
      const T held = (v == nullptr || v[s * batch_ + r]) ? T(0) : T(1);
      T* __restrict dhr = dh + r * hidden_;
      const T* __restrict rec = dh_rec + r * hidden_;
      if (p_.mask != nullptr) {
        const T* __restrict mr = p_.mask + r * hidden_;
        for (int64_t j = j0; j < j1; ++j) dhr[j] = rec[j] * mr[j] + held * dhr[j];
      } else {
        for (int64_t j = j0; j < j1; ++j) dhr[j] = rec[j] + held * dhr[j];
      }
    }
  }

  const T* input_cotangent() const { return dz_; }

  void recurrent_gradient(int64_t rows, const T* h_in, T* du) const {
    gemm_cols(true, false, hidden_, g4_, rows, h_in, hidden_, dz_, g4_, T(0), du, g4_);
  }

 private:
  // Units [0, count) of one batch row: the pre-activation of gate q of unit j is
  // zx[q * stride + j] (projected input) + zh[q * zh_stride + j] (recurrent part, in the
  // thread's own layout). kUpdate false: the step is held; only the gates are computed
  // (return_gates and the backward pass need them) and the state is copied through.
  template <bool kActs, bool kUpdate>
  static void units(int64_t count, int64_t stride, const T* __restrict zx, const T* __restrict zh,
                    int64_t zh_stride, T* __restrict c, const T* __restrict h_old,
                    T* __restrict h_new, T* __restrict acts, const Overrides& ov) {
    const T ki = ov.keep<T>(0), kf = ov.keep<T>(1), ko = ov.keep<T>(2);
    const T oi = ov.offset<T>(0), of = ov.offset<T>(1), oo = ov.offset<T>(2);
    for (int64_t j = 0; j < count; ++j) {
      const T si = sigmoid(zx[j] + zh[j]);
      const T sf = sigmoid(zx[stride + j] + zh[zh_stride + j]);
      const T g = tanh_act(zx[2 * stride + j] + zh[2 * zh_stride + j]);
      const T so = sigmoid(zx[3 * stride + j] + zh[3 * zh_stride + j]);
      const T i = si * ki + oi;
      const T f = sf * kf + of;
      const T o = so * ko + oo;
      if (kActs) {
        acts[j] = i;
        acts[stride + j] = f;
        acts[2 * stride + j] = g;
        acts[3 * stride + j] = o;
      }
      if (kUpdate) {
        const T c_new = f * c[j] + i * g;
        c[j] = c_new;
        h_new[j] = o * tanh_act(c_new);
      } else {
        h_new[j] = h_old[j];
      }
    }
  }

  // The backward gate math of units [0, count) of one batch row (gate q of unit j at
  // q * stride + j). kKeep false: the step was held, so only the gates' own cotangent reaches
  // dz, and dc passes through unchanged.
  template <bool kDacts, bool kKeep>
  static void units_backward(int64_t count, int64_t stride, const T* __restrict acts,
                             const T* __restrict dacts, const T* __restrict c_t,
                             const T* __restrict c_prev, const T* __restrict dh_out,
                             T* __restrict dc, T* __restrict dh, T* __restrict dz,
                             const Overrides& ov) {
    const T ki = ov.keep<T>(0), kf = ov.keep<T>(1), ko = ov.keep<T>(2);
    for (int64_t j = 0; j < count; ++j) {
      const T dh_acc = dh[j] + dh_out[j];
      dh[j] = dh_acc;
      const T dh_step = kKeep ? dh_acc : T(0);
      const T dc_step = kKeep ? dc[j] : T(0);
      const T i = acts[j], f = acts[stride + j], g = acts[2 * stride + j];
      const T o = acts[3 * stride + j];
      const T tanh_c = tanh_act(c_t[j]);
      const T dc_t = dc_step + dh_step * o * (T(1) - tanh_c * tanh_c);
      T di = dc_t * g, df = dc_t * c_prev[j], dg = dc_t * i, d_o = dh_step * tanh_c;
      if (kDacts) {
        di = di + dacts[j];
        df = df + dacts[stride + j];
        dg = dg + dacts[2 * stride + j];
        d_o = d_o + dacts[3 * stride + j];
      }
      const T zi = di * (i * (T(1) - i));
      const T zf = df * (f * (T(1) - f));
      const T zo = d_o * (o * (T(1) - o));
      dz[j] = zi * ki;
      dz[stride + j] = zf * kf;
      dz[2 * stride + j] = dg * (T(1) - g * g);
      dz[3 * stride + j] = zo * ko;
      if (kKeep) dc[j] = dc_t * f;
    }
  }

  const CellParams<T>& p_;
  int64_t batch_, hidden_, g4_;
  // Forward
  T* c_ = nullptr;
  T* acts_ = nullptr;
  T* cs_ = nullptr;
  // Backward
  const T* c0_ = nullptr;
  const T* saved_cs_ = nullptr;
  const T* saved_acts_ = nullptr;
  const T* dacts_ = nullptr;
  T* dc_ = nullptr;
  T* dz_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// GRU (reset applied after the recurrent matmul)
//
// a = x_t (+ x_t W + b);  hh = (h_{t-1} * mask) U;  m = hh_n + b_hn
// r = sig(a_r + hh_r), z = sig(a_z + hh_z), n = tanh(a_n + r m), h_t = (1 - z) n + z h_{t-1}
//
// Backward: d_an = dh (1 - z)(1 - n^2); d_r = d_an m; d_z = dh (h_{t-1} - n) (+ the gates'
// cotangent); d_ar = d_r r (1 - r), d_az = d_z z (1 - z) (0 for a constant gate);
// d_hh = [d_ar, d_az, d_an r]; dh_prev = dh z + (d_hh U^T) * mask.
// dx = [d_ar, d_az, d_an] is the gradient of the projected inputs. After the loop:
// dU = H_in^T d_hh (two GEMMs: the first two blocks of d_hh are those of dx), d b_hn = sum d_an r.

template <typename T>
class GruCell {
 public:
  static constexpr int kGates = 3;

  explicit GruCell(const CellParams<T>& p)
      : p_(p), batch_(p.batch), hidden_(p.hidden), g3_(3 * p.hidden) {}

  // Forward buffers: b_hn (or null: zero); values r, z, n, m [time, batch, 4 hidden] (for the
  // backward pass) and gates r, z [time, batch, 2 hidden] (returned), each kept when not null.
  void start_forward(const T* bhn, T* values, T* gates) {
    if (bhn == nullptr) {
      zero_bias_.assign(hidden_, T(0));
      bhn = zero_bias_.data();
    }
    bhn_ = bhn;
    values_ = values;
    gates_ = gates;
  }

  // Backward buffers: the saved hs and values, the gates' cotangent (or null) and dxp
  // [time, batch, 3 hidden], the gradient of the projected inputs; d b_hn when not null.
  void start_backward(const T* hs, const T* values, const T* dgates, T* dxp, T* dbhn) {
    saved_hs_ = hs;
    saved_values_ = values;
    dgates_ = dgates;
    dxp_ = dxp;
    dbhn_ = dbhn;
    const int64_t rows = p_.steps * batch_;
    dn_r_.resize(rows * hidden_);
    d_hh_.resize(batch_ * g3_);
    direct_.resize(batch_ * hidden_);
  }

  void forward_units(int64_t s, int64_t r, int64_t j0, int64_t width, const T* a, const T* hh,
                     int64_t hh_stride, const T* h_old, T* h_new, bool keep) const {
    const int64_t row = s * batch_ + r;
    T* vr = values_ != nullptr ? values_ + row * 4 * hidden_ + j0 : nullptr;
    T* gr = gates_ != nullptr ? gates_ + row * 2 * hidden_ + j0 : nullptr;
    auto run = [&](auto with_values, auto with_gates, auto kept) {
      units<decltype(with_values)::value, decltype(with_gates)::value, decltype(kept)::value>(
          width, hidden_, a, hh, hh_stride, bhn_ + j0, h_old, h_new, vr, gr, p_.overrides);
    };
    const std::true_type yes;
    const std::false_type no;
    if (vr != nullptr) {
      with_flags([&](auto g, auto k) { run(yes, g, k); }, gr != nullptr, keep);
    } else if (gr != nullptr) {
      keep ? run(no, yes, yes) : run(no, yes, no);
    } else if (keep) {
      run(no, no, yes);
    } else {
      std::memcpy(h_new, h_old, sizeof(T) * width);
    }
  }

  void store_step(int64_t, int64_t, int64_t) const {}

  const T* state_before(int64_t prev) const {
    return prev < 0 ? p_.h0 : saved_hs_ + prev * batch_ * hidden_;
  }

  void backward_units(int64_t s, int64_t r, int64_t j0, int64_t width, const T* h_prev,
                      const T* dh_out, T* dh, bool keep) {
    const int64_t row = s * batch_ + r;
    const T* dgr = dgates_ != nullptr ? dgates_ + row * 2 * hidden_ + j0 : nullptr;
    with_flags(
        [&](auto with_dgates, auto kept) {
          units_backward<decltype(with_dgates)::value, decltype(kept)::value>(
              width, hidden_, saved_values_ + row * 4 * hidden_ + j0, dgr, h_prev, dh_out, dh,
              dxp_ + row * g3_ + j0, &d_hh_[r * g3_ + j0], &dn_r_[row * hidden_ + j0],
              &direct_[r * hidden_ + j0], p_.overrides);
        },
        dgr != nullptr, keep);
  }

  const T* recurrent_cotangent(int64_t) const { return d_hh_.data(); }

  void carry_units(int64_t, int64_t j0, int64_t j1, const T* dh_rec, T* dh) const {
    const T* mask = p_.mask;
    for (int64_t r = 0; r < batch_; ++r) {
      for (int64_t j = r * hidden_ + j0; j < r * hidden_ + j1; ++j) {
        const T rec = mask != nullptr ? dh_rec[j] * mask[j] : dh_rec[j];
        dh[j] = direct_[j] + rec;
      }
    }
  }

  const T* input_cotangent() const { return dxp_; }

  void recurrent_gradient(int64_t rows, const T* h_in, T* du) const {
    gemm_cols(true, false, hidden_, 2 * hidden_, rows, h_in, hidden_, dxp_, g3_, T(0), du, g3_);
    gemm_cols(true, false, hidden_, hidden_, rows, h_in, hidden_, dn_r_.data(), hidden_, T(0),
              du + 2 * hidden_, g3_);
    if (dbhn_ != nullptr) column_sums(rows, hidden_, dn_r_.data(), hidden_, dbhn_);
  }

 private:
  // Units [0, count) of one batch row (gate q of unit j at q * stride + j in a, values and
  // gates, at q * hh_stride + j in hh); reads h_old, writes h_new. kUpdate false: the step is
  // held (gates still computed).
  template <bool kValues, bool kGates, bool kUpdate>
  static void units(int64_t count, int64_t stride, const T* __restrict a, const T* __restrict hh,
                    int64_t hh_stride, const T* __restrict bhn, const T* __restrict h_old,
                    T* __restrict h_new, T* __restrict values, T* __restrict gates,
                    const Overrides& ov) {
    const T kr = ov.keep<T>(0), kz = ov.keep<T>(1);
    const T or_ = ov.offset<T>(0), oz = ov.offset<T>(1);
    for (int64_t j = 0; j < count; ++j) {
      const T m = hh[2 * hh_stride + j] + bhn[j];
      const T sr = sigmoid(a[j] + hh[j]);
      const T sz = sigmoid(a[stride + j] + hh[hh_stride + j]);
      const T r = sr * kr + or_;
      const T z = sz * kz + oz;
      const T n = tanh_act(a[2 * stride + j] + r * m);
      if (kValues) {
        values[j] = r;
        values[stride + j] = z;
        values[2 * stride + j] = n;
        values[3 * stride + j] = m;
      }
      if (kGates) {
        gates[j] = r;
        gates[stride + j] = z;
      }
      h_new[j] = kUpdate ? (T(1) - z) * n + z * h_old[j] : h_old[j];
    }
  }

  // The backward gate math of units [0, count) of one batch row (gate q of unit j at
  // q * stride + j in values, dx and d_hh; dgates has two blocks). kKeep false: the step was
  // held, so only the gates' own cotangent reaches the pre-activations and dh passes through.
  template <bool kDgates, bool kKeep>
  static void units_backward(int64_t count, int64_t stride, const T* __restrict values,
                             const T* __restrict dgates, const T* __restrict h_prev,
                             const T* __restrict dh_out, const T* __restrict dh,
                             T* __restrict dx, T* __restrict d_hh, T* __restrict dn_r,
                             T* __restrict direct, const Overrides& ov) {
    const T kr = ov.keep<T>(0), kz = ov.keep<T>(1);
    for (int64_t j = 0; j < count; ++j) {
      const T dh_acc = dh[j] + dh_out[j];
      const T dh_step = kKeep ? dh_acc : T(0);
      const T r = values[j], z = values[stride + j], n = values[2 * stride + j];
      const T m = values[3 * stride + j];
      const T d_an = dh_step * (T(1) - z) * (T(1) - n * n);
      T d_r = d_an * m;
      T d_z = dh_step * (h_prev[j] - n);
      if (kDgates) {
        d_r = d_r + dgates[j];
        d_z = d_z + dgates[stride + j];
      }
      const T ar = d_r * r * (T(1) - r);
      const T az = d_z * z * (T(1) - z);
      const T d_ar = ar * kr;
      const T d_az = az * kz;
      const T d_nr = d_an * r;
      dx[j] = d_ar;
      dx[stride + j] = d_az;
      dx[2 * stride + j] = d_an;
      d_hh[j] = d_ar;
      d_hh[stride + j] = d_az;
      d_hh[2 * stride + j] = d_nr;
      dn_r[j] = d_nr;
      direct[j] = kKeep ? dh_step * z : dh_acc;
    }
  }

  const CellParams<T>& p_;
  int64_t batch_, hidden_, g3_;
  std::vector<T> zero_bias_;
  // Forward
  const T* bhn_ = nullptr;
  T* values_ = nullptr;
  T* gates_ = nullptr;
  // Backward
  const T* saved_hs_ = nullptr;
  const T* saved_values_ = nullptr;
  const T* dgates_ = nullptr;
  T* dxp_ = nullptr;
  T* dbhn_ = nullptr;
  std::vector<T> dn_r_;    // d_an * r: the last block of d_hh, for dU after the loop
  std::vector<T> d_hh_;    // this step's d_hh [batch, 3 hidden]
  std::vector<T> direct_;  // dh z (+ dh where the step is held)
};

// ---------------------------------------------------------------------------------------------
// The dtype dispatch and the handlers

// The one dtype dispatch: calls fn(T()) with T the element type of `typed`.
template <typename F>
ffi::Error dispatch(const char* handler, const ffi::AnyBuffer& typed, F&& fn) {
  switch (typed.element_type()) {
    case ffi::DataType::F32:
      return fn(float());
    case ffi::DataType::F64:
      return fn(double());
    default:
      return ffi::Error::InvalidArgument(
          std::string(handler) + ": the arrays must be float32 or float64; got XLA dtype " +
          std::to_string(static_cast<int>(typed.element_type())));
  }
}

using Out = ffi::Result<ffi::AnyBuffer>;

ffi::Error LstmForward(ffi::AnyBuffer xs, ffi::AnyBuffer input_kernel, ffi::AnyBuffer bias,
                       ffi::AnyBuffer recurrent_kernel, ffi::AnyBuffer c0, ffi::AnyBuffer h0,
                       ffi::AnyBuffer valid, ffi::AnyBuffer mask, Options options, Out c_last,
                       Out h_last, Out hs, Out acts, Out cs) {
  Sizes n;
  RETURN_IF_ERROR(forward_sizes(4, xs, input_kernel, bias, recurrent_kernel, h0, valid, mask,
                                options, &n));
  RETURN_IF_ERROR(expect_dims("c0", c0, {n.batch, n.hidden}));
  return dispatch("gatenets_lstm_forward", xs, [&](auto zero) {
    using T = decltype(zero);
    const auto p = make_params<T>(n, options, xs, input_kernel, &bias, recurrent_kernel, h0,
                                  valid, mask);
    LstmCell<T> cell(p);
    cell.start_forward(data<T>(c0), data<T>(c_last), optional_data<T>(acts),
                       optional_data<T>(cs));
    run_forward(p, cell, data<T>(hs), data<T>(h_last));
    return ffi::Error::Success();
  });
}

ffi::Error LstmBackward(ffi::AnyBuffer xs, ffi::AnyBuffer input_kernel,
                        ffi::AnyBuffer recurrent_kernel, ffi::AnyBuffer c0, ffi::AnyBuffer h0,
                        ffi::AnyBuffer valid, ffi::AnyBuffer mask, ffi::AnyBuffer cs,
                        ffi::AnyBuffer hs, ffi::AnyBuffer acts, ffi::AnyBuffer dc_last,
                        ffi::AnyBuffer dh_last, ffi::AnyBuffer dhs, ffi::AnyBuffer dacts,
                        Options options, Out dc0, Out dh0, Out dz, Out du, Out dw, Out db,
                        Out dx) {
  Sizes n;
  RETURN_IF_ERROR(backward_sizes(4, xs, input_kernel, recurrent_kernel, h0, valid, mask, hs,
                                 dh_last, dhs, options, &n));
  RETURN_IF_ERROR(expect_dims("c0", c0, {n.batch, n.hidden}));
  RETURN_IF_ERROR(expect_dims("dc_last", dc_last, {n.batch, n.hidden}));
  RETURN_IF_ERROR(expect_dims("cs", cs, {n.steps, n.batch, n.hidden}));
  RETURN_IF_ERROR(expect_dims("acts", acts, {n.steps, n.batch, 4 * n.hidden}));
  if (options.has_gate_cotangent)
    RETURN_IF_ERROR(expect_dims("dacts", dacts, {n.steps, n.batch, 4 * n.hidden}));
  return dispatch("gatenets_lstm_backward", hs, [&](auto zero) {
    using T = decltype(zero);
    const auto p = make_params<T>(n, options, xs, input_kernel, nullptr, recurrent_kernel, h0,
                                  valid, mask);
    LstmCell<T> cell(p);
    cell.start_backward(data<T>(c0), data<T>(cs), data<T>(acts),
                        options.has_gate_cotangent ? data<T>(dacts) : nullptr, data<T>(dc_last),
                        data<T>(dc0), data<T>(dz));
    T* dh = data<T>(dh0);
    std::memcpy(dh, data<T>(dh_last), sizeof(T) * n.batch * n.hidden);
    run_backward(p, cell, data<T>(hs), data<T>(dhs), dh, data<T>(du), optional_data<T>(dw),
                 optional_data<T>(db), optional_data<T>(dx));
    return ffi::Error::Success();
  });
}

ffi::Error GruForward(ffi::AnyBuffer xs, ffi::AnyBuffer input_kernel, ffi::AnyBuffer bias,
                      ffi::AnyBuffer recurrent_kernel, ffi::AnyBuffer recurrent_bias,
                      ffi::AnyBuffer h0, ffi::AnyBuffer valid, ffi::AnyBuffer mask,
                      Options options, Out h_last, Out hs, Out values, Out gates) {
  Sizes n;
  RETURN_IF_ERROR(forward_sizes(3, xs, input_kernel, bias, recurrent_kernel, h0, valid, mask,
                                options, &n));
  if (options.has_recurrent_bias)
    RETURN_IF_ERROR(expect_dims("recurrent_bias", recurrent_bias, {n.hidden}));
  return dispatch("gatenets_gru_forward", xs, [&](auto zero) {
    using T = decltype(zero);
    const auto p = make_params<T>(n, options, xs, input_kernel, &bias, recurrent_kernel, h0,
                                  valid, mask);
    GruCell<T> cell(p);
    cell.start_forward(options.has_recurrent_bias ? data<T>(recurrent_bias) : nullptr,
                       optional_data<T>(values), optional_data<T>(gates));
    run_forward(p, cell, data<T>(hs), data<T>(h_last));
    return ffi::Error::Success();
  });
}

ffi::Error GruBackward(ffi::AnyBuffer xs, ffi::AnyBuffer input_kernel,
                       ffi::AnyBuffer recurrent_kernel, ffi::AnyBuffer h0, ffi::AnyBuffer valid,
                       ffi::AnyBuffer mask, ffi::AnyBuffer hs, ffi::AnyBuffer values,
                       ffi::AnyBuffer dh_last, ffi::AnyBuffer dhs, ffi::AnyBuffer dgates,
                       Options options, Out dh0, Out dxp, Out du, Out dbhn, Out dw, Out db,
                       Out dx) {
  Sizes n;
  RETURN_IF_ERROR(backward_sizes(3, xs, input_kernel, recurrent_kernel, h0, valid, mask, hs,
                                 dh_last, dhs, options, &n));
  RETURN_IF_ERROR(expect_dims("values", values, {n.steps, n.batch, 4 * n.hidden}));
  if (options.has_gate_cotangent)
    RETURN_IF_ERROR(expect_dims("dgates", dgates, {n.steps, n.batch, 2 * n.hidden}));
  return dispatch("gatenets_gru_backward", hs, [&](auto zero) {
    using T = decltype(zero);
    const auto p = make_params<T>(n, options, xs, input_kernel, nullptr, recurrent_kernel, h0,
                                  valid, mask);
    GruCell<T> cell(p);
    cell.start_backward(data<T>(hs), data<T>(values),
                        options.has_gate_cotangent ? data<T>(dgates) : nullptr, data<T>(dxp),
                        options.has_recurrent_bias ? data<T>(dbhn) : nullptr);
    T* dh = data<T>(dh0);
    std::memcpy(dh, data<T>(dh_last), sizeof(T) * n.batch * n.hidden);
    run_backward(p, cell, data<T>(hs), data<T>(dhs), dh, data<T>(du), optional_data<T>(dw),
                 optional_data<T>(db), optional_data<T>(dx));
    return ffi::Error::Success();
  });
}

}  // namespace

XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(Options, StructMember<int64_t>("reverse"),
                                      StructMember<int64_t>("has_input"),
                                      StructMember<int64_t>("has_valid"),
                                      StructMember<int64_t>("has_mask"),
                                      StructMember<int64_t>("has_recurrent_bias"),
                                      StructMember<int64_t>("has_gate_cotangent"),
                                      StructMember<int64_t>("override_mask"),
                                      StructMember<double>("override_0"),
                                      StructMember<double>("override_1"),
                                      StructMember<double>("override_2"));

// The bindings: arrays in (absent optional ones as zero-size buffers), the options, arrays out.
XLA_FFI_DEFINE_HANDLER_SYMBOL(GatenetsLstmForward, LstmForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // xs
                                  .Arg<ffi::AnyBuffer>()  // input_kernel
                                  .Arg<ffi::AnyBuffer>()  // bias
                                  .Arg<ffi::AnyBuffer>()  // recurrent_kernel
                                  .Arg<ffi::AnyBuffer>()  // c0
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // valid
                                  .Arg<ffi::AnyBuffer>()  // recurrent_mask
                                  .Attrs<Options>()
                                  .Ret<ffi::AnyBuffer>()  // c_last
                                  .Ret<ffi::AnyBuffer>()  // h_last
                                  .Ret<ffi::AnyBuffer>()  // hs
                                  .Ret<ffi::AnyBuffer>()  // acts (or empty)
                                  .Ret<ffi::AnyBuffer>());  // cs (or empty)

XLA_FFI_DEFINE_HANDLER_SYMBOL(GatenetsLstmBackward, LstmBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // xs (or empty)
                                  .Arg<ffi::AnyBuffer>()  // input_kernel (or empty)
                                  .Arg<ffi::AnyBuffer>()  // recurrent_kernel
                                  .Arg<ffi::AnyBuffer>()  // c0
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // valid
                                  .Arg<ffi::AnyBuffer>()  // recurrent_mask
                                  .Arg<ffi::AnyBuffer>()  // cs
                                  .Arg<ffi::AnyBuffer>()  // hs
                                  .Arg<ffi::AnyBuffer>()  // acts
                                  .Arg<ffi::AnyBuffer>()  // dc_last
                                  .Arg<ffi::AnyBuffer>()  // dh_last
                                  .Arg<ffi::AnyBuffer>()  // dhs
                                  .Arg<ffi::AnyBuffer>()  // dacts (or empty)
                                  .Attrs<Options>()
                                  .Ret<ffi::AnyBuffer>()  // dc0
                                  .Ret<ffi::AnyBuffer>()  // dh0
                                  .Ret<ffi::AnyBuffer>()  // dz
                                  .Ret<ffi::AnyBuffer>()  // d recurrent_kernel
                                  .Ret<ffi::AnyBuffer>()  // d input_kernel (or empty)
                                  .Ret<ffi::AnyBuffer>()  // d bias (or empty)
                                  .Ret<ffi::AnyBuffer>());  // d xs raw (or empty)

XLA_FFI_DEFINE_HANDLER_SYMBOL(GatenetsGruForward, GruForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // xs
                                  .Arg<ffi::AnyBuffer>()  // input_kernel
                                  .Arg<ffi::AnyBuffer>()  // bias
                                  .Arg<ffi::AnyBuffer>()  // recurrent_kernel
                                  .Arg<ffi::AnyBuffer>()  // recurrent_bias
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // valid
                                  .Arg<ffi::AnyBuffer>()  // recurrent_mask
                                  .Attrs<Options>()
                                  .Ret<ffi::AnyBuffer>()  // h_last
                                  .Ret<ffi::AnyBuffer>()  // hs
                                  .Ret<ffi::AnyBuffer>()  // values r, z, n, m (or empty)
                                  .Ret<ffi::AnyBuffer>());  // gates r, z (or empty)

XLA_FFI_DEFINE_HANDLER_SYMBOL(GatenetsGruBackward, GruBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // xs (or empty)
                                  .Arg<ffi::AnyBuffer>()  // input_kernel (or empty)
                                  .Arg<ffi::AnyBuffer>()  // recurrent_kernel
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // valid
                                  .Arg<ffi::AnyBuffer>()  // recurrent_mask
                                  .Arg<ffi::AnyBuffer>()  // hs
                                  .Arg<ffi::AnyBuffer>()  // values
                                  .Arg<ffi::AnyBuffer>()  // dh_last
                                  .Arg<ffi::AnyBuffer>()  // dhs
                                  .Arg<ffi::AnyBuffer>()  // dgates (or empty)
                                  .Attrs<Options>()
                                  .Ret<ffi::AnyBuffer>()  // dh0
                                  .Ret<ffi::AnyBuffer>()  // d projected inputs
                                  .Ret<ffi::AnyBuffer>()  // d recurrent_kernel
                                  .Ret<ffi::AnyBuffer>()  // d recurrent_bias (or empty)
                                  .Ret<ffi::AnyBuffer>()  // d input_kernel (or empty)
                                  .Ret<ffi::AnyBuffer>()  // d bias (or empty)
                                  .Ret<ffi::AnyBuffer>());  // d xs raw (or empty)

// Thread control for Python (ctypes): the number of threads the loops share their work among.
extern "C" __attribute__((visibility("default"))) void gatenets_native_set_threads(int count) {
  Pool::get().set_threads(count);
}

extern "C" __attribute__((visibility("default"))) int gatenets_native_threads() {
  return Pool::get().threads();
}
