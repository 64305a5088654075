"""The empirical NTK of a fixed network as a kernel object usable by the kernel solvers."""

from __future__ import annotations

import torch

from ..models import StackedNet
from .empirical import ntk_factors, ntk_from_factors


class EmpiricalNTK:
    """Trace-mode empirical NTK (summed over outputs) of one StackedNet at its parameters.

    Behaves like a :class:`fastkernels.kernels.Kernel`: ``k(x1, x2)`` gives an (N, M) block,
    ``k.mv(x1, x2, v)`` a product computed in row blocks of x1 so that at most
    ``block_size`` x M entries of the kernel exist at once.

    Parameters
    ----------
    net : StackedNet
        The network at initialisation (member 0 is used).
    trainable : {"hidden", "last", "all"}
    scaling : {"standard", "ntk"}
        See :func:`fastkernels.ntk.ntk_factors`.
    block_size : int
        Rows of x1 per block in ``mv``.
    """

    name = "empirical_ntk"
    bandwidth_param = None

    def __init__(
        self,
        net: StackedNet,
        trainable: str = "hidden",
        scaling: str = "standard",
        block_size: int = 2048,
    ):
        self.net = net
        self.trainable = trainable
        self.scaling = scaling
        self.block_size = block_size

    def factors(self, x: torch.Tensor):
        x = x.to(dtype=self.net.A.dtype, device=self.net.A.device)
        return ntk_factors(self.net, x, self.trainable, self.scaling)

    def __call__(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        f1 = self.factors(x1)
        f2 = f1 if x2 is x1 else self.factors(x2)
        return ntk_from_factors(f1, f2, "trace")

    def diag(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factors(x)
        return sum((a * a).sum(1) * (b.flatten(1) * b.flatten(1)).sum(1) for a, b in f)

    def mv(self, x1: torch.Tensor, x2: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from ..ops.ntk_mv import ntk_mv

        f2 = self.factors(x2)
        a2, b2 = [a for a, _ in f2], [b.flatten(1) for _, b in f2]
        vv = v[:, None] if v.dim() == 1 else v
        vv = vv.to(a2[0].dtype)
        parts = []
        # Factors of x1 are formed block by block: for wide networks with many outputs they are
        # far larger per row than x1 itself.
        for s in range(0, len(x1), self.block_size):
            f1 = self.factors(x1[s : s + self.block_size])
            parts.append(ntk_mv([a for a, _ in f1], [b.flatten(1) for _, b in f1], a2, b2, vv))
        out = torch.cat(parts).to(v.dtype)
        return out[:, 0] if v.dim() == 1 else out

    def params(self) -> dict:
        return {
            "arch": self.net.arch,
            "width": self.net.width,
            "block": self.net.block,
            "trainable": self.trainable,
            "scaling": self.scaling,
        }
