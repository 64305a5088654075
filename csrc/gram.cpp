// fastkernels::gram on CPU: the Gram matrix, one GEMM tile at a time with the kernel's epilogue
// applied while the tile is in cache.
#include "kernel_common.h"

namespace fastkernels {

namespace {
// 128 x 512 tiles: 256 KiB in float32, so the tile the GEMM just wrote is still in L2 (>= 512 KiB
// on current x86 cores) when the epilogue reads it, next to the two input panels.
constexpr int64_t kRows = 128;
constexpr int64_t kCols = 512;
}  // namespace

at::Tensor gram_cpu(const at::Tensor& x1_in, const at::Tensor& x2_in, c10::string_view kernel,
                    at::ArrayRef<double> params, std::optional<int64_t> diag_offset) {
  const char* op = "fastkernels::gram";
  check_pair(op, x1_in, x2_in);
  const Spec sp = parse_spec(op, kernel, params, x1_in.size(1));
  const bool same_input = x1_in.is_same(x2_in);
  check_points(op, x1_in, "x1");
  if (!same_input) check_points(op, x2_in, "x2");
  if (!diag_offset && same_input) diag_offset = 0;
  // Below autograd: the custom op's autograd formula already wraps this call.
  at::AutoDispatchBelowADInplaceOrView guard;
  // Detached views: at::parallel_for does not carry the guard above (thread-local state) into
  // its worker threads, where an at::mm_out on a tensor that requires grad would go through
  // autograd and fail (out= ops are not differentiable).
  // Translation-invariant kernels run on shifted copies (accurate distances far from 0).
  const at::Tensor x1d = x1_in.detach().contiguous();
  const auto centred =
      center_pair(sp, x1d, same_input ? x1d : x2_in.detach().contiguous(), same_input);
  const at::Tensor& x1 = centred.first;
  const at::Tensor& x2 = centred.second;
  const int64_t n = x1.size(0), m = x2.size(0);
  at::Tensor out = at::empty({n, m}, x1.options());

  AT_DISPATCH_FLOATING_TYPES(x1.scalar_type(), "gram_cpu", [&] {
    const at::Tensor n1 = sq_norms<scalar_t>(x1);
    // A self-Gram reuses its norms, so that both sides of a self-pair see the same bits.
    const at::Tensor n2 = same_input ? n1 : sq_norms<scalar_t>(x2);
    const scalar_t* pn1 = n1.data_ptr<scalar_t>();
    const scalar_t* pn2 = n2.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    const scalar_t* px1 = x1.data_ptr<scalar_t>();
    const scalar_t* px2 = x2.data_ptr<scalar_t>();
    const int64_t d = x1.size(1);
    const int64_t ti = (n + kRows - 1) / kRows, tj = (m + kCols - 1) / kCols;
    // One task per tile; inside a parallel region the BLAS call runs single-threaded.
    at::parallel_for(0, ti * tj, 1, [&](int64_t t0, int64_t t1) {
      TileEpilogue<scalar_t> apply;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i0 = (t / tj) * kRows, j0 = (t % tj) * kCols;
        const int64_t bi = std::min(kRows, n - i0), bj = std::min(kCols, m - j0);
        at::Tensor c = out.narrow(0, i0, bi).narrow(1, j0, bj);
        at::mm_out(c, x1.narrow(0, i0, bi), x2.narrow(0, j0, bj).t());
        const Tile tile{bi, bj, m, diag_offset.has_value(),
                        diag_offset ? i0 + *diag_offset - j0 : 0};
        apply(sp, po + i0 * m + j0, tile, pn1 + i0, pn2 + j0, px1 + i0 * d, px2 + j0 * d, d);
      }
    });
  });
  return out;
}

}  // namespace fastkernels

// The CPU implementation of the public op, whose schema, reference, fake and autograd
// live in fastkernels/ops/gram.py (importing fastkernels.ops defines the op, then loads _C).
TORCH_LIBRARY_IMPL(fastkernels, CPU, m) { m.impl("gram", &fastkernels::gram_cpu); }
