// Shared pieces of the stacked-network ops (resnet_fwd, resnet_bwd, resnet_sgd): the forward and
// backward of ONE member on one mini-batch, written as a handful of BLAS calls on row-major
// buffers plus elementwise passes. The torch references (fastkernels/ops/resnet_*.py) state the
// same formulas on the stacked tensors.
//
// Why not at::matmul: a step at batch 50 and width 256 is about 22 MFLOP in ten small GEMMs; the
// dispatcher, autograd and allocator around each ATen call cost as much as the arithmetic. Here a
// GEMM is one direct call into the BLAS torch links (see mm below), on buffers allocated once per
// op call.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace fastkernels {
namespace resnet {

// "3resnet": out = A (h1 + h2), h2 = relu(U h1 + b2); "3layer": out = A h2; "2layer": out = A h1;
// "bottleneck": out = A (h1 + h2), h2 = relu(V [A h1; 1]) (V of shape m x (k + 1), no b2).
// Always h1 = relu(W x + b1).
enum class Arch { resnet3, layer3, layer2, bottleneck };

inline Arch parse_arch(const char* op, c10::string_view arch) {
  const std::string a(arch.data(), arch.size());
  if (a == "3resnet") return Arch::resnet3;
  if (a == "3layer") return Arch::layer3;
  if (a == "2layer") return Arch::layer2;
  if (a == "bottleneck") return Arch::bottleneck;
  TORCH_CHECK_VALUE(false, op, ": arch must be one of ('3resnet', '3layer', '2layer', ",
                    "'bottleneck'), got '", a, "'");
  return Arch::resnet3;
}

inline bool residual(Arch a) { return a == Arch::resnet3 || a == Arch::bottleneck; }

// The Fortran BLAS GEMMs of the BLAS torch links (MKL in the x86 wheels exports sgemm_ and
// dgemm_ from libtorch_cpu). Looked up at run time, not linked: a torch build without them must
// still load this library, and then falls back to at::mm on wrapped buffers (slower, correct).
// at::native::cpublas::gemm would be the tidy entry but is not exported.
using sgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*,
                          const float*, const float*, const int*, const float*, const int*,
                          const float*, float*, const int*);
using dgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*,
                          const double*, const double*, const int*, const double*, const int*,
                          const double*, double*, const int*);

inline void* find_symbol(const char* name) {
  void* f = dlsym(RTLD_DEFAULT, name);
  if (f != nullptr) return f;
  void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
  return lib == nullptr ? nullptr : dlsym(lib, name);
}

inline sgemm_fn blas_gemm(float*) {
  static const auto f = reinterpret_cast<sgemm_fn>(find_symbol("sgemm_"));
  return f;
}
inline dgemm_fn blas_gemm(double*) {
  static const auto f = reinterpret_cast<dgemm_fn>(find_symbol("dgemm_"));
  return f;
}

// Whether the direct BLAS path is available (else at::mm on wrapped buffers).
inline bool has_blas() {
  return blas_gemm(static_cast<float*>(nullptr)) != nullptr &&
         blas_gemm(static_cast<double*>(nullptr)) != nullptr;
}

// Row-major C (M x N) = alpha * op(A) op(B) + beta * C, op(A) of shape M x K, op(B) K x N, with
// leading dimensions of the row-major storage. BLAS is column-major: a row-major C is a
// column-major C^T = op(B)^T op(A)^T, so the operands swap.
template <typename T>
inline void mm_serial(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                      const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C,
                      int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // BLAS with k = 0 only scales C; spell it out (beta = 0 must clear NaN).
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  const auto gemm = blas_gemm(static_cast<T*>(nullptr));
  if (gemm != nullptr) {
    const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
    const int la = static_cast<int>(lda), lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
    gemm(&tb, &ta, &m, &n, &k, &alpha, B, &lb, A, &la, &beta, C, &lc);
    return;
  }
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto wrap = [&](const T* p, bool trans, int64_t rows, int64_t cols, int64_t ld) {
    // op(P) of shape rows x cols from row-major storage with leading dimension ld.
    auto t = trans ? at::from_blob(const_cast<T*>(p), {cols, rows}, {ld, 1}, opts).t()
                   : at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, opts);
    return t;
  };
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  const at::Tensor a = wrap(A, trans_a, M, K, lda), b = wrap(B, trans_b, K, N, ldb);
  if (beta == T(0)) {
    at::mm_out(c, a, b);
    if (alpha != T(1)) c.mul_(alpha);
  } else {
    c.mul_(beta).addmm_(a, b, T(1), alpha);
  }
}

