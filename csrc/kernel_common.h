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
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

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

// The parameter layout is defined once, in fastkernels/ops/_common.py (LAYOUT, unpack_params);
// this parser repeats its layouts, checks and messages, and tests/ops/test_params.py checks it
// against that definition case by case. `dim` is the number of input columns D (the nngp / ntk
// kernels scale their inputs by 1 / D).
inline Spec parse_spec(const char* op, c10::string_view kernel, at::ArrayRef<double> p,
                       int64_t dim) {
  static const std::pair<const char*, const char*> kLayouts[] = {
      {"rbf", "[gamma]"},
      {"laplace", "[gamma]"},
      {"matern", "[nu, gamma]"},
      {"polynomial", "[degree, gamma, coef0]"},
      {"linear", "[]"},
      {"arccos", "[order]"},
      {"nngp", "[arch_code, depth]"},
      {"ntk", "[arch_code, depth, trainable_code]"}};
  const std::string k(kernel.data(), kernel.size());
  const char* layout = nullptr;
  for (const auto& [name, l] : kLayouts) layout = k == name ? l : layout;
  TORCH_CHECK_VALUE(layout != nullptr, op, ": kernel must be one of ('rbf', 'laplace', ",
                    "'matern', 'polynomial', 'linear', 'arccos', 'nngp', 'ntk'), got '", k, "'");
  const size_t n = layout[1] == ']' ? 0 : std::count(layout, layout + std::strlen(layout), ',') + 1;
  TORCH_CHECK_VALUE(p.size() == n, op, ": params for kernel '", k, "' must be ", layout, " (", n,
                    " values), got ", p);
  auto bad = [&](bool ok, const char* what) {
    TORCH_CHECK_VALUE(ok, op, ": params for kernel '", k, "' (", layout, "): ", what, ", got ", p);
  };
  auto positive = [](double g) { return std::isfinite(g) && g > 0; };
  Spec s;
  if (k == "rbf" || k == "laplace" || k == "matern") {
    s.gamma = p.back();
    bad(positive(s.gamma), "gamma (bandwidth) must be a finite number > 0");
    const double nu = k == "matern" ? p[0] : 0.5;
    bad(nu == 0.5 || nu == 1.5 || nu == 2.5, "nu must be one of (0.5, 1.5, 2.5)");
    s.kind = k == "rbf" ? Kind::rbf
                        : (nu == 0.5 ? Kind::laplace : (nu == 1.5 ? Kind::matern15 : Kind::matern25));
  } else if (k == "polynomial") {
    bad(is_int(p[0]) && p[0] >= 1, "degree must be a positive integer");
    bad(positive(p[1]), "gamma must be a finite number > 0");
    bad(std::isfinite(p[2]), "coef0 must be finite");
    s.kind = Kind::polynomial;
    // Capped before the cast (a cast of a huge double to int64 is undefined).
    s.degree = static_cast<int64_t>(std::min(p[0], 1e15));
    s.gamma = p[1];
    s.coef0 = p[2];
  } else if (k == "linear") {
    s.kind = Kind::linear;
  } else if (k == "arccos") {
    bad(p[0] == 0.0 || p[0] == 1.0, "order must be 0 or 1");
    s.kind = p[0] == 0.0 ? Kind::arccos0 : Kind::arccos1;
  } else {  // nngp, ntk
    bad(p[0] == 0.0 || p[0] == 1.0, "arch_code must be 0 (mlp) or 1 (3resnet)");
    s.resnet = p[0] == 1.0;
    if (!s.resnet) {
      bad(is_int(p[1]) && p[1] >= 1, "depth (hidden layers of the mlp) must be a positive integer");
      // Capped as the degree; a depth this large would never finish in the reference either.
      s.depth = static_cast<int64_t>(std::min(p[1], 1e15));
    } else {
      bad(p[1] == 0.0, "depth must be 0 for the 3resnet (its depth is fixed)");
      s.depth = 0;
    }
    if (k == "ntk") {
      bad(p[2] == 0.0 || p[2] == 1.0, "trainable_code must be 0 (hidden) or 1 (all)");
      s.train_all = p[2] == 1.0;
    }
    s.kind = k == "ntk" ? Kind::ntk : Kind::nngp;
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

// The finiteness check of an input point set (x1 / x2), plus a range check, from one aminmax
// pass: finite inputs can still give NaN kernels when their squared norms overflow (e.g. float32
// entries near 1e19), through inf - inf in ||x||^2 + ||y||^2 - 2<x, y>. The bound leaves a margin
// of 16 over max|x|^2 * D: the common shift of the translation-invariant kernels (center_pair)
// at most doubles |x|, and the distance sums four terms of that size. Mirrors
// fastkernels/ops/_common.py:check_points.
inline void check_points(const char* op, const at::Tensor& a, const char* name) {
  const auto mm = at::aminmax(a);
  const double lo = std::get<0>(mm).item<double>(), hi = std::get<1>(mm).item<double>();
  // aminmax propagates NaN, so one pair of finite extremes means every entry is finite.
  TORCH_CHECK_VALUE(std::isfinite(lo) && std::isfinite(hi), op, ": ", name,
                    " must be finite, but contains NaN or inf");
  const double amax = std::max(std::abs(lo), std::abs(hi));
  const double big = a.scalar_type() == at::kFloat
                         ? static_cast<double>(std::numeric_limits<float>::max())
                         : std::numeric_limits<double>::max();
  // sqrt form: amax^2 itself may overflow a double for float64 inputs.
  const double limit = std::sqrt(big / (16.0 * static_cast<double>(a.size(1))));
  TORCH_CHECK_VALUE(amax <= limit, op, ": ", name, " has entries up to ", amax,
                    " in absolute value, too large for ",
                    a.scalar_type() == at::kFloat ? "float32" : "float64",
                    ": its squared norms over D = ", a.size(1),
                    " columns would overflow (largest usable |entry| ", limit,
                    "); rescale the inputs or use float64");
}

inline void check_pair(const char* op, const at::Tensor& x1, const at::Tensor& x2) {
  check_matrix(op, x1, "x1", "(N, D)");
  check_matrix(op, x2, "x2", "(M, D)");
  check_same(op, x1, x2, "x2");
  TORCH_CHECK_VALUE(x1.size(1) == x2.size(1), op,
                    ": x1 and x2 must have the same number of columns D, got x1 ", x1.sizes(),
                    " and x2 ", x2.sizes());
}

// Kernels whose value depends only on x1_i - x2_j (they see x only through the distance).
inline bool translation_invariant(const Spec& sp) {
  return sp.kind == Kind::rbf || sp.kind == Kind::laplace || sp.kind == Kind::matern15 ||
         sp.kind == Kind::matern25;
}

// The inputs of a translation-invariant kernel, both shifted by one common c = the mean of the
// rows of x2 (accumulated in double, rounded to the inputs' dtype). ||x||^2 + ||y||^2 - 2<x, y>
// cancels catastrophically on data far from the origin (float32 points at 1000 with spread 0.1
// lose every digit of the distance); after the shift the norms are of the data's spread. The
// float subtraction is exact for coordinates within a factor 2 of c's (Sterbenz), so the shifted
// points are the same points, moved. Takes the detached contiguous inputs; returns contiguous
// tensors, with the second the same object as the first when same_input (self-pairs and the
// shared norms rely on that identity). Other kernels get their inputs back unchanged: they are
// not invariant.
inline std::pair<at::Tensor, at::Tensor> center_pair(const Spec& sp, const at::Tensor& x1,
                                                     const at::Tensor& x2, bool same_input) {
  if (!translation_invariant(sp)) return {x1, x2};
  const at::Tensor c =
      at::mean(x2, {0}, /*keepdim=*/true, at::kDouble).to(x2.scalar_type());
  at::Tensor y1 = (x1 - c).contiguous();
  at::Tensor y2 = same_input ? y1 : (x2 - c).contiguous();
  return {y1, y2};
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

// Near-duplicate pairs of the Laplace kernel (Matern nu = 1/2), exp(-gamma sqrt(d^2)).
//
// d^2 = n1 + n2 - 2 s carries an absolute rounding error of a few eps (n1 + n2), even on
// centred inputs. Kernels smooth in d^2 pass it on at that size, but sqrt has an infinite slope
// at 0: for two copies of one point (in x1 and in x2, not a self-pair) it becomes an error of
// gamma sqrt(eps (n1 + n2)) in the kernel, 1.7e-4 in float32 for points of spread 0.1 in 5
// dimensions. Matern 1.5 / 2.5 are smooth in d^2 at 0 (zero slope in d) and need nothing.
//
// So for the Laplace kernel, a tile row holding an entry whose computed d^2 is below
// tau = kNearFactor eps (n1 + n2) is evaluated from exact squared distances
// sum_k (x1_ik - x2_jk)^2 of the centred points (the difference of two nearby floats is exact).
// The whole row, in one vectorised pass, rather than its flagged entries one by one: in
// low-dimensional data most rows hold a few such entries. Measured, |error of d^2| <=
// c' eps (n1 + n2) with c' <= ~5 (D from 1 to 1000, BLAS GEMM); an entry left alone has a
// computed d^2 >= tau, so its kernel error is at most gamma c' eps (n1 + n2) / sqrt(tau) =
// c' sqrt(eps / kNearFactor) gamma sqrt(n1 + n2), i.e. 1.3e-6 c' gamma sqrt(n1 + n2) in float32
// (measured below 3e-6 for gamma sqrt(n1 + n2) up to 40). In float32 tau is (n1 + n2) / 128:
// near-duplicates only, no pair of ordinary data in more than a few dimensions, so the usual
// cost is one vectorised compare per entry.
constexpr double kNearFactor = 65536.0;

inline bool exact_near_pairs(const Spec& sp) { return sp.kind == Kind::laplace; }

// Whether a tile row (holding s) has an entry with d^2 = a + n2[j] - 2 s[j] < f (a + n2[j]), i.e.
// s[j] > h[j] + ha with h[j] = (1 - f) n2[j] / 2 and ha = (1 - f) a / 2: the sign bit of
// h[j] + ha - s[j], OR-ed over the row (an exact tie counts as a hit; either is fine). It reads
// every entry of every Laplace tile, so it is branch-free, has few operations per entry, and is
// compiled for AVX-512, AVX2 and the baseline (picked when the library loads). The result does
// not depend on the ISA.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FK_NEAR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FK_NEAR_CLONES
#endif
template <typename T, typename U>
inline bool near_row_impl(const T* s, const T* h, T ha, int64_t cols) {
  static_assert(sizeof(T) == sizeof(U), "U: the unsigned integer of T's size");
  U bits = 0;
  for (int64_t j = 0; j < cols; ++j) {
    const T x = (h[j] + ha) - s[j];
    U u;
    std::memcpy(&u, &x, sizeof(u));
    bits |= u;
  }
  return (bits >> (8 * sizeof(U) - 1)) != 0;
}
FK_NEAR_CLONES static inline bool near_row(const float* s, const float* h, float ha,
                                           int64_t cols) {
  return near_row_impl<float, uint32_t>(s, h, ha, cols);
}
FK_NEAR_CLONES static inline bool near_row(const double* s, const double* h, double ha,
                                           int64_t cols) {
  return near_row_impl<double, uint64_t>(s, h, ha, cols);
}

// out[j] = -sum_k (xr[k] - x2t[k * cols + j])^2 / 2 (x2t: x2's rows transposed), vectorised over
// the row like near_row: in low-dimensional data most rows of a Laplace tile come here.
// One pass per k: (-e / 2) e is -e^2 / 2 (halving is exact), so no final pass scales the sum.
template <typename T>
inline void neg_half_sq_dist_row_impl(T* out, const T* xr, const T* x2t, int64_t cols, int64_t d) {
  for (int64_t j = 0; j < cols; ++j) {
    const T e = xr[0] - x2t[j];
    out[j] = (T(-0.5) * e) * e;
  }
  for (int64_t k = 1; k < d; ++k) {
    const T xk = xr[k];
    const T* col = x2t + k * cols;
    for (int64_t j = 0; j < cols; ++j) {
      const T e = xk - col[j];
      out[j] += (T(-0.5) * e) * e;
    }
  }
}
FK_NEAR_CLONES static inline void neg_half_sq_dist_row(float* out, const float* xr,
                                                       const float* x2t, int64_t cols,
                                                       int64_t d) {
  neg_half_sq_dist_row_impl(out, xr, x2t, cols, d);
}
FK_NEAR_CLONES static inline void neg_half_sq_dist_row(double* out, const double* xr,
                                                       const double* x2t, int64_t cols,
                                                       int64_t d) {
  neg_half_sq_dist_row_impl(out, xr, x2t, cols, d);
}

// The tile epilogue of the ops: epilogue<T>(), except that the Laplace kernel's rows that hold a
// near-duplicate pair are evaluated from exact squared distances (above). One object per thread,
// reused across tiles (scratch buffers).
template <typename T>
class TileEpilogue {
 public:
  // `tile` holds s on entry and k on exit, as for epilogue<T>(). x1: the centred rows of the
  // tile's rows; x2: those of its columns (row-major, d columns each).
  void operator()(const Spec& sp, T* tile, const Tile& t, const T* n1, const T* n2, const T* x1,
                  const T* x2, int64_t d) {
    if (!exact_near_pairs(sp)) return epilogue<T>(sp, tile, t, n1, n2);
    const T q = static_cast<T>(0.5 * (1.0 - kNearFactor * std::numeric_limits<T>::epsilon()));
    h_.resize(t.cols);
    for (int64_t j = 0; j < t.cols; ++j) h_[j] = q * n2[j];
    // Whether row r holds a near pair. Its self-pair (at d^2 ~ 0, but exact already: the
    // epilogue sets k(0)) is left out, or every row of a self-Gram would be recomputed.
    auto near = [&](int64_t r) {
      const T* row = tile + r * t.ld;
      const T ha = q * n1[r];
      const int64_t sc = t.has_self ? t.self0 + r : -1;
      if (sc < 0 || sc >= t.cols) return near_row(row, h_.data(), ha, t.cols);
      return near_row(row, h_.data(), ha, sc) ||
             near_row(row + sc + 1, h_.data() + sc + 1, ha, t.cols - sc - 1);
    };
    // Runs of rows with and without a near pair, each evaluated by one epilogue call: rows with
    // one from s = -d^2 / 2 and zero norms (the epilogue's n1 + n2 - 2 s is then d^2 exactly).
    int64_t r0 = 0;
    while (r0 < t.rows) {
      const bool exact = near(r0);
      int64_t r1 = r0 + 1;
      while (r1 < t.rows && near(r1) == exact) ++r1;
      if (exact) {
        prepare(x2, t.cols, std::max(t.rows, t.cols), d);
        for (int64_t r = r0; r < r1; ++r) {
          neg_half_sq_dist_row(tile + r * t.ld, x1 + r * d, x2t_.data(), t.cols, d);
        }
        epilogue<T>(sp, tile + r0 * t.ld, rows_of(t, r0, r1), zeros_.data(), zeros_.data());
      } else {
        epilogue<T>(sp, tile + r0 * t.ld, rows_of(t, r0, r1), n1 + r0, n2);
      }
      r0 = r1;
    }
  }

 private:
  static Tile rows_of(const Tile& t, int64_t begin, int64_t end) {
    return {end - begin, t.cols, t.ld, t.has_self, t.self0 + begin};
  }

  // x2's `cols` rows transposed (d x cols), so that neg_half_sq_dist_row runs over contiguous
  // columns, and `zeros` zero norms; kept while the tile's columns are the same rows of x2.
  void prepare(const T* x2, int64_t cols, int64_t zeros, int64_t d) {
    if (x2 != x2_ || cols != cols_) {
      x2t_.resize(cols * d);
      for (int64_t j = 0; j < cols; ++j) {
        for (int64_t k = 0; k < d; ++k) x2t_[k * cols + j] = x2[j * d + k];
      }
      x2_ = x2;
      cols_ = cols;
    }
    if (static_cast<int64_t>(zeros_.size()) < zeros) zeros_.assign(zeros, T(0));
  }

  const T* x2_ = nullptr;  // the rows x2t_ holds
  int64_t cols_ = 0;
  std::vector<T> h_, x2t_, zeros_;
};

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
