// fastkernels::ntk_mv on CPU: K V for the structured empirical NTK (ntk_common.h), K never
// stored: each task forms one tile of K in a thread-local buffer and multiplies it by the
// matching rows of V while it is in cache.
//
// Symmetric factors (the same memory on both sides, see ntk_gram.cpp): only tiles on and above
// the diagonal are formed; tile (I, J) adds K_IJ V_J to rows I and K_IJ^T V_I to rows J. Rows J
// are shared between tasks, so each of the W chunks of tiles (W = threads) sums into its own
// N x T accumulator and the W accumulators are added in order at the end: the result does not
// depend on timing. That costs (W - 1) N T extra numbers, allowed only while it is no more than
// the factors of one side hold (the op's memory stays O(N (sum of widths) + N T)); otherwise
// every row panel is computed in full by one task.
#include "ntk_common.h"

#include <atomic>
#include <utility>

namespace fastkernels {

at::Tensor ntk_mv_cpu(at::TensorList a1_in, at::TensorList b1_in, at::TensorList a2_in,
                      at::TensorList b2_in, const at::Tensor& v_in) {
  const char* op = "fastkernels::ntk_mv";
  check_factors(op, a1_in, b1_in, a2_in, b2_in, &v_in);
  const bool sym = symmetric_factors(a1_in, b1_in, a2_in, b2_in);
  check_factors_finite(op, a1_in, "a1");
  check_factors_finite(op, b1_in, "b1");
  if (!sym) {
    check_factors_finite(op, a2_in, "a2");
    check_factors_finite(op, b2_in, "b2");
  }
  TORCH_CHECK_VALUE(at::isfinite(v_in).all().item<bool>(), op, ": v contains NaN or inf");
  at::AutoDispatchBelowADInplaceOrView guard;

  const Factors a1 = contiguous_factors(a1_in), b1 = contiguous_factors(b1_in);
  const Factors a2 = sym ? a1 : contiguous_factors(a2_in);
  const Factors b2 = sym ? b1 : contiguous_factors(b2_in);
  const at::Tensor v = v_in.detach().contiguous();
  const int64_t n = a1[0].size(0), m = a2[0].size(0), nt = v.size(1);
  const int64_t ti = (n + kNtkTile - 1) / kNtkTile, tj = (m + kNtkTile - 1) / kNtkTile;
  const auto opts = a1[0].options();

  int64_t factor_numel = 0;
  for (size_t l = 0; l < a1.size(); ++l) factor_numel += a1[l].numel() + b1[l].numel();
  const int64_t upper = ti * (ti + 1) / 2;
  const int64_t chunks = std::min<int64_t>(at::get_num_threads(), upper);
  const bool use_sym = sym && chunks > 0 && (chunks - 1) * n * nt <= factor_numel;

  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(opts.dtype().toScalarType(), "ntk_mv_cpu", [&] {
    auto tile_buffer = [&] { return at::empty({kNtkTile * kNtkTile}, opts); };
    if (!use_sym) {
      out = at::empty({n, nt}, opts);
      // One row panel per task, handed out by an atomic counter; a panel's sum runs over the
      // column tiles in order, so the result does not depend on the thread.
      std::atomic<int64_t> next{0};
      const int64_t workers = std::min<int64_t>(at::get_num_threads(), ti);
      at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
        TileBuffers buf(opts);
        at::Tensor kbuf = tile_buffer();
        for (int64_t ib = next.fetch_add(1); ib < ti; ib = next.fetch_add(1)) {
          const int64_t i0 = ib * kNtkTile, bi = std::min(kNtkTile, n - i0);
          at::Tensor o = out.narrow(0, i0, bi);
          for (int64_t jb = 0; jb < tj; ++jb) {
            const int64_t j0 = jb * kNtkTile, bj = std::min(kNtkTile, m - j0);
            at::Tensor k = kbuf.narrow(0, 0, bi * bj).view({bi, bj});
            ntk_tile<scalar_t>(a1, b1, a2, b2, i0, bi, j0, bj, k, k.data_ptr<scalar_t>(), bj,
                               buf);
            if (jb == 0) {
              at::mm_out(o, k, v.narrow(0, j0, bj));
            } else {
              o.addmm_(k, v.narrow(0, j0, bj));
            }
          }
        }
      });
      return;
    }
    std::vector<std::pair<int64_t, int64_t>> tiles;
    for (int64_t i = 0; i < ti; ++i) {
      for (int64_t j = i; j < ti; ++j) tiles.emplace_back(i, j);
    }
    const int64_t per = (upper + chunks - 1) / chunks;
    std::vector<at::Tensor> acc(chunks);
    for (auto& a : acc) a = at::zeros({n, nt}, opts);
    // Fixed chunks of tiles (not a counter): chunk c always sums the same tiles into acc[c].
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      TileBuffers buf(opts);
      at::Tensor kbuf = tile_buffer();
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t t = c * per; t < std::min(upper, (c + 1) * per); ++t) {
          const auto [ib, jb] = tiles[t];
          const int64_t i0 = ib * kNtkTile, j0 = jb * kNtkTile;
          const int64_t bi = std::min(kNtkTile, n - i0), bj = std::min(kNtkTile, n - j0);
          at::Tensor k = kbuf.narrow(0, 0, bi * bj).view({bi, bj});
          ntk_tile<scalar_t>(a1, b1, a2, b2, i0, bi, j0, bj, k, k.data_ptr<scalar_t>(), bj, buf);
          acc[c].narrow(0, i0, bi).addmm_(k, v.narrow(0, j0, bj));
          if (ib != jb) acc[c].narrow(0, j0, bj).addmm_(k.t(), v.narrow(0, i0, bi));
        }
      }
    });
    out = acc[0];
    for (int64_t c = 1; c < chunks; ++c) out.add_(acc[c]);
  });
  return out;
}

}  // namespace fastkernels

// The CPU implementation of the public op, whose schema, reference, fake and autograd
// live in fastkernels/ops/ntk_mv.py (importing fastkernels.ops defines the op, then loads _C).
TORCH_LIBRARY_IMPL(fastkernels, CPU, m) { m.impl("ntk_mv", &fastkernels::ntk_mv_cpu); }
