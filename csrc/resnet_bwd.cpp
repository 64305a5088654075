// fastkernels::resnet_bwd on CPU: the weight gradients of E stacked networks, members in
// parallel. Formulas: fastkernels/ops/_resnet_common.py (backward_reference); the per-member
// code is resnet::backward in resnet_common.h.
#include "resnet_common.h"

namespace fastkernels {
namespace {

using namespace resnet;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> resnet_bwd_cpu(
    const at::Tensor& gout_in, const at::Tensor& x_in, const at::Tensor& W_in,
    const std::optional<at::Tensor>& U_in, const at::Tensor& A_in, const at::Tensor& h1_in,
    const at::Tensor& h2_in, c10::string_view arch_name, const c10::List<bool>& needs) {
  const char* op = "fastkernels::resnet_bwd";
  const Arch arch = parse_arch(op, arch_name);
  // b1 and b2 are not inputs of the backward: stand-ins of their shapes pass the checks.
  const at::Tensor b1_like = W_in.dim() == 3 ? at::empty({W_in.size(0), W_in.size(1)},
                                                         W_in.options())
                                             : at::empty({0}, W_in.options());
  std::optional<at::Tensor> b2_like;
  if (arch == Arch::resnet3 || arch == Arch::layer3) b2_like = b1_like;
  const Sizes s = check_weights(op, W_in, b1_like, U_in, b2_like, A_in, arch);
  const int64_t E = s.E, m = s.m, d = s.d, k = s.k;
  const at::Tensor x = check_batch(op, "x", x_in, E, d, W_in);
  const int64_t B = x.size(1);
  const at::Tensor gout = check_batch(op, "grad_out", gout_in, E, k, W_in).contiguous();
  const at::Tensor h1 = check_batch(op, "h1", h1_in, E, m, W_in).contiguous();
  TORCH_CHECK_VALUE(gout.size(1) == B && h1.size(1) == B, op,
                    ": grad_out and h1 must have B = ", B, " rows per member");
  at::Tensor h2;
  if (arch != Arch::layer2) {
    h2 = check_batch(op, "h2", h2_in, E, m, W_in).contiguous();
    TORCH_CHECK_VALUE(h2.size(1) == B, op, ": h2 must have B = ", B, " rows per member");
  }
  TORCH_CHECK_VALUE(needs.size() == 5, op,
                    ": needs must be 5 bools (gradients of W, b1, U, b2, A), got ", needs.size());
  const int64_t p = arch == Arch::bottleneck ? k + 1 : m;
  const at::Tensor W = W_in.contiguous(), A = A_in.contiguous();
  const at::Tensor U = U_in.has_value() ? U_in->contiguous() : at::Tensor();
  const bool has[5] = {true, true, arch != Arch::layer2,
                       arch == Arch::resnet3 || arch == Arch::layer3, true};
  const std::vector<int64_t> shapes[5] = {{E, m, d}, {E, m}, {E, m, p}, {E, m}, {E, k, m}};
  at::Tensor g[5];
  for (int i = 0; i < 5; ++i)
    g[i] = needs[i] && has[i] ? at::empty(shapes[i], W.options()) : at::empty({0}, W.options());
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "resnet_bwd_cpu", [&] {
    using T = scalar_t;
    auto ptr = [&](int i, int64_t e, int64_t size) -> T* {
      return g[i].numel() > 0 ? g[i].data_ptr<T>() + e * size : nullptr;
    };
    for_members(E, [&](int64_t e0, int64_t e1) {
      Workspace<T> ws(arch, B, m, k);
      for (int64_t e = e0; e < e1; ++e) {
        const Net<T> net{arch, d, m, k, p, W.data_ptr<T>() + e * m * d, nullptr,
                         U.defined() ? U.data_ptr<T>() + e * m * p : nullptr, nullptr,
                         A.data_ptr<T>() + e * k * m};
        Acts<T> a = ws.acts;
        a.h1 = h1.data_ptr<T>() + e * B * m;
        if (arch == Arch::layer2) {
          a.h = a.h1;
        } else {
          a.h2 = h2.data_ptr<T>() + e * B * m;
          if (arch == Arch::layer3) {
            a.h = a.h2;
          } else {
            add(a.h, a.h1, a.h2, B * m);
          }
        }
        if (arch == Arch::bottleneck) {  // the second block's input [A h1; 1]
          mm<T>(false, true, B, k, m, T(1), a.h1, m, net.A, m, T(0), a.in2, k + 1);
          for (int64_t i = 0; i < B; ++i) a.in2[i * (k + 1) + k] = T(1);
        }
        Grads<T> gr;
        gr.W = ptr(0, e, m * d);
        gr.b1 = ptr(1, e, m);
        gr.U = ptr(2, e, m * p);
        gr.b2 = ptr(3, e, m);
        gr.A = ptr(4, e, k * m);
        backward(net, x.data_ptr<T>() + e * x.stride(0), d, B, a,
                 gout.data_ptr<T>() + e * B * k, gr, ws.scratch);
      }
    });
  });
  return {g[0], g[1], g[2], g[3], g[4]};
}

}  // namespace
}  // namespace fastkernels

TORCH_LIBRARY_IMPL(fastkernels, CPU, m) { m.impl("resnet_bwd", &fastkernels::resnet_bwd_cpu); }
