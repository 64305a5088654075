// fastkernels::resnet_sgd on CPU: T epochs of mini-batch SGD of E stacked networks in one call.
//
// Members are independent, so each thread takes whole members and runs all their steps with no
// synchronisation between steps; a member's weights, gradients and activations stay in its
// thread's cache. With fewer members than threads the members run one after the other and the
// BLAS calls use the threads. Formulas: fastkernels/ops/resnet_sgd.py (the reference).
#include "resnet_common.h"

#include <cmath>

namespace fastkernels {
namespace {

using namespace resnet;

// Slot of each parameter of `arch` (in the op's list order) among W, b1, U/V, b2, A.
std::vector<int> slots(Arch arch) {
  if (arch == Arch::layer2) return {0, 1, 4};
  if (arch == Arch::bottleneck) return {0, 1, 2, 4};
  return {0, 1, 2, 3, 4};
}

at::Tensor resnet_sgd_cpu(const at::Tensor& X_in, const at::Tensor& Y_in,
                          const at::Tensor& perms_in, const at::Tensor& factors_in,
                          at::TensorList params, at::TensorList bufs, at::TensorList bases,
                          at::IntArrayRef trained, const at::Tensor& lr_in,
                          const at::Tensor& wd_in, double momentum, int64_t batch_size,
                          c10::string_view arch_name) {
  const char* op = "fastkernels::resnet_sgd";
  const Arch arch = parse_arch(op, arch_name);
  const std::vector<int> slot = slots(arch);
  const int64_t P = static_cast<int64_t>(slot.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(params.size()) == P, op, ": params must be the ", P,
                    " parameters of arch='", std::string(arch_name), "', got ", params.size());
  at::Tensor by_slot[5];
  for (int64_t i = 0; i < P; ++i) by_slot[slot[i]] = params[i];
  std::optional<at::Tensor> U, b2;
  if (by_slot[2].defined()) U = by_slot[2];
  if (by_slot[3].defined()) b2 = by_slot[3];
  const Sizes s = check_weights(op, by_slot[0], by_slot[1], U, b2, by_slot[4], arch);
  const int64_t E = s.E, m = s.m, d = s.d, k = s.k;
  const int64_t p = arch == Arch::bottleneck ? k + 1 : m;
  const at::Tensor& W = by_slot[0];
  for (int64_t i = 0; i < P; ++i)
    TORCH_CHECK_VALUE(params[i].is_contiguous(), op, ": params[", i,
                      "] must be contiguous (it is updated in place)");
  TORCH_CHECK_VALUE(static_cast<int64_t>(bases.size()) == (arch == Arch::bottleneck ? 2 : 0), op,
                    ": bases must be [W0, V0] for arch='bottleneck' and [] otherwise, got ",
                    bases.size(), " tensors");
  for (size_t i = 0; i < bases.size(); ++i) {
    const at::Tensor& t = i == 0 ? W : by_slot[2];
    TORCH_CHECK_VALUE(bases[i].sizes() == t.sizes() && bases[i].scalar_type() == t.scalar_type(),
                      op, ": ", i == 0 ? "W0" : "V0", " must match its increment's shape and dtype");
  }
  for (const char* name : {"X", "Y"}) {
    const at::Tensor& t = name[0] == 'X' ? X_in : Y_in;
    const int64_t cols = name[0] == 'X' ? d : k;
    TORCH_CHECK_VALUE((t.dim() == 2 || (t.dim() == 3 && t.size(0) == E)) && t.size(-1) == cols,
                      op, ": ", name, " must be (N, ", cols, ") or (E, N, ", cols, ") with E = ",
                      E, ", got ", t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == W.scalar_type(), op, ": ", name,
                     " must have W's dtype and device");
  }
  const int64_t N = X_in.size(-2);
  TORCH_CHECK_VALUE(N > 0 && Y_in.size(-2) == N, op, ": X and Y must have the same N >= 1 rows");
  TORCH_CHECK_VALUE(perms_in.scalar_type() == at::kLong &&
                        (perms_in.dim() == 2 || (perms_in.dim() == 3 && perms_in.size(1) == E)) &&
                        perms_in.size(-1) == N,
                    op, ": perms must be an int64 tensor (T, ", N, ") or (T, ", E, ", ", N,
                    "), got ", perms_in.sizes());
  const int64_t T = perms_in.size(0);
  TORCH_CHECK_VALUE(factors_in.scalar_type() == at::kDouble && factors_in.dim() == 1 &&
                        factors_in.size(0) == T,
                    op, ": factors must be a float64 tensor of shape (", T, ",)");
  const int64_t n_trained = static_cast<int64_t>(trained.size());
  std::vector<bool> seen(P, false);
  for (int64_t i : trained) {
    TORCH_CHECK_VALUE(i >= 0 && i < P && !seen[i], op,
                      ": trained must be distinct indices into params (0..", P - 1, "), got ",
                      trained);
    seen[i] = true;
  }
  TORCH_CHECK_VALUE(static_cast<int64_t>(bufs.size()) == n_trained, op,
                    ": bufs must have one tensor per trained parameter (", n_trained, ")");
  for (int64_t j = 0; j < n_trained; ++j) {
    const at::Tensor& t = params[trained[j]];
    TORCH_CHECK_VALUE(bufs[j].sizes() == t.sizes() && bufs[j].scalar_type() == t.scalar_type() &&
                          bufs[j].is_contiguous(),
                      op, ": the buffer of params[", trained[j],
                      "] must match it in shape and dtype (and be contiguous)");
  }
  TORCH_CHECK_VALUE(lr_in.scalar_type() == at::kDouble && lr_in.sizes() == at::IntArrayRef({n_trained, E}),
                    op, ": lr must be a float64 tensor of shape (", n_trained, ", ", E, ")");
  TORCH_CHECK_VALUE(wd_in.scalar_type() == at::kDouble &&
                        (wd_in.sizes() == at::IntArrayRef({E}) ||
                         wd_in.sizes() == at::IntArrayRef({n_trained, E})),
                    op, ": weight_decay must be a float64 tensor of shape (", E, ",) or (",
                    n_trained, ", ", E, ")");
  TORCH_CHECK_VALUE(std::isfinite(momentum) && momentum >= 0, op,
                    ": momentum must be a finite float >= 0, got ", momentum);
  TORCH_CHECK_VALUE(batch_size >= 1, op, ": batch_size must be an int >= 1, got ", batch_size);
  TORCH_CHECK_VALUE(at::isfinite(X_in).all().item<bool>(), op,
                    ": X must be finite, but contains NaN or inf");
  TORCH_CHECK_VALUE(at::isfinite(Y_in).all().item<bool>(), op,
                    ": Y must be finite, but contains NaN or inf");
  const at::Tensor X = X_in.contiguous(), Y = Y_in.contiguous();
  const at::Tensor perms = perms_in.contiguous();
  {
    const auto mm_ = at::aminmax(perms);
    TORCH_CHECK_VALUE(std::get<0>(mm_).item<int64_t>() >= 0 &&
                          std::get<1>(mm_).item<int64_t>() < N,
                      op, ": perms must hold row indices in [0, ", N, ")");
  }
  const at::Tensor factors = factors_in.contiguous(), lr = lr_in.contiguous();
  // One row per trained parameter (a (E,) weight decay applies to all of them).
  const at::Tensor wd = wd_in.dim() == 1 ? wd_in.expand({n_trained, E}).contiguous()
                                         : wd_in.contiguous();
  at::Tensor losses = at::zeros({T, E}, X.options().dtype(at::kDouble));
  const int64_t B = std::min(batch_size, N);
  const int64_t x_member = X.dim() == 3 ? N * d : 0, y_member = Y.dim() == 3 ? N * k : 0;
  const int64_t perm_member = perms.dim() == 3 ? N : 0;
  const int64_t perm_epoch = perms.dim() == 3 ? E * N : N;
  const bool bottleneck = arch == Arch::bottleneck;
  const int64_t sizes[5] = {m * d, m, m * p, m, k * m};

  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "resnet_sgd_cpu", [&] {
    using T_ = scalar_t;
    const int64_t* perm_data = perms.data_ptr<int64_t>();
    const double* factor = factors.data_ptr<double>();
    const double* lr_data = lr.data_ptr<double>();
    const double* wd_data = wd.data_ptr<double>();
    for_members(E, [&](int64_t e0, int64_t e1) {
      Workspace<T_> ws(arch, B, m, k);
      std::vector<T_> xb(B * d), yb(B * k), gout(B * k);
      // Gradient buffers of the trained slots, and the effective W0 + W, V0 + V.
      std::vector<T_> grad_buf[5];
      for (int64_t j = 0; j < n_trained; ++j) grad_buf[slot[trained[j]]].resize(sizes[slot[trained[j]]]);
      std::vector<T_> W_eff(bottleneck ? m * d : 0), V_eff(bottleneck ? m * p : 0);
      for (int64_t e = e0; e < e1; ++e) {
        T_* ptr[5] = {};
        for (int i = 0; i < 5; ++i)
          if (by_slot[i].defined()) ptr[i] = by_slot[i].data_ptr<T_>() + e * sizes[i];
        Net<T_> net{arch, d, m, k, p, ptr[0], ptr[1], ptr[2], ptr[3], ptr[4]};
        const T_* W0 = bottleneck ? bases[0].data_ptr<T_>() + e * m * d : nullptr;
        const T_* V0 = bottleneck ? bases[1].data_ptr<T_>() + e * m * p : nullptr;
        if (bottleneck) {
          net.W = W_eff.data();
          net.U = V_eff.data();
        }
        Grads<T_> g;
        T_** gslot[5] = {&g.W, &g.b1, &g.U, &g.b2, &g.A};
        for (int64_t j = 0; j < n_trained; ++j) *gslot[slot[trained[j]]] = grad_buf[slot[trained[j]]].data();
        const T_ mom = static_cast<T_>(momentum);
        const T_* Xe = X.data_ptr<T_>() + e * x_member;
        const T_* Ye = Y.data_ptr<T_>() + e * y_member;
        for (int64_t t = 0; t < T; ++t) {
          const int64_t* perm = perm_data + t * perm_epoch + e * perm_member;
          double loss = 0.0;
          for (int64_t start = 0; start < N; start += B) {
            const int64_t nb = std::min(B, N - start);
            for (int64_t i = 0; i < nb; ++i) {
              const int64_t r = perm[start + i];
              std::copy_n(Xe + r * d, d, xb.data() + i * d);
              std::copy_n(Ye + r * k, k, yb.data() + i * k);
            }
            if (bottleneck) {  // W0 + W and V0 + V, as the network forms them each step
              add(W_eff.data(), W0, ptr[0], m * d);
              add(V_eff.data(), V0, ptr[2], m * p);
            }
            forward(net, xb.data(), d, nb, ws.acts);
            loss += loss_grad(ws.acts.out, yb.data(), gout.data(), nb * k,
                              T_(2) / static_cast<T_>(nb));
            backward(net, xb.data(), d, nb, ws.acts, gout.data(), g, ws.scratch);
            for (int64_t j = 0; j < n_trained; ++j) {
              const int sl = slot[trained[j]];
              T_* w = ptr[sl];
              T_* b = bufs[j].data_ptr<T_>() + e * sizes[sl];
              const T_* gr = grad_buf[sl].data();
              const T_ step = static_cast<T_>(lr_data[j * E + e] * factor[t]);
              const T_ decay = static_cast<T_>(wd_data[j * E + e]);
              split_range(sizes[sl], 64, 1, [&](int64_t i0, int64_t i1) {
                sgd_update(w + i0, b + i0, gr + i0, i1 - i0, mom, decay, step);
              });
            }
          }
          losses.data_ptr<double>()[t * E + e] = loss / static_cast<double>(N);
        }
      }
    });
  });
  return losses;
}

}  // namespace
}  // namespace fastkernels

TORCH_LIBRARY_IMPL(fastkernels, CPU, m) { m.impl("resnet_sgd", &fastkernels::resnet_sgd_cpu); }
