"""The empirical NTK of a fixed network as a kernel object usable by the kernel solvers."""

from __future__ import annotations

import itertools
import weakref

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

    Notes
    -----
    Blocks are evaluated in the dtype of the inputs (float32 inputs give float32 factor
    GEMMs, as the solvers' ``compute_dtype`` asks), the factors themselves in the network's
    dtype. The factors of the latest right-hand set ``x2`` are kept while that tensor lives and
    is unchanged (same object, same version counter and storage, same network parameters and
    buffers, same trainable set and scaling): the solvers evaluate many row blocks against the
    same centres, whose factors would otherwise be recomputed (k backward passes) for every
    block. :meth:`clear_cache` drops them (``NTKRegressor`` does after fitting).
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
        self._memo = None  # (weakref to x2, key, factors): see _right_factors

    def factors(self, x: torch.Tensor):
        """Per-layer factors ``(A_l, B_l)`` of ``x`` (see :func:`ntk_factors`), in x's dtype."""
        net_dtype = self.net.A.dtype
        out_dtype = x.dtype if x.is_floating_point() else net_dtype
        f = ntk_factors(
            self.net, x.to(dtype=net_dtype, device=self.net.A.device), self.trainable, self.scaling
        )
        return [(a.to(out_dtype), b.to(out_dtype)) for a, b in f]

    def _memo_key(self, x2: torch.Tensor):
        # Everything the factors depend on: the tensor's identity and contents version, and
        # each parameter and buffer of the network by identity, storage, version, dtype and
        # device (``net.to(...)`` makes new tensors; ``.data`` swaps change the storage).
        state = tuple(
            (id(t), t.data_ptr(), t._version, t.dtype, t.device)
            for t in itertools.chain(self.net.parameters(), self.net.buffers())
        )
        return (x2._version, x2.data_ptr(), x2.dtype, self.trainable, self.scaling, state)

    def _right_factors(self, x2: torch.Tensor):
        if x2.is_inference():  # no version counter to tell whether it changed: no memo
            return self.factors(x2)
        key = self._memo_key(x2)
        memo = self._memo
        if memo is not None and memo[0]() is x2 and memo[1] == key:
            return memo[2]
        f2 = self.factors(x2)
        # Dropped as soon as x2 is freed, so the memo never outlives the points it describes
        # (only if it is still this memo: a later x2 may have replaced it).
        owner = weakref.ref(self)

        def drop(ref):
            kern = owner()
            if kern is not None and kern._memo is not None and kern._memo[0] is ref:
                kern._memo = None

        self._memo = (weakref.ref(x2, drop), key, f2)
        return f2

    def clear_cache(self) -> None:
        """Forget the kept factors of the latest right-hand set (frees their memory)."""
        self._memo = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_memo"] = None  # weak references do not pickle; the factors are a cache
        return state

    def __call__(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        f2 = self._right_factors(x2)
        f1 = f2 if x2 is x1 else self.factors(x1)
        return ntk_from_factors(f1, f2, "trace")

    def diag(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factors(x)
        return sum((a * a).sum(1) * (b.flatten(1) * b.flatten(1)).sum(1) for a, b in f)

    def mv(self, x1: torch.Tensor, x2: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from ..ops.ntk_mv import ntk_mv

        f2 = self._right_factors(x2)
        a2, b2 = [a for a, _ in f2], [b.flatten(1) for _, b in f2]
        vv = v[:, None] if v.dim() == 1 else v
        vv = vv.to(a2[0].dtype)
        if x1 is x2 and len(x1) <= self.block_size:
            # One block of the square matrix: the very same factors on both sides, so the op
            # computes half the tiles (symmetry).
            out = ntk_mv(a2, b2, a2, b2, vv).to(v.dtype)
            return out[:, 0] if v.dim() == 1 else out
        parts = []
        # Factors of x1 are formed block by block: for wide networks with many outputs they are
        # far larger per row than x1 itself (rows of x2's factors when x1 is x2).
        for s in range(0, len(x1), self.block_size):
            e = s + self.block_size
            if x1 is x2:
                a1, b1 = [a[s:e] for a in a2], [b[s:e] for b in b2]
            else:
                f1 = self.factors(x1[s:e])
                a1, b1 = [a for a, _ in f1], [b.flatten(1) for _, b in f1]
            parts.append(ntk_mv(a1, b1, a2, b2, vv))
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
