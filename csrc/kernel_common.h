// Shared pieces of the CPU kernel ops: parameter parsing, input checks, and the tile epilogue.
//
// Every kernel is an elementwise function of s = <x1_i, x2_j>, n1 = ||x1_i||^2 and
// n2 = ||x2_j||^2 (see fastkernels/kernels/formulas.py, the reference). A tile of s comes from
// one GEMM (MKL / OpenBLAS through at::mm_out); the epilogue below then rewrites the tile in
// place while it is still in L2.
//
// Vectorisation without -march=native: the hot loops are plain C++ that GCC auto-vectorises,
// compiled three times (AVX-512, AVX2+FMA, baseline) through target attributes and picked once
// at run time from the CPU's features, so one binary runs on any x86-64 CPU at its best width.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

namespace fastkernels {

enum class Kind {
  rbf,
  laplace,
  matern15,
  matern25,
  polynomial,
  linear,
  arccos0,
  arccos1,
  nngp,
  ntk
};

struct Spec {
  Kind kind = Kind::rbf;
  double gamma = 1.0;
  double coef0 = 0.0;
  int64_t degree = 1;
  // nngp / ntk: ReLU MLP with `depth` hidden layers, or the 3resnet (resnet, depth unused);
  // train_all adds the readout's term (trainable "all" rather than "hidden").
  bool resnet = false;
  int64_t depth = 1;
  bool train_all = false;
  // nngp / ntk see Sigma_1 = inputs / D (formulas.relu_nngp): D, set by the op from x1.
  double dim = 1.0;
};

inline bool is_int(double x) { return std::isfinite(x) && x == std::floor(x); }

// Mirrors fastkernels/ops/_common.py:unpack_params for the kernels implemented here. `dim` is the
// number of input columns D (the nngp / ntk kernels scale their inputs by 1 / D).
inline Spec parse_spec(const char* op, c10::string_view kernel, at::ArrayRef<double> p,
                       int64_t dim) {
  const std::string k(kernel.data(), kernel.size());
  auto want = [&](size_t n, const char* layout) {
    TORCH_CHECK_VALUE(p.size() == n, op, ": params for kernel '", k, "' must be ", layout, " (",
                      n, " values), got ", p.size(), " values");
  };
  auto positive = [&](double g, const char* what) {
    TORCH_CHECK_VALUE(std::isfinite(g) && g > 0, op, ": params for kernel '", k, "': ", what,
                      " must be a finite number > 0, got ", g);
  };
  Spec s;
  if (k == "rbf" || k == "laplace") {
    want(1, "[gamma]");
    positive(p[0], "gamma (bandwidth)");
    s.kind = k == "rbf" ? Kind::rbf : Kind::laplace;
    s.gamma = p[0];
  } else if (k == "matern") {
    want(2, "[nu, gamma]");
    positive(p[1], "gamma (bandwidth)");
    const double nu = p[0];
    TORCH_CHECK_VALUE(nu == 0.5 || nu == 1.5 || nu == 2.5, op,
                      ": params for kernel 'matern': nu must be one of 0.5, 1.5, 2.5, got ", nu);
    s.kind = nu == 0.5 ? Kind::laplace : (nu == 1.5 ? Kind::matern15 : Kind::matern25);
    s.gamma = p[1];
  } else if (k == "polynomial") {
    want(3, "[degree, gamma, coef0]");
    TORCH_CHECK_VALUE(is_int(p[0]) && p[0] >= 1, op,
                      ": params for kernel 'polynomial': degree must be a positive integer, got ",
                      p[0]);
    positive(p[1], "gamma");
    TORCH_CHECK_VALUE(std::isfinite(p[2]), op,
                      ": params for kernel 'polynomial': coef0 must be finite, got ", p[2]);
    s.kind = Kind::polynomial;
    s.degree = static_cast<int64_t>(p[0]);
    s.gamma = p[1];
    s.coef0 = p[2];
  } else if (k == "linear") {
    want(0, "[]");
    s.kind = Kind::linear;
  } else if (k == "arccos") {
    want(1, "[order]");
    TORCH_CHECK_VALUE(p[0] == 0.0 || p[0] == 1.0, op,
                      ": params for kernel 'arccos': order must be 0 or 1, got ", p[0]);
    s.kind = p[0] == 0.0 ? Kind::arccos0 : Kind::arccos1;
  } else if (k == "nngp" || k == "ntk") {
    const bool ntk = k == "ntk";
    const char* layout = ntk ? "[arch_code, depth, trainable_code]" : "[arch_code, depth]";
    want(ntk ? 3 : 2, layout);
    // The messages of unpack_params: op, kernel, layout, what is wrong, the values given.
    auto bad = [&](const char* what) {
      TORCH_CHECK_VALUE(false, op, ": params for kernel '", k, "' (", layout, "): ", what,
                        ", got ", p);
    };
    if (p[0] != 0.0 && p[0] != 1.0) bad("arch_code must be 0 (mlp) or 1 (3resnet)");
    s.resnet = p[0] == 1.0;
    if (!s.resnet) {
      if (!(is_int(p[1]) && p[1] >= 1)) {
        bad("depth (hidden layers of the mlp) must be a positive integer");
      }
      // Capped before the cast (a cast of a huge double to int64 is undefined); a depth this
      // large would never finish in the reference either.
      s.depth = static_cast<int64_t>(std::min(p[1], 1e15));
    } else {
      if (p[1] != 0.0) bad("depth must be 0 for the 3resnet (its depth is fixed)");
      s.depth = 0;
    }
    if (ntk) {
      if (p[2] != 0.0 && p[2] != 1.0) bad("trainable_code must be 0 (hidden) or 1 (all)");
      s.train_all = p[2] == 1.0;
    }
    s.kind = ntk ? Kind::ntk : Kind::nngp;
  } else {
    TORCH_CHECK_VALUE(false, op, ": kernel must be one of 'rbf', 'laplace', 'matern', ",
                      "'polynomial', 'linear', 'arccos', 'nngp', 'ntk' in the C++ ",
                      "implementation, got '", k, "'");
  }
  s.dim = static_cast<double>(dim);
  return s;
}

inline void check_matrix(const char* op, const at::Tensor& a, const char* name,
                         const char* shape) {
  TORCH_CHECK_TYPE(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble, op, ": ",
                   name, " must be float32 or float64, got ", a.scalar_type());
  TORCH_CHECK_VALUE(a.dim() == 2, op, ": ", name, " must be 2-dimensional ", shape,
                    ", got shape ", a.sizes());
  TORCH_CHECK_VALUE(a.numel() > 0, op, ": ", name, " must be non-empty, got shape ", a.sizes());
  TORCH_CHECK_VALUE(a.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ",
                    a.device());
}

inline void check_same(const char* op, const at::Tensor& x1, const at::Tensor& b,
                       const char* name) {
  TORCH_CHECK_TYPE(b.scalar_type() == x1.scalar_type(), op, ": x1 and ", name,
                   " must have the same dtype, got ", x1.scalar_type(), " and ", b.scalar_type());
}

inline void check_finite(const char* op, const at::Tensor& a, const char* name) {
  // NaN / inf would silently poison every entry of a Gram row and any solve built on it.
  TORCH_CHECK_VALUE(at::isfinite(a).all().item<bool>(), op, ": ", name,
                    " must be finite, but contains NaN or inf");
}

inline void check_pair(const char* op, const at::Tensor& x1, const at::Tensor& x2) {
  check_matrix(op, x1, "x1", "(N, D)");
  check_matrix(op, x2, "x2", "(M, D)");
  check_same(op, x1, x2, "x2");
  TORCH_CHECK_VALUE(x1.size(1) == x2.size(1), op,
                    ": x1 and x2 must have the same number of columns D, got x1 ", x1.sizes(),
                    " and x2 ", x2.sizes());
}

// Squared row norms, accumulated in double: they enter n1 + n2 - 2 s, where their rounding
// error is what the cancellation amplifies.
template <typename T>
at::Tensor sq_norms(const at::Tensor& x) {
  auto out = at::empty({x.size(0)}, x.options());
  const T* px = x.data_ptr<T>();
  T* po = out.data_ptr<T>();
  const int64_t d = x.size(1);
  at::parallel_for(0, x.size(0), 1024, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      double acc = 0;
      for (int64_t k = 0; k < d; ++k) acc += static_cast<double>(px[i * d + k]) * px[i * d + k];
      po[i] = static_cast<T>(acc);
    }
  });
  return out;
}

