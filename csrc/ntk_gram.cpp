// fastkernels::ntk_gram on CPU: the structured empirical NTK
// K = sum_l (A1_l A2_l^T) * (B1_l B2_l^T), one output tile per task (ntk_common.h).
//
// Symmetry: when every a2[l] / b2[l] is the same memory, shape and strides as a1[l] / b1[l]
// (a kernel of a point set with itself, e.g. empirical_ntk(model, x)), K is symmetric: only the
// tiles on and above the diagonal are computed, and each is mirrored below (half the GEMMs).
// The mirror is a copy, so the result is exactly symmetric.
#include "ntk_common.h"

#include <atomic>
#include <utility>

namespace fastkernels {

at::Tensor ntk_gram_cpu(at::TensorList a1_in, at::TensorList b1_in, at::TensorList a2_in,
                        at::TensorList b2_in) {
  const char* op = "fastkernels::ntk_gram";
  check_factors(op, a1_in, b1_in, a2_in, b2_in, nullptr);
  const bool sym = symmetric_factors(a1_in, b1_in, a2_in, b2_in);
  check_factors_finite(op, a1_in, "a1");
  check_factors_finite(op, b1_in, "b1");
  if (!sym) {
    check_factors_finite(op, a2_in, "a2");
    check_factors_finite(op, b2_in, "b2");
  }
  // Below autograd: the custom op's autograd formula already wraps this call.
  at::AutoDispatchBelowADInplaceOrView guard;

  const Factors a1 = contiguous_factors(a1_in), b1 = contiguous_factors(b1_in);
  const Factors a2 = sym ? a1 : contiguous_factors(a2_in);
  const Factors b2 = sym ? b1 : contiguous_factors(b2_in);
  const int64_t n = a1[0].size(0), m = a2[0].size(0);
  at::Tensor out = at::empty({n, m}, a1[0].options());

  const int64_t ti = (n + kNtkTile - 1) / kNtkTile, tj = (m + kNtkTile - 1) / kNtkTile;
  // Row-major order, so that consecutive tasks of one thread reuse the same row panel of A1, B1.
  std::vector<std::pair<int64_t, int64_t>> tiles;
  for (int64_t i = 0; i < ti; ++i) {
    for (int64_t j = sym ? i : 0; j < tj; ++j) tiles.emplace_back(i, j);
  }
  const int64_t n_tiles = static_cast<int64_t>(tiles.size());

  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "ntk_gram_cpu", [&] {
    scalar_t* po = out.data_ptr<scalar_t>();
    // Tiles are handed out one at a time (an atomic counter) rather than in fixed chunks: edge
    // tiles are smaller and a shared machine slows some threads; the result does not depend on
    // which thread computes a tile.
    std::atomic<int64_t> next{0};
    const int64_t workers = std::min<int64_t>(at::get_num_threads(), n_tiles);
    at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
      TileBuffers buf(out.options());
      for (int64_t t = next.fetch_add(1); t < n_tiles; t = next.fetch_add(1)) {
        const auto [ib, jb] = tiles[t];
        const int64_t i0 = ib * kNtkTile, j0 = jb * kNtkTile;
        const int64_t bi = std::min(kNtkTile, n - i0), bj = std::min(kNtkTile, m - j0);
        at::Tensor dst = out.narrow(0, i0, bi).narrow(1, j0, bj);
        scalar_t* pd = po + i0 * m + j0;
        // Inside a parallel region the GEMMs run single-threaded: one tile per thread.
        ntk_tile<scalar_t>(a1, b1, a2, b2, i0, bi, j0, bj, dst, pd, m, buf);
        if (!sym) continue;
        if (ib == jb) {
          // A diagonal tile: BLAS need not round (r, c) and (c, r) alike; copy the upper half.
          for (int64_t r = 0; r < bi; ++r) {
            for (int64_t c = r + 1; c < bj; ++c) pd[c * m + r] = pd[r * m + c];
          }
        } else {
          out.narrow(0, j0, bj).narrow(1, i0, bi).copy_(dst.t());
        }
      }
    });
  });
  return out;
}

}  // namespace fastkernels

// The CPU implementation of the public op, whose schema, reference, fake and autograd
// live in fastkernels/ops/ntk_gram.py (importing fastkernels.ops defines the op, then loads _C).
TORCH_LIBRARY_IMPL(fastkernels, CPU, m) { m.impl("ntk_gram", &fastkernels::ntk_gram_cpu); }