// Whether this thread's GEMMs may split across the threads: set by for_members while it runs the
// members one after the other (fewer members than threads), so that one network still uses
// every core. Inside a parallel region a GEMM always runs on its own thread.
inline bool& split_gemms() {
  static thread_local bool split = false;
  return split;
}

// mm_serial, split into column (or row) blocks across the threads when split_gemms() is on and
// the product is big enough to pay for the fork (a few microseconds).
template <typename T>
inline void mm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
               int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  const int64_t threads = split_gemms() ? at::get_num_threads() : 1;
  if (threads < 2 || M * N * K < (int64_t{1} << 17) || std::max(M, N) < 32) {
    mm_serial(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  const bool by_cols = N >= M;
  const int64_t len = by_cols ? N : M;
  // Blocks of a multiple of 16 (a whole number of vector registers), one per thread.
  const int64_t block = ((len + threads - 1) / threads + 15) / 16 * 16;
  const int64_t blocks = (len + block - 1) / block;
#pragma omp parallel for num_threads(static_cast<int>(blocks)) schedule(static, 1)
  for (int64_t t = 0; t < blocks; ++t) {
    const int64_t i0 = t * block, n = std::min(block, len - i0);
    if (by_cols) {  // C[:, i0:i0+n] = op(A) op(B)[:, i0:i0+n]
      const T* Bt = trans_b ? B + i0 * ldb : B + i0;
      mm_serial(trans_a, trans_b, M, n, K, alpha, A, lda, Bt, ldb, beta, C + i0, ldc);
    } else {  // C[i0:i0+n, :] = op(A)[i0:i0+n, :] op(B)
      const T* At = trans_a ? A + i0 : A + i0 * lda;
      mm_serial(trans_a, trans_b, n, N, K, alpha, At, lda, B, ldb, beta, C + i0 * ldc, ldc);
    }
  }
}

// f(begin, end) over [0, n), split into contiguous blocks across the threads under the same
// conditions as mm (split_gemms on, enough work): the elementwise passes of one network, which
// would otherwise leave the other cores waiting between the split GEMMs.
template <typename F>
inline void split_range(int64_t n, int64_t align, int64_t unit, const F& f) {
  const int64_t threads = split_gemms() ? at::get_num_threads() : 1;
  if (threads < 2 || n * unit < 8192 || n < 2 * align) {
    f(int64_t{0}, n);
    return;
  }
  const int64_t block = ((n + threads - 1) / threads + align - 1) / align * align;
  const int64_t blocks = (n + block - 1) / block;
#pragma omp parallel for num_threads(static_cast<int>(blocks)) schedule(static, 1)
  for (int64_t t = 0; t < blocks; ++t) f(t * block, std::min(n, (t + 1) * block));
}

// Sizes of one network and the pointers to one member's (effective) weights.
template <typename T>
struct Net {
  Arch arch;
  int64_t d, m, k;
  int64_t p;  // fan-in of the second block: m, or k + 1 for the bottleneck
  const T* W;
  const T* b1;
  const T* U;   // U (m x m) or V (m x (k + 1)); null for the 2layer
  const T* b2;  // null for the 2layer and the bottleneck
  const T* A;
};

// One member's activations on a batch of B rows (row-major, B x width).
template <typename T>
struct Acts {
  T* h1;   // relu(W x + b1)
  T* h2;   // relu(second block); unused for the 2layer
  T* h;    // the readout's input: h1 + h2, h2 or h1 (may alias h1 / h2)
  T* in2;  // bottleneck only: [A h1, 1], B x (k + 1)
  T* out;  // B x k
};

// The elementwise passes, compiled for AVX-512, AVX2 and the baseline and picked when the library
// loads (target_clones; the template bodies inline into each clone). Their results do not depend
// on the ISA beyond FMA contraction.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FK_RESNET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FK_RESNET_CLONES
#endif

// z = relu(z + bias) row by row (bias may be null).
template <typename T>
__attribute__((always_inline)) inline void bias_relu_impl(T* z, const T* bias, int64_t B,
                                                          int64_t m) {
  for (int64_t i = 0; i < B; ++i) {
    T* row = z + i * m;
    if (bias != nullptr) {
      for (int64_t j = 0; j < m; ++j) row[j] = std::max(row[j] + bias[j], T(0));
    } else {
      for (int64_t j = 0; j < m; ++j) row[j] = std::max(row[j], T(0));
    }
  }
}

// out = mask > 0 ? g : 0 on B rows of m columns with row stride ld (in place when out == g: the
// ReLU backward, relu(z) > 0 exactly where z > 0) and, when sums is not null, the column sums of
// out (a bias gradient).
template <typename T>
__attribute__((always_inline)) inline void relu_grad_impl(T* out, const T* g, const T* mask,
                                                          int64_t B, int64_t m, int64_t ld,
                                                          T* sums) {
  if (sums != nullptr)
    for (int64_t j = 0; j < m; ++j) sums[j] = T(0);
  for (int64_t i = 0; i < B; ++i) {
    T* o = out + i * ld;
    const T* gi = g + i * ld;
    const T* mi = mask + i * ld;
    for (int64_t j = 0; j < m; ++j) o[j] = mi[j] > T(0) ? gi[j] : T(0);
    if (sums != nullptr)
      for (int64_t j = 0; j < m; ++j) sums[j] += o[j];
  }
}

// torch.optim.SGD (dampening 0, no Nesterov): b = momentum b + (g + decay w); w -= step b.
template <typename T>
__attribute__((always_inline)) inline void sgd_update_impl(T* w, T* b, const T* g, int64_t n,
                                                           T momentum, T decay, T step) {
  for (int64_t i = 0; i < n; ++i) {
    const T bi = momentum * b[i] + g[i] + decay * w[i];
    b[i] = bi;
    w[i] -= step * bi;
  }
}

// The squared loss's gradient gout = scale (out - y), returning sum (out - y)^2 in float64.
template <typename T>
__attribute__((always_inline)) inline double loss_grad_impl(const T* out, const T* y, T* gout,
                                                            int64_t n, T scale) {
  double loss = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const T diff = out[i] - y[i];
    loss += static_cast<double>(diff) * static_cast<double>(diff);
    gout[i] = diff * scale;
  }
  return loss;
}

