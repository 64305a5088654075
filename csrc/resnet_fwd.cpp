// fastkernels::resnet_fwd on CPU: the forward of E stacked networks, members in parallel.
// Formulas: fastkernels/ops/_resnet_common.py (forward_reference); the per-member code is
// resnet::forward in resnet_common.h.
#include "resnet_common.h"

namespace fastkernels {
namespace {

using namespace resnet;

std::tuple<at::Tensor, at::Tensor, at::Tensor> resnet_fwd_cpu(
    const at::Tensor& x_in, const at::Tensor& W_in, const at::Tensor& b1_in,
    const std::optional<at::Tensor>& U_in, const std::optional<at::Tensor>& b2_in,
    const at::Tensor& A_in, c10::string_view arch_name) {
  const char* op = "fastkernels::resnet_fwd";
  const Arch arch = parse_arch(op, arch_name);
  const Sizes s = check_weights(op, W_in, b1_in, U_in, b2_in, A_in, arch);
  const at::Tensor x = check_batch(op, "x", x_in, s.E, s.d, W_in);
  const int64_t E = s.E, m = s.m, d = s.d, k = s.k, B = x.size(1);
  const int64_t p = arch == Arch::bottleneck ? k + 1 : m;
  const at::Tensor W = W_in.contiguous(), b1 = b1_in.contiguous(), A = A_in.contiguous();
  const at::Tensor U = U_in.has_value() ? U_in->contiguous() : at::Tensor();
  const at::Tensor b2 = b2_in.has_value() ? b2_in->contiguous() : at::Tensor();
  at::Tensor out = at::empty({E, B, k}, W.options());
  at::Tensor h1 = at::empty({E, B, m}, W.options());
  at::Tensor h2 = at::empty({E, B, arch == Arch::layer2 ? 0 : m}, W.options());
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "resnet_fwd_cpu", [&] {
    using T = scalar_t;
    for_members(E, [&](int64_t e0, int64_t e1) {
      Workspace<T> ws(arch, B, m, k);
      for (int64_t e = e0; e < e1; ++e) {
        const Net<T> net{arch,
                         d,
                         m,
                         k,
                         p,
                         W.data_ptr<T>() + e * m * d,
                         b1.data_ptr<T>() + e * m,
                         U.defined() ? U.data_ptr<T>() + e * m * p : nullptr,
                         b2.defined() ? b2.data_ptr<T>() + e * m : nullptr,
                         A.data_ptr<T>() + e * k * m};
        Acts<T> a = ws.acts;
        a.h1 = h1.data_ptr<T>() + e * B * m;
        if (arch != Arch::layer2) a.h2 = h2.data_ptr<T>() + e * B * m;
        if (arch == Arch::layer2) a.h = a.h1;
        if (arch == Arch::layer3) a.h = a.h2;
        a.out = out.data_ptr<T>() + e * B * k;
        forward(net, x.data_ptr<T>() + e * x.stride(0), d, B, a);
      }
    });
  });
  return {out, h1, h2};
}

}  // namespace
}  // namespace fastkernels

TORCH_LIBRARY_IMPL(fastkernels, CPU, m) { m.impl("resnet_fwd", &fastkernels::resnet_fwd_cpu); }
