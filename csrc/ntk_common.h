// Shared pieces of the structured-NTK CPU ops (ntk_gram.cpp, ntk_mv.cpp): input checks, the
// symmetry test, and one output tile of
//
//     K = sum_l (A1_l A2_l^T) * (B1_l B2_l^T)        (* = Hadamard product)
//
// computed by single-threaded GEMMs (at::mm_out inside at::parallel_for) into per-thread buffers
// and summed into the tile while it is in cache, so that no per-layer N x M matrix exists.
// The torch reference is fastkernels/ops/ntk_gram.py; the messages mirror its check_factors.
#pragma once

#include "kernel_common.h"

#include <vector>

namespace fastkernels {

// Square tiles: the symmetric case computes the tiles on and above the diagonal and mirrors
// them, which needs the same blocking of rows and columns. 256 x 256 keeps the tile and the two
// GEMM buffers at 768 KiB in float32 (L2-sized), and the GEMMs (K = layer width, typically
// 100 - 1000) long enough that the per-call overhead of at::mm_out is below a percent.
constexpr int64_t kNtkTile = 256;

using Factors = std::vector<at::Tensor>;

inline void check_factors(const char* op, at::TensorList a1, at::TensorList b1,
                          at::TensorList a2, at::TensorList b2, const at::Tensor* v) {
  const std::pair<const char*, at::TensorList> lists[] = {
      {"a1", a1}, {"b1", b1}, {"a2", a2}, {"b2", b2}};
  for (const auto& [name, lst] : lists) {
    TORCH_CHECK_VALUE(!lst.empty(), op, ": ", name, " must be a non-empty list of tensors");
  }
  const size_t layers = a1.size();
  for (const auto& [name, lst] : lists) {
    TORCH_CHECK_VALUE(lst.size() == layers, op,
                      ": a1, b1, a2, b2 must have one factor per layer; a1 has ", layers, ", ",
                      name, " has ", lst.size());
  }
  const at::Tensor& ref = a1[0];
  for (const auto& [name, lst] : lists) {
    for (size_t i = 0; i < layers; ++i) {
      const at::Tensor& t = lst[i];
      TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ",
                       name, "[", i, "] must be float32 or float64, got ", t.scalar_type());
      TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, "[", i,
                       "] has dtype ", t.scalar_type(), ", a1[0] has ", ref.scalar_type());
      TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, "[", i,
                        "] must be a CPU tensor, got ", t.device());
      TORCH_CHECK_VALUE(t.dim() == 2 && t.numel() > 0, op, ": ", name, "[", i,
                        "] must be a non-empty 2-D tensor, got ", t.sizes());
    }
  }
  const int64_t n = a1[0].size(0), m = a2[0].size(0);
  for (size_t i = 0; i < layers; ++i) {
    TORCH_CHECK_VALUE(a1[i].size(0) == n, op, ": a1[", i, "] has ", a1[i].size(0),
                      " rows, a1[0] has ", n);
    TORCH_CHECK_VALUE(b1[i].size(0) == n, op, ": b1[", i, "] has ", b1[i].size(0),
                      " rows, a1[0] has ", n);
    TORCH_CHECK_VALUE(a2[i].size(0) == m, op, ": a2[", i, "] has ", a2[i].size(0),
                      " rows, a2[0] has ", m);
    TORCH_CHECK_VALUE(b2[i].size(0) == m, op, ": b2[", i, "] has ", b2[i].size(0),
                      " rows, a2[0] has ", m);
    TORCH_CHECK_VALUE(a1[i].size(1) == a2[i].size(1), op, ": layer ", i,
                      ": a1 and a2 widths differ (", a1[i].size(1), " vs ", a2[i].size(1), ")");
    TORCH_CHECK_VALUE(b1[i].size(1) == b2[i].size(1), op, ": layer ", i,
                      ": b1 and b2 widths differ (", b1[i].size(1), " vs ", b2[i].size(1), ")");
  }
  if (v != nullptr) {
    TORCH_CHECK_TYPE(v->scalar_type() == ref.scalar_type(), op,
                     ": v must have the dtype of the factors (", ref.scalar_type(), "), got ",
                     v->scalar_type());
    TORCH_CHECK_VALUE(v->device().is_cpu(), op, ": v must be a CPU tensor, got ", v->device());
    TORCH_CHECK_VALUE(v->dim() == 2 && v->size(0) == m && v->size(1) > 0, op, ": v must be (",
                      m, ", T) with T >= 1, got ", v->sizes());
  }
}

