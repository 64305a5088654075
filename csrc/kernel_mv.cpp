// fastkernels::kernel_mv on CPU: K(x1, x2) @ v on CPU without storing K. Each thread owns a row
// panel of the output and one tile buffer; for every column tile it computes the GEMM tile,
// applies the kernel's epilogue and multiplies by the matching slice of v while the tile is in
// cache. Extra memory: one tile per thread plus the norms, whatever N and M.
#include "kernel_common.h"

#include <vector>

namespace fastkernels {

namespace {
// 256 x 512 tiles (512 KiB in float32): large enough that the per-tile GEMM call overhead is
// small next to the D * 128k multiply-adds and 128k exponentials, small enough for L2.
constexpr int64_t kRows = 256;
constexpr int64_t kCols = 512;
}  // namespace

at::Tensor kernel_mv_cpu(const at::Tensor& x1_in, const at::Tensor& x2_in, const at::Tensor& v_in,
                         c10::string_view kernel, at::ArrayRef<double> params,
                         std::optional<int64_t> diag_offset) {
  const char* op = "fastkernels::kernel_mv";
  check_pair(op, x1_in, x2_in);
  check_matrix(op, v_in, "v", "(M, T)");
  check_same(op, x1_in, v_in, "v");
  TORCH_CHECK_VALUE(v_in.size(0) == x2_in.size(0), op, ": v must have ", x2_in.size(0),
                    " rows (one per row of x2), got shape ", v_in.sizes());
  const Spec sp = parse_spec(op, kernel, params, x1_in.size(1));
  const bool same_input = x1_in.is_same(x2_in);
  check_points(op, x1_in, "x1");
  if (!same_input) check_points(op, x2_in, "x2");
  check_finite(op, v_in, "v");
  if (!diag_offset && same_input) diag_offset = 0;
  at::AutoDispatchBelowADInplaceOrView guard;

  // Translation-invariant kernels run on shifted copies (accurate distances far from 0).
  const at::Tensor x1d = x1_in.detach().contiguous();
  const auto centred =
      center_pair(sp, x1d, same_input ? x1d : x2_in.detach().contiguous(), same_input);
  const at::Tensor& x1 = centred.first;
  const at::Tensor& x2 = centred.second;
  const at::Tensor v = v_in.detach().contiguous();
  const int64_t n = x1.size(0), m = x2.size(0), nt = v.size(1);
  at::Tensor out = at::zeros({n, nt}, x1.options());

  AT_DISPATCH_FLOATING_TYPES(x1.scalar_type(), "kernel_mv_cpu", [&] {
    const at::Tensor n1 = sq_norms<scalar_t>(x1);
    const at::Tensor n2 = same_input ? n1 : sq_norms<scalar_t>(x2);
    const scalar_t* pn1 = n1.data_ptr<scalar_t>();
    const scalar_t* pn2 = n2.data_ptr<scalar_t>();
    const scalar_t* pv = v.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    const scalar_t* px1 = x1.data_ptr<scalar_t>();
    const scalar_t* px2 = x2.data_ptr<scalar_t>();
    const int64_t d = x1.size(1);
    const int64_t ti = (n + kRows - 1) / kRows;
    at::parallel_for(0, ti, 1, [&](int64_t t0, int64_t t1) {
      at::Tensor buf = at::empty({kRows, kCols}, x1.options());
      TileEpilogue<scalar_t> apply;
      scalar_t* pb = buf.data_ptr<scalar_t>();
      std::vector<double> acc(kRows);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i0 = t * kRows, bi = std::min(kRows, n - i0);
        const at::Tensor a = x1.narrow(0, i0, bi);
        at::Tensor o = out.narrow(0, i0, bi);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j0 = 0; j0 < m; j0 += kCols) {
          const int64_t bj = std::min(kCols, m - j0);
          at::Tensor c = buf.narrow(0, 0, bi).narrow(1, 0, bj);
          at::mm_out(c, a, x2.narrow(0, j0, bj).t());
          const Tile tile{bi, bj, kCols, diag_offset.has_value(),
                          diag_offset ? i0 + *diag_offset - j0 : 0};
          apply(sp, pb, tile, pn1 + i0, pn2 + j0, px1 + i0 * d, px2 + j0 * d, d);
          if (nt == 1) {
            // One right-hand side: a dot per row, summed in double across column tiles.
            for (int64_t r = 0; r < bi; ++r) acc[r] += dot(pb + r * kCols, pv + j0, bj);
          } else {
            o.addmm_(c, v.narrow(0, j0, bj));
          }
        }
        if (nt == 1) {
          for (int64_t r = 0; r < bi; ++r) po[i0 + r] = static_cast<scalar_t>(acc[r]);
        }
      }
    });
  });
  return out;
}

}  // namespace fastkernels

// The CPU implementation of the public op, whose schema, reference, fake and autograd
// live in fastkernels/ops/kernel_mv.py (importing fastkernels.ops defines the op, then loads _C).
TORCH_LIBRARY_IMPL(fastkernels, CPU, m) { m.impl("kernel_mv", &fastkernels::kernel_mv_cpu); }