template <typename T>
__attribute__((always_inline)) inline void add_impl(T* out, const T* a, const T* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

#define FK_RESNET_LOOPS(T)                                                                      \
  FK_RESNET_CLONES static inline void bias_relu(T* z, const T* bias, int64_t B, int64_t m) {   \
    bias_relu_impl<T>(z, bias, B, m);                                                           \
  }                                                                                             \
  FK_RESNET_CLONES static inline void relu_grad(T* out, const T* g, const T* mask, int64_t B,  \
                                                int64_t m, int64_t ld, T* sums) {               \
    relu_grad_impl<T>(out, g, mask, B, m, ld, sums);                                            \
  }                                                                                             \
  FK_RESNET_CLONES static inline void sgd_update(T* w, T* b, const T* g, int64_t n,            \
                                                 T momentum, T decay, T step) {                 \
    sgd_update_impl<T>(w, b, g, n, momentum, decay, step);                                      \
  }                                                                                             \
  FK_RESNET_CLONES static inline double loss_grad(const T* out, const T* y, T* gout, int64_t n, \
                                                  T scale) {                                    \
    return loss_grad_impl<T>(out, y, gout, n, scale);                                           \
  }                                                                                             \
  FK_RESNET_CLONES static inline void add(T* out, const T* a, const T* b, int64_t n) {         \
    add_impl<T>(out, a, b, n);                                                                  \
  }
FK_RESNET_LOOPS(float)
FK_RESNET_LOOPS(double)
#undef FK_RESNET_LOOPS

// Forward of one member on x (B x d, row stride ldx). With arch "3resnet" / "bottleneck" a.h must
// be its own buffer; for the others it must alias h2 ("3layer") or h1 ("2layer").
template <typename T>
inline void forward(const Net<T>& n, const T* x, int64_t ldx, int64_t B, const Acts<T>& a) {
  const int64_t m = n.m, k = n.k;
  mm<T>(false, true, B, m, n.d, T(1), x, ldx, n.W, n.d, T(0), a.h1, m);
  split_range(B, 1, m, [&](int64_t r0, int64_t r1) { bias_relu(a.h1 + r0 * m, n.b1, r1 - r0, m); });
  if (n.arch == Arch::bottleneck) {
    mm<T>(false, true, B, k, m, T(1), a.h1, m, n.A, m, T(0), a.in2, k + 1);
    for (int64_t i = 0; i < B; ++i) a.in2[i * (k + 1) + k] = T(1);
    mm<T>(false, true, B, m, k + 1, T(1), a.in2, k + 1, n.U, k + 1, T(0), a.h2, m);
    bias_relu(a.h2, static_cast<const T*>(nullptr), B, m);
  } else if (n.arch != Arch::layer2) {
    mm<T>(false, true, B, m, m, T(1), a.h1, m, n.U, m, T(0), a.h2, m);
    split_range(B, 1, m, [&](int64_t r0, int64_t r1) {
      bias_relu(a.h2 + r0 * m, n.b2, r1 - r0, m);
    });
  }
  if (residual(n.arch))
    split_range(B * m, 64, 1, [&](int64_t i0, int64_t i1) {
      add(a.h + i0, a.h1 + i0, a.h2 + i0, i1 - i0);
    });
  mm<T>(false, true, B, k, m, T(1), a.h, m, n.A, m, T(0), a.out, k);
}

// Gradient outputs of one member; a null pointer skips that gradient (and any work only it
// needs). gU is gV (m x (k + 1)) for the bottleneck.
template <typename T>
struct Grads {
  T* W = nullptr;
  T* b1 = nullptr;
  T* U = nullptr;
  T* b2 = nullptr;
  T* A = nullptr;
};

// Scratch of one member's backward: two B x m buffers and one B x (k + 1).
template <typename T>
struct Scratch {
  T* gh;    // d loss / d h, then d loss / d h1, then d loss / d z1
  T* gz2;   // d loss / d z2
  T* gin2;  // bottleneck: d loss / d [A h1; 1]
};

// Backward of one member: gout (B x k) is d loss / d out; the activations are those of forward.
template <typename T>
inline void backward(const Net<T>& n, const T* x, int64_t ldx, int64_t B, const Acts<T>& a,
                     const T* gout, const Grads<T>& g, const Scratch<T>& s) {
  const int64_t m = n.m, k = n.k, d = n.d;
  if (g.A != nullptr) mm<T>(true, false, k, m, B, T(1), gout, k, a.h, m, T(0), g.A, m);
  const bool need_first = g.W != nullptr || g.b1 != nullptr;
  const bool need_second = g.U != nullptr || g.b2 != nullptr;
  // The bottleneck's second block reads A h1: A's gradient has a second term through it.
  const bool need_in2 = n.arch == Arch::bottleneck && (need_first || g.A != nullptr);
  if (!need_first && !need_second && !need_in2) return;
  mm<T>(false, false, B, m, k, T(1), gout, k, n.A, m, T(0), s.gh, m);  // d / d h
  if (n.arch != Arch::layer2) {
    // d / d z2, and the b2 gradient (its column sums) in the same pass.
    T* b2_sums = n.arch == Arch::bottleneck ? nullptr : g.b2;
    split_range(m, 16, B, [&](int64_t j0, int64_t j1) {  // column blocks: sums stay per thread
      relu_grad(s.gz2 + j0, s.gh + j0, a.h2 + j0, B, j1 - j0, m, b2_sums ? b2_sums + j0 : nullptr);
    });
    if (n.arch == Arch::bottleneck) {
      if (g.U != nullptr)
        mm<T>(true, false, m, k + 1, B, T(1), s.gz2, m, a.in2, k + 1, T(0), g.U, k + 1);
      if (need_in2) {
        mm<T>(false, false, B, k + 1, m, T(1), s.gz2, m, n.U, k + 1, T(0), s.gin2, k + 1);
        if (g.A != nullptr)
          mm<T>(true, false, k, m, B, T(1), s.gin2, k + 1, a.h1, m, T(1), g.A, m);
        if (need_first)  // d / d h1 = d / d h (the skip) + (d / d [A h1]) A
          mm<T>(false, false, B, m, k, T(1), s.gin2, k + 1, n.A, m, T(1), s.gh, m);
      }
    } else {
      if (g.U != nullptr) mm<T>(true, false, m, m, B, T(1), s.gz2, m, a.h1, m, T(0), g.U, m);
      if (need_first)  // d / d h1 = [d / d h, the skip of the 3resnet] + (d / d z2) U
        mm<T>(false, false, B, m, m, T(1), s.gz2, m, n.U, m,
              n.arch == Arch::resnet3 ? T(1) : T(0), s.gh, m);
    }
  }
  if (!need_first) return;
  split_range(m, 16, B, [&](int64_t j0, int64_t j1) {  // d / d z1, and the b1 gradient
    relu_grad(s.gh + j0, s.gh + j0, a.h1 + j0, B, j1 - j0, m, g.b1 ? g.b1 + j0 : nullptr);
  });
  if (g.W != nullptr) mm<T>(true, false, m, d, B, T(1), s.gh, m, x, ldx, T(0), g.W, d);
}

// Per-member workspace of forward + backward on batches of up to B rows.
template <typename T>
struct Workspace {
  std::vector<T> buf;
  Acts<T> acts;
  Scratch<T> scratch;

  Workspace(Arch arch, int64_t B, int64_t m, int64_t k) {
    const int64_t bm = B * m;
    // h1, h2, h, gh, gz2 (B x m each); in2, gin2 (B x (k + 1)); out (B x k).
    buf.assign(static_cast<size_t>(5 * bm + B * (3 * k + 2)), T(0));
    T* p = buf.data();
    acts.h1 = p;
    acts.h2 = p + bm;
    acts.h = arch == Arch::layer2 ? acts.h1 : arch == Arch::layer3 ? acts.h2 : p + 2 * bm;
    scratch.gh = p + 3 * bm;
    scratch.gz2 = p + 4 * bm;
    acts.in2 = p + 5 * bm;
    acts.out = acts.in2 + B * (k + 1);
    scratch.gin2 = acts.out + B * k;
  }
};

}  // namespace resnet
}  // namespace fastkernels

