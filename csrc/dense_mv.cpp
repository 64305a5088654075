// fastkernels::_dense_mv_acc64: products of a stored float32 kernel matrix with a float64 block,
// every multiply and add in float64 (the entries converted exactly as they are read).
//
// The iterative solvers keep their vectors in float64 while a large Gram (or the cached tiles
// of K_nM) is stored in float32. A float32 GEMM would round the vector to float32 and sum N
// terms in float32 (an error of ~sqrt(N) eps32 relative to the terms, different at every call)
// and, where the terms cancel, lose the result entirely. Reading float32 and computing in
// float64 costs the same memory traffic as the float32 product, which bounds both.
//
// mode 0: K V (n x t), mode 1: K^T V (m x t), mode 2: K^T (K V) (m x t, each row of K read once
// for both products while it is in cache).
#include "kernel_common.h"

namespace fastkernels {

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FK_CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define FK_CLONES
#endif

FK_CLONES double dot_fd(const float* __restrict r, const double* __restrict v, int64_t n) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += static_cast<double>(r[j]) * v[j];
  return s;
}

FK_CLONES void axpy_fd(double* __restrict acc, const float* __restrict r, double a, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) acc[j] += a * static_cast<double>(r[j]);
}

// Rows per task: enough work per task to hide scheduling, few enough per-thread accumulators.
constexpr int64_t kGrain = 64;

}  // namespace

at::Tensor dense_mv_acc64_cpu(const at::Tensor& k_in, const at::Tensor& v_in, int64_t mode) {
  const char* op = "fastkernels::_dense_mv_acc64";
  TORCH_CHECK_VALUE(k_in.dim() == 2, op, ": K must be 2-D, got shape ", k_in.sizes());
  TORCH_CHECK_VALUE(v_in.dim() == 2, op, ": V must be 2-D, got shape ", v_in.sizes());
  TORCH_CHECK_TYPE(k_in.scalar_type() == at::kFloat, op, ": K must be float32, got ",
                   k_in.scalar_type());
  TORCH_CHECK_TYPE(v_in.scalar_type() == at::kDouble, op, ": V must be float64, got ",
                   v_in.scalar_type());
  TORCH_CHECK_VALUE(mode >= 0 && mode <= 2, op, ": mode must be 0, 1 or 2, got ", mode);
  const int64_t n = k_in.size(0), m = k_in.size(1), t = v_in.size(1);
  const int64_t need = mode == 1 ? n : m;
  TORCH_CHECK_VALUE(v_in.size(0) == need, op, ": V must have ", need, " rows, got shape ",
                    v_in.sizes());
  at::AutoDispatchBelowADInplaceOrView guard;
  const at::Tensor K = k_in.detach().contiguous();
  // Columns of V as contiguous rows: every dot / axpy runs over unit-stride memory.
  const at::Tensor Vt = v_in.detach().t().contiguous();
  const float* pk = K.data_ptr<float>();
  const double* pv = Vt.data_ptr<double>();
  if (mode == 0) {
    at::Tensor out = at::empty({t, n}, v_in.options());
    double* po = out.data_ptr<double>();
    at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t c = 0; c < t; ++c) po[c * n + i] = dot_fd(pk + i * m, pv + c * m, m);
      }
    });
    return out.t().contiguous();
  }
  // Modes 1 and 2 sum over the rows of K: one float64 accumulator (t x m) per task chunk,
  // added up at the end (at most a few per thread with the chunking below).
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t chunks = std::min<int64_t>(std::max<int64_t>(1, n / kGrain), 4 * threads);
  const int64_t per = (n + chunks - 1) / chunks;
  at::Tensor partial = at::zeros({chunks, t, m}, v_in.options());
  double* pp = partial.data_ptr<double>();
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<double> u(t);
    for (int64_t ch = c0; ch < c1; ++ch) {
      double* acc = pp + ch * t * m;
      const int64_t i0 = ch * per, i1 = std::min(n, i0 + per);
      for (int64_t i = i0; i < i1; ++i) {
        const float* row = pk + i * m;
        for (int64_t c = 0; c < t; ++c) {
          u[c] = mode == 1 ? pv[c * n + i] : dot_fd(row, pv + c * m, m);
        }
        for (int64_t c = 0; c < t; ++c) {
          if (u[c] != 0.0) axpy_fd(acc + c * m, row, u[c], m);
        }
      }
    }
  });
  return partial.sum(0).t().contiguous();
}

}  // namespace fastkernels

TORCH_LIBRARY_FRAGMENT(fastkernels, m) {
  m.def("_dense_mv_acc64(Tensor K, Tensor V, int mode) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastkernels, CPU, m) {
  m.impl("_dense_mv_acc64", &fastkernels::dense_mv_acc64_cpu);
}
