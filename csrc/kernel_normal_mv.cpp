// fastkernels::kernel_normal_mv on CPU: K^T (K v) with K = k(x1, x2) on CPU, in one pass over the
// rows of x1 that never stores K (the normal-equations product of Nystrom / Falkon solvers).
//
// Each thread walks over row panels of x1. Per panel it computes the (rows x M) panel of K (GEMM
// + the kernel's epilogue, as kernel_mv.cpp does), then, while the panel is still in cache,
// u = K_panel v and K_panel^T u. The per-thread accumulator of K^T u is float64: a sum over
// 10^6 rows loses digits in float32. Within one panel (at most kMaxRows rows) the products run in
// v's dtype through BLAS; only the panel's (T x M) share is added into the float64 accumulator.
// Extra memory: one panel, u, and one (T x M) float64 accumulator per thread.
#include "kernel_common.h"

#include <type_traits>

namespace fastkernels {

namespace {
// Panel of K per thread: 3 MiB (256 rows at M = 3000 in float32), an L3 share rather than an L2.
// Measured against L2-sized panels (32-64 rows), the larger panels win at T = 1 and more so at
// T = 16: the GEMM of the panel (inner dimension D, often ~30) and the two products (T rows) run
// nearer BLAS peak on more rows and with fewer calls, which outweighs reading the panel back from
// L3 instead of L2.
constexpr int64_t kPanelBytes = 3 * 1024 * 1024;
// At least 16 rows, so that the per-panel BLAS calls stay efficient for large M (the panel then
// outgrows the budget); at most 256, which bounds the rows of each float32 partial sum of K^T u.
constexpr int64_t kMinRows = 16;
constexpr int64_t kMaxRows = 256;

int64_t panel_rows(int64_t n, int64_t m, int64_t itemsize) {
  const int64_t r = std::clamp(kPanelBytes / (m * itemsize), kMinRows, kMaxRows);
  return std::min(r, n);
}

// One thread's share of the panels: [begin, end) of [0, npanels).
struct Share {
  int64_t begin, end;
};

Share share(int64_t chunk, int64_t nchunks, int64_t npanels) {
  return {chunk * npanels / nchunks, (chunk + 1) * npanels / nchunks};
}

// acc (float64, n entries) += w (float). Contiguous; auto-vectorised.
void add_into(double* acc, const float* w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += static_cast<double>(w[i]);
}

// S: the dtype of x1 / x2 and of the panel of K. V: the dtype of v (S, or double with S float).
template <typename S, typename V>
void normal_mv_impl(const Spec& sp, const at::Tensor& x1, const at::Tensor& x2,
                    const at::Tensor& v, bool same_input, at::Tensor& accs) {
  const int64_t n = x1.size(0), m = x2.size(0), nt = v.size(1);
  const int64_t rows = panel_rows(n, m, static_cast<int64_t>(sizeof(S)));
  const int64_t npanels = (n + rows - 1) / rows;
  const int64_t nchunks = accs.size(0);
  const at::Tensor n1 = sq_norms<S>(x1);
  // A self-product reuses its norms, so that both sides of a self-pair see the same bits.
  const at::Tensor n2 = same_input ? n1 : sq_norms<S>(x2);
  const S* pn1 = n1.data_ptr<S>();
  const S* pn2 = n2.data_ptr<S>();
  const S* px1 = x1.data_ptr<S>();
  const S* px2 = x2.data_ptr<S>();
  const int64_t d = x1.size(1);
  constexpr bool mixed = !std::is_same_v<S, V>;
  const at::Tensor x2t = x2.t();
  // The right-hand sides as rows (T x M), and u and the accumulator transposed likewise: both
  // products are then GEMMs with T as the short outer dimension, which MKL runs near full speed
  // for every T; the (rows x M) @ (M x T) form was several times slower for some small T (4).
  const at::Tensor vt = v.t().contiguous();
  const V* pv = vt.data_ptr<V>();

  // One task per chunk with a fixed split of the panels, so that each chunk owns one
  // accumulator and the result does not depend on the scheduling. Inside the parallel region
  // the BLAS calls run single-threaded.
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    at::Tensor panel = at::empty({rows, m}, x1.options());
    // float32 K with float64 v: the products run on a float64 copy of the panel, so that
    // u = K v accumulates in float64 (as the reference's K.double() @ v).
    at::Tensor wide = mixed ? at::empty({rows, m}, v.options()) : at::Tensor();
    at::Tensor ut = at::empty({nt, rows}, v.options());
    // (K_panel^T u)^T in float32 when v is float32, before its add into the float64 accumulator.
    at::Tensor wt = std::is_same_v<V, float> ? at::empty({nt, m}, v.options()) : at::Tensor();
    S* pp = panel.data_ptr<S>();
    V* pu = ut.data_ptr<V>();
    TileEpilogue<S> apply;  // the epilogue, with the Laplace kernel's near-duplicates exact
    for (int64_t c = c0; c < c1; ++c) {
      at::Tensor acc = accs[c];  // (T, M), float64
      const Share sh = share(c, nchunks, npanels);
      for (int64_t p = sh.begin; p < sh.end; ++p) {
        const int64_t i0 = p * rows, bi = std::min(rows, n - i0);
        at::Tensor kp = panel.narrow(0, 0, bi);
        at::mm_out(kp, x1.narrow(0, i0, bi), x2t);
        // Self-pairs (x1 is x2): row r of the panel is point i0 + r, column i0 + r.
        const Tile tile{bi, m, m, same_input, i0};
        apply(sp, pp, tile, pn1 + i0, pn2, px1 + i0 * d, px2, d);
        at::Tensor q = kp;
        if constexpr (mixed) {
          q = wide.narrow(0, 0, bi);
          q.copy_(kp);
        }
        at::Tensor up = ut.narrow(1, 0, bi);
        if (nt == 1) {
          // One right-hand side: a vectorised dot per row, accumulated in double.
          const V* pq = q.data_ptr<V>();
          for (int64_t r = 0; r < bi; ++r) pu[r] = static_cast<V>(dot(pq + r * m, pv, m));
        } else {
          at::mm_out(up, vt, q.t());
        }
        if constexpr (std::is_same_v<V, double>) {
          acc.addmm_(up, q);
        } else {
          at::mm_out(wt, up, q);
          add_into(acc.data_ptr<double>(), wt.data_ptr<float>(), m * nt);
        }
      }
    }
  });
}

}  // namespace