inline void check_factors_finite(const char* op, at::TensorList lst, const char* name) {
  for (size_t i = 0; i < lst.size(); ++i) {
    TORCH_CHECK_VALUE(at::isfinite(lst[i]).all().item<bool>(), op, ": ", name, "[", i,
                      "] contains NaN or inf");
  }
}

// The same values in the same layout (one tensor, or two views of one memory block): then the
// two sides of K are the same points and K is symmetric.
inline bool same_view(const at::Tensor& x, const at::Tensor& y) {
  // A lazy negation (neg bit) shares the memory but not the values.
  return x.data_ptr() == y.data_ptr() && x.sizes() == y.sizes() && x.strides() == y.strides() &&
         x.scalar_type() == y.scalar_type() && x.is_neg() == y.is_neg() &&
         x.is_conj() == y.is_conj();
}

inline bool symmetric_factors(at::TensorList a1, at::TensorList b1, at::TensorList a2,
                              at::TensorList b2) {
  for (size_t i = 0; i < a1.size(); ++i) {
    if (!same_view(a1[i], a2[i]) || !same_view(b1[i], b2[i])) return false;
  }
  return true;
}

// Each factor with unit column stride, so that the GEMMs read rows directly; a list shared by
// both sides stays shared (no second copy). Detached: at::parallel_for does not carry the
// below-autograd guard into its worker threads, where at::mm_out on a tensor that requires grad
// would fail.
inline Factors contiguous_factors(at::TensorList lst) {
  Factors out;
  out.reserve(lst.size());
  for (const auto& t : lst) out.push_back(t.detach().contiguous());
  return out;
}

// Per-thread GEMM buffers of one tile.
struct TileBuffers {
  at::Tensor p, q;
  explicit TileBuffers(const at::TensorOptions& opts)
      : p(at::empty({kNtkTile * kNtkTile}, opts)), q(at::empty({kNtkTile * kNtkTile}, opts)) {}
};

// K[i0 : i0 + bi, j0 : j0 + bj] into `dst` (a bi x bj view with unit column stride, row stride
// ld, data at pdst): the first layer's A-Gram is written straight into dst, every other Gram
// goes to a thread-local buffer, and the products are summed into dst in the layers' order (the
// reference's order, so that the two agree to rounding).
template <typename T>
void ntk_tile(const Factors& a1, const Factors& b1, const Factors& a2, const Factors& b2,
              int64_t i0, int64_t bi, int64_t j0, int64_t bj, at::Tensor& dst, T* pdst,
              int64_t ld, TileBuffers& buf) {
  at::Tensor p = buf.p.narrow(0, 0, bi * bj).view({bi, bj});
  at::Tensor q = buf.q.narrow(0, 0, bi * bj).view({bi, bj});
  const T* pp = p.data_ptr<T>();
  const T* pq = q.data_ptr<T>();
  for (size_t l = 0; l < a1.size(); ++l) {
    at::mm_out(l == 0 ? dst : p, a1[l].narrow(0, i0, bi), a2[l].narrow(0, j0, bj).t());
    at::mm_out(q, b1[l].narrow(0, i0, bi), b2[l].narrow(0, j0, bj).t());
    hadamard<T>(pdst, ld, l == 0 ? nullptr : pp, pq, bj, bi, bj);
  }
}

}  // namespace fastkernels