// One tile: `rows` x `cols` entries at `tile` (row stride `ld`) holding s on entry and k on exit.
// Row r of the tile pairs with itself at column `self0 + r` when has_self (exact k(0)).
struct Tile {
  int64_t rows, cols, ld;
  bool has_self;
  int64_t self0;
};

void epilogue_float(const Spec& sp, float* tile, const Tile& t, const float* n1,
                    const float* n2);
void epilogue_double(const Spec& sp, double* tile, const Tile& t, const double* n1,
                     const double* n2);

template <typename T>
inline void epilogue(const Spec& sp, T* tile, const Tile& t, const T* n1, const T* n2);
template <>
inline void epilogue<float>(const Spec& sp, float* tile, const Tile& t, const float* n1,
                            const float* n2) {
  epilogue_float(sp, tile, t, n1, n2);
}
template <>
inline void epilogue<double>(const Spec& sp, double* tile, const Tile& t, const double* n1,
                             const double* n2) {
  epilogue_double(sp, tile, t, n1, n2);
}

// sum_j row[j] * v[j], vectorised (OpenMP simd may reassociate the sum), accumulated in double.
double dot_float(const float* row, const float* v, int64_t n);
double dot_double(const double* row, const double* v, int64_t n);
inline double dot(const float* row, const float* v, int64_t n) { return dot_float(row, v, n); }
inline double dot(const double* row, const double* v, int64_t n) {
  return dot_double(row, v, n);
}

// dst[r, j] (row stride ld) += p[r, j] * q[r, j] (p, q of row stride ldpq) over rows x cols; with
// p null, dst[r, j] *= q[r, j]. The Hadamard step of the structured NTK (ntk_common.h).
void hadamard_float(float* dst, int64_t ld, const float* p, const float* q, int64_t ldpq,
                    int64_t rows, int64_t cols);
void hadamard_double(double* dst, int64_t ld, const double* p, const double* q, int64_t ldpq,
                     int64_t rows, int64_t cols);
template <typename T>
inline void hadamard(T* dst, int64_t ld, const T* p, const T* q, int64_t ldpq, int64_t rows,
                     int64_t cols);
template <>
inline void hadamard<float>(float* dst, int64_t ld, const float* p, const float* q, int64_t ldpq,
                            int64_t rows, int64_t cols) {
  hadamard_float(dst, ld, p, q, ldpq, rows, cols);
}
template <>
inline void hadamard<double>(double* dst, int64_t ld, const double* p, const double* q,
                             int64_t ldpq, int64_t rows, int64_t cols) {
  hadamard_double(dst, ld, p, q, ldpq, rows, cols);
}

}  // namespace fastkernels