at::Tensor kernel_normal_mv_cpu(const at::Tensor& x1_in, const at::Tensor& x2_in,
                                const at::Tensor& v_in, c10::string_view kernel,
                                at::ArrayRef<double> params) {
  const char* op = "fastkernels::kernel_normal_mv";
  check_pair(op, x1_in, x2_in);
  check_matrix(op, v_in, "v", "(M, T)");
  TORCH_CHECK_TYPE(v_in.scalar_type() == x1_in.scalar_type() ||
                       v_in.scalar_type() == at::kDouble,
                   op, ": v must have the dtype of x1 (", x1_in.scalar_type(),
                   ") or float64, got ", v_in.scalar_type());
  TORCH_CHECK_VALUE(v_in.size(0) == x2_in.size(0), op, ": v must have ", x2_in.size(0),
                    " rows (one per row of x2), got shape ", v_in.sizes());
  const Spec sp = parse_spec(op, kernel, params, x1_in.size(1));
  const bool same_input = x1_in.is_same(x2_in);
  check_points(op, x1_in, "x1");
  if (!same_input) check_points(op, x2_in, "x2");
  check_finite(op, v_in, "v");
  // Below autograd: the custom op's autograd formula already wraps this call. Detached views:
  // at::parallel_for does not carry the guard into its worker threads.
  at::AutoDispatchBelowADInplaceOrView guard;
  // Translation-invariant kernels run on shifted copies (accurate distances far from 0).
  const at::Tensor x1d = x1_in.detach().contiguous();
  const auto centred =
      center_pair(sp, x1d, same_input ? x1d : x2_in.detach().contiguous(), same_input);
  const at::Tensor& x1 = centred.first;
  const at::Tensor& x2 = centred.second;
  const at::Tensor v = v_in.detach().contiguous();
  const int64_t n = x1.size(0), m = x2.size(0), nt = v.size(1);
  const int64_t itemsize = x1.scalar_type() == at::kFloat ? 4 : 8;
  const int64_t rows = panel_rows(n, m, itemsize);
  const int64_t nchunks = std::min((n + rows - 1) / rows, int64_t{at::get_num_threads()});
  // Per-chunk accumulators of (K^T K v)^T, (T, M) each.
  at::Tensor accs = at::zeros({nchunks, nt, m}, v.options().dtype(at::kDouble));

  if (x1.scalar_type() == at::kDouble) {
    normal_mv_impl<double, double>(sp, x1, x2, v, same_input, accs);
  } else if (v.scalar_type() == at::kDouble) {
    normal_mv_impl<float, double>(sp, x1, x2, v, same_input, accs);
  } else {
    normal_mv_impl<float, float>(sp, x1, x2, v, same_input, accs);
  }
  // The chunks' float64 partial sums, reduced in a fixed order.
  const at::Tensor total = nchunks == 1 ? accs[0] : accs.sum(0);
  return total.t().contiguous().to(v.scalar_type());
}

}  // namespace fastkernels

// The CPU implementation of the public op, whose schema, reference, fake and autograd
// live in fastkernels/ops/kernel_normal_mv.py (importing fastkernels.ops defines the op, then loads _C).
TORCH_LIBRARY_IMPL(fastkernels, CPU, m) { m.impl("kernel_normal_mv", &fastkernels::kernel_normal_mv_cpu); }