namespace fastkernels {
namespace resnet {

// Runs f(begin, end) over the members: split across threads (each member single-threaded, its
// BLAS calls inside the parallel region run on one thread) when there are enough members to
// balance the threads; otherwise serially, each GEMM split across the threads (split_gemms).
template <typename F>
inline void for_members(int64_t E, const F& f) {
  const int64_t threads = at::get_num_threads();
  if (threads > 1 && E >= threads && (E % threads == 0 || E >= 4 * threads) &&
      !at::in_parallel_region()) {
    // One member at a time to whichever thread is free (dynamic): a core slowed down by
    // another process then holds up one member, not a fixed half of them.
#pragma omp parallel for num_threads(static_cast<int>(threads)) schedule(dynamic, 1)
    for (int64_t e = 0; e < E; ++e) f(e, e + 1);
  } else {
    const bool before = split_gemms();
    split_gemms() = threads > 1 && !at::in_parallel_region();
    f(0, E);
    split_gemms() = before;
  }
}

inline void check_float(const char* op, const char* name, const at::Tensor& t,
                        const at::Tensor& like) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ",
                   name, " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ",
                   t.scalar_type(), ", W has ", like.scalar_type());
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": ", name, " is on ", t.device(),
                    ", W on ", like.device());
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        at::IntArrayRef shape) {
  TORCH_CHECK_VALUE(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ",
                    t.sizes());
}

// The checks of fastkernels/ops/_resnet_common.py check_weights, with its messages' substance:
// sizes (E, m, d, k) of the stacked weights of `arch`.
struct Sizes {
  int64_t E, m, d, k;
};

inline Sizes check_weights(const char* op, const at::Tensor& W, const at::Tensor& b1,
                           const std::optional<at::Tensor>& U,
                           const std::optional<at::Tensor>& b2, const at::Tensor& A, Arch arch) {
  TORCH_CHECK_VALUE(W.dim() == 3 && W.numel() > 0, op,
                    ": W must be a non-empty (E, m, d) tensor, got ", W.sizes());
  check_float(op, "W", W, W);
  const int64_t E = W.size(0), m = W.size(1), d = W.size(2);
  TORCH_CHECK_VALUE(A.dim() == 3 && A.size(1) > 0, op, ": A must be an (E, k, m) tensor, got ",
                    A.sizes());
  const int64_t k = A.size(1);
  check_float(op, "A", A, W);
  check_shape(op, "A", A, {E, k, m});
  check_float(op, "b1", b1, W);
  check_shape(op, "b1", b1, {E, m});
  if (arch == Arch::layer2) {
    TORCH_CHECK_VALUE(!U.has_value() && !b2.has_value(), op,
                      ": arch='2layer' has no U or b2; pass None");
  } else {
    TORCH_CHECK_VALUE(U.has_value(), op, ": U must be given for this arch");
    check_float(op, "U", *U, W);
    if (arch == Arch::bottleneck) {
      check_shape(op, "U (the bottleneck's V)", *U, {E, m, k + 1});
      TORCH_CHECK_VALUE(!b2.has_value(), op, ": arch='bottleneck' has no b2; pass None");
    } else {
      check_shape(op, "U", *U, {E, m, m});
      TORCH_CHECK_VALUE(b2.has_value(), op, ": b2 must be given for this arch");
      check_float(op, "b2", *b2, W);
      check_shape(op, "b2", *b2, {E, m});
    }
  }
  return {E, m, d, k};
}

// A stacked batch (E, B, cols): checked, and with rows contiguous (a stride-0 member axis, an
// expand of one shared batch, is kept). Returns the tensor to read.
inline at::Tensor check_batch(const char* op, const char* name, const at::Tensor& x, int64_t E,
                              int64_t cols, const at::Tensor& like) {
  TORCH_CHECK_VALUE(x.dim() == 3 && x.size(0) == E && x.size(2) == cols && x.size(1) > 0, op,
                    ": ", name, " must be an (E, B, ", cols, ") tensor with E = ", E,
                    " and B >= 1, got ", x.sizes());
  check_float(op, name, x, like);
  if (x.stride(2) == 1 && x.stride(1) == cols) return x;
  return x.contiguous();
}

}  // namespace resnet
}  // namespace fastkernels
