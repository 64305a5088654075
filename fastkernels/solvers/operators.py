"""Linear operators the iterative solvers work on: a dense matrix, or a kernel never stored.

The solvers only need ``shape`` and ``matvec`` (an (M, T) block in, an (N, T) block out), so
anything with those two works: a tensor (wrapped by :func:`as_operator`), a
:class:`KernelOperator` whose products go through the kernel's public ``mv`` / ``__call__``
(and so through the ``kernel_mv`` / ``gram`` custom ops once they back the Kernel objects), or a
user object. The Nystrom solver also uses ``normal_mv`` (K^T K V in one pass over the rows).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .. import ops
from ._common import DEFAULT_MEMORY_BUDGET, format_bytes, parse_bytes

__all__ = ["LinearOperator", "DenseOperator", "KernelOperator", "as_operator", "mm_acc64"]

# The reference kernel formulas hold about this many (rows x M) temporaries at their peak (the
# inner products, the squared distances, the result, a mask): a tile of b rows costs
# b * M * itemsize * _TILE_TEMPS bytes.
_TILE_TEMPS = 4
# Row tiles stay below this many entries so that a tile's temporaries live in the cache
# hierarchy rather than streaming through main memory (measured: 2048 x 8000 float32 tiles run
# about 2x faster per entry than whole 8000 x 8000 Grams on a 2-core CPU).
_TILE_ENTRIES = 1 << 24
# Share of the budget never given to the tile cache: library workspaces (BLAS, OpenMP), the
# solver's small vectors and allocator slack also count against a budget that bounds the
# process's peak (measured with 5% on 4 GiB Nystrom fits at N = 10^6: peaks of 3705 MiB (RBF,
# 3000 centres) and 3819 MiB (analytic NTK, 2000 centres) above the data; 10% keeps a margin).
_RUNTIME_SHARE = 0.10
# The smallest tile the blocked products accept; a budget below it is an error, not a crawl.
MIN_TILE_ROWS = 16


# Entries of a float32 block converted to float64 at a time where the compiled product is not
# available (another device, no extension).
_CONVERT_BLOCK = 1 << 20


def mm_acc64(K: torch.Tensor, V: torch.Tensor, *, mode: str = "mv") -> torch.Tensor:
    """Products of a float32 (or float64) K with a float64 V, every operation in float64.

    A float32 K is the stored kernel matrix of a mixed-precision solve. A float32 product would
    round V to float32 and sum N terms in float32, an error of about sqrt(N) eps32 relative to
    the terms (1e-4 at N = 20000) that differs from call to call, so that CG cannot go below
    it, and where the terms cancel (the Nystrom system's amplified directions) nothing of the
    result is left. Here the entries are converted exactly as they are read: the product is
    that of the float32 matrix, to float64 rounding, the same at every call. On CPU this is the
    compiled ``_dense_mv_acc64`` (the float32 memory traffic, no float64 copy); elsewhere
    blocks of K are converted.

    Parameters
    ----------
    K : Tensor, shape (N, M), float32 or float64
    V : Tensor, float64: shape (M, T) for ``"mv"`` and ``"normal"``, (N, T) for ``"rmv"``
    mode : {"mv", "rmv", "normal"}
        ``K V``, ``K^T V`` or ``K^T (K V)`` (each row of K read once for both products).

    Returns
    -------
    Tensor, float64, shape (N, T) for ``"mv"``, (M, T) otherwise
    """
    V = V.to(torch.float64)
    if K.dtype == torch.float64:
        if mode == "mv":
            return K @ V
        return K.mT @ (K @ V if mode == "normal" else V)
    code = {"mv": 0, "rmv": 1, "normal": 2}[mode]
    if K.device.type == "cpu" and hasattr(torch.ops.fastkernels, "_dense_mv_acc64"):
        return torch.ops.fastkernels._dense_mv_acc64(K, V, code)
    n, m = K.shape
    rows = max(1, _CONVERT_BLOCK // max(m, 1))
    if mode == "mv":
        out = torch.empty((n, V.shape[1]), dtype=torch.float64, device=K.device)
        for i0 in range(0, n, rows):
            out[i0 : i0 + rows] = K[i0 : i0 + rows].to(torch.float64) @ V
        return out
    out = torch.zeros((m, V.shape[1]), dtype=torch.float64, device=K.device)
    for i0 in range(0, n, rows):
        blk = K[i0 : i0 + rows].to(torch.float64)
        out += blk.mT @ (blk @ V if mode == "normal" else V[i0 : i0 + rows])
    return out


@runtime_checkable
class LinearOperator(Protocol):
    """Anything with ``shape`` (N, M) and ``matvec`` mapping an (M, T) block to an (N, T) block."""

    shape: tuple[int, int]

    def matvec(self, V: torch.Tensor) -> torch.Tensor: ...


class DenseOperator:
    """A stored matrix as a linear operator.

    Parameters
    ----------
    K : Tensor, shape (N, M), float32 or float64
    """

    def __init__(self, K: torch.Tensor):
        if not isinstance(K, torch.Tensor) or K.dim() != 2:
            raise ValueError(f"DenseOperator: K must be a 2-D tensor, got {_describe(K)}")
        if not K.is_floating_point():
            raise TypeError(f"DenseOperator: K must be float32 or float64, got {K.dtype}")
        self.K = K
        self.shape = (K.shape[0], K.shape[1])
        self.dtype, self.device = K.dtype, K.device

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        """K @ V for V (M, T); the result has V's dtype.

        A float64 V against a float32 K is accumulated in float64 (:func:`mm_acc64`).
        """
        if V.dtype == torch.float64 and self.K.dtype != torch.float64:
            return mm_acc64(self.K, V)
        return (self.K @ _pad_columns(V.to(self.K.dtype)))[:, : V.shape[1]].to(V.dtype)

    def rmatvec(self, V: torch.Tensor) -> torch.Tensor:
        """K^T @ V for V (N, T) (float64 V: accumulated in float64)."""
        if V.dtype == torch.float64 and self.K.dtype != torch.float64:
            return mm_acc64(self.K, V, mode="rmv")
        return (self.K.mT @ V.to(self.K.dtype)).to(V.dtype)

    def normal_mv(self, V: torch.Tensor) -> torch.Tensor:
        """K^T K V for V (M, T)."""
        return self.rmatvec(self.matvec(V))

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        """K[:, idx], shape (N, len(idx))."""
        return self.K[:, idx]

    def diag(self) -> torch.Tensor:
        return self.K.diagonal()


class KernelOperator:
    """K(x1, x2) as a linear operator, computed in row tiles and stored only as far as allowed.

    Parameters
    ----------
    kernel : Kernel or kernel-like
        Anything with ``kernel(a, b)`` -> (len(a), len(b)) Gram block and
        ``kernel.mv(a, b, v)`` -> ``kernel(a, b) @ v`` (e.g. :class:`fastkernels.kernels.RBF`,
        :class:`fastkernels.ntk.kernel.EmpiricalNTK`).
    x1 : Tensor, shape (N, D)
    x2 : Tensor, shape (M, D), optional
        Defaults to ``x1`` (the square, symmetric Gram with an exact diagonal).
    dtype : torch.dtype, optional
        Dtype the kernel is evaluated and stored in (default: ``x1``'s). float32 halves memory
        and doubles GEMM speed; the solvers keep their recurrences in float64.
    memory_budget : int or str, default 4 GiB
        Bytes this operator may hold: tiles in flight plus whatever it caches. The cache also
        leaves 10% of the budget to library workspaces and allocator slack, so
        that the budget bounds the peak resident memory above the data, not only the tensors
        the operator allocates.
    cache : {"auto", "dense", "none"}, default "auto"
        ``"dense"``: build and keep the whole (N, M) matrix (error if it does not fit the cache
        allowance: the budget less ``reserved_bytes``, the tiles in flight and the runtime share;
        :meth:`dense_fits` tells beforehand). ``"auto"``: in the passes over row tiles
        (:meth:`normal_mv`, :meth:`rmatvec`), keep as many leading tiles as the allowance holds
        (later passes reuse them) and recompute the rest; :meth:`matvec` without a dense cache
        calls ``kernel.mv`` (memory-free). ``"none"``: never keep tiles.
    backend : {"auto", "fastkernels", "keops"}, default "auto"
        How :meth:`matvec` (the product the CG solver calls) computes ``kernel.mv``:
        ``"auto"`` / ``"fastkernels"``: the ``kernel_mv`` custom op; ``"keops"``: a KeOps
        reduction (:mod:`fastkernels.ops._keops`), for a :class:`fastkernels.kernels.Kernel`
        that KeOps expresses, memory-free, so not with ``cache="dense"``. Row tiles and
        columns (:meth:`normal_mv`, :meth:`rmatvec`, :meth:`columns`, e.g. for a
        preconditioner) always come from the Gram op.
    fused : bool, default True
        :meth:`normal_mv` computes the rows it does not cache with the fused
        ``kernel_normal_mv`` op (each row panel of K evaluated once and used for both
        products in cache) where the op supports the kernel; False: Gram tiles and two
        products per tile (the former pass, kept for comparison).

    Raises
    ------
    ValueError
        The budget cannot hold one tile of :data:`MIN_TILE_ROWS` rows (or the dense matrix
        with ``cache="dense"``); an unknown ``backend``; ``backend="keops"`` with
        ``cache="dense"`` or a kernel KeOps cannot express.
    ImportError
        ``backend="keops"`` without pykeops installed.
    """

    def __init__(
        self,
        kernel,
        x1: torch.Tensor,
        x2: torch.Tensor | None = None,
        *,
        dtype: torch.dtype | None = None,
        memory_budget=DEFAULT_MEMORY_BUDGET,
        cache: str = "auto",
        reserved_bytes: int = 0,
        backend: str = "auto",
        fused: bool = True,
    ):
        where = "KernelOperator"
        self.fused = bool(fused)
        if not callable(kernel) or not hasattr(kernel, "mv"):
            raise TypeError(f"{where}: kernel must be callable with an mv method, got {kernel!r}")
        if cache not in ("auto", "dense", "none"):
            raise ValueError(f"{where}: cache must be 'auto', 'dense' or 'none', got {cache!r}")
        dtype = x1.dtype if dtype is None else dtype
        # The product of matvec, bound once (backend and parameters resolved here): op kernels
        # call the kernel_mv op / KeOps directly, others their own mv.
        self.product = _bind_product(kernel, backend, cache, x1.shape[1], where)
        self.backend = getattr(self.product, "backend", "fastkernels")
        # Gram tiles of op kernels by the op itself (no per-tile input checks of Kernel.__call__).
        self._gram = getattr(self.product, "gram", kernel)
        self.square = x2 is None or x2 is x1
        self.kernel = kernel
        self.x1 = x1.to(dtype)
        self.x2 = self.x1 if self.square else x2.to(dtype)
        self.dtype, self.device = dtype, x1.device
        self.shape = (self.x1.shape[0], self.x2.shape[0])
        self.memory_budget = parse_bytes(memory_budget, where=where)
        self.itemsize = torch.finfo(dtype).bits // 8
        n, m = self.shape
        row_bytes = m * self.itemsize
        free = self.memory_budget - reserved_bytes
        need = min(n, MIN_TILE_ROWS) * row_bytes * _TILE_TEMPS
        if free < need:
            raise ValueError(
                f"{where}: memory_budget {format_bytes(self.memory_budget)} is too small for one "
                f"tile of {min(n, MIN_TILE_ROWS)} x {m} kernel entries "
                f"({format_bytes(need)} with temporaries"
                + (f", after {format_bytes(reserved_bytes)} reserved" if reserved_bytes else "")
                + "); raise memory_budget"
                + (" or lower n_centers" if not self.square else "")
            )
        self.block_rows, self.cache_bytes = _tile_plan(
            n, m, self.itemsize, self.memory_budget, reserved_bytes
        )
        self.cache = cache
        self.K: torch.Tensor | None = None
        self._tiles: list[torch.Tensor] = []  # cached leading row tiles (see _row_tiles)
        self._diag: torch.Tensor | None = None
        if cache == "dense":
            self.build_dense()

    @staticmethod
    def dense_fits(
        n: int, m: int, itemsize: int, memory_budget: int, reserved_bytes: int = 0
    ) -> bool:
        """Whether an operator built with these sizes could hold its dense (N, M) matrix.

        The same accounting as the constructor (tiles in flight, the runtime share and
        ``reserved_bytes`` come first), so a solver that asks this before building the
        operator with ``cache="dense"`` never gets the budget error.
        """
        free = memory_budget - reserved_bytes
        if free < min(n, MIN_TILE_ROWS) * m * itemsize * _TILE_TEMPS:
            return False
        _, cache_bytes = _tile_plan(n, m, itemsize, memory_budget, reserved_bytes)
        return n * m * itemsize <= cache_bytes

    # -- storage ------------------------------------------------------------------------------
    @property
    def dense_bytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.itemsize

    @property
    def cached_bytes(self) -> int:
        if self.K is not None:
            return self.dense_bytes
        return sum(t.numel() for t in self._tiles) * self.itemsize

    def _tile(self, i0: int, i1: int) -> torch.Tensor:
        blk = self._gram(self.x1[i0:i1], self.x2).to(self.dtype)
        if self.square:
            # A row tile of x1 against all of x1: its self-pairs sit on a shifted diagonal that
            # the Kernel call cannot see, so they are restored from the exact kernel diagonal.
            rows = torch.arange(i1 - i0, device=blk.device)
            blk[rows, rows + i0] = self.diag()[i0:i1]
        return blk

    def build_dense(self) -> torch.Tensor:
        """Compute and keep the whole (N, M) matrix (square: upper tiles mirrored)."""
        if self.K is not None:
            return self.K
        if self.dense_bytes > self.cache_bytes:
            raise ValueError(
                f"KernelOperator: the dense {self.shape[0]} x {self.shape[1]} kernel matrix "
                f"({format_bytes(self.dense_bytes)}) does not fit memory_budget "
                f"{format_bytes(self.memory_budget)}; use the memory-free path (cache='auto')"
            )
        n, m = self.shape
        if self.square and _fast_gram(self.kernel, self.device):
            # The compiled Gram op writes the matrix tile by tile with no temporaries: one call
            # over the whole square costs twice the kernel evaluations of the mirrored halves
            # below but none of their transposed copies, which cost more (strided writes).
            self.K = self._gram(self.x1, self.x1).to(self.dtype)
            self._tiles = []
            return self.K
        K = torch.empty((n, m), dtype=self.dtype, device=self.device)
        if self.square:
            # Symmetry halves the kernel evaluations: square tiles on and above the diagonal,
            # mirrored below. Diagonal tiles pass one tensor twice, so self-pairs are exact.
            b = int(max(MIN_TILE_ROWS, min(n, int((_TILE_ENTRIES // 4) ** 0.5) * 2)))
            for i0 in range(0, n, b):
                i1 = min(n, i0 + b)
                xi = self.x1[i0:i1]
                K[i0:i1, i0:i1] = self._gram(xi, xi).to(self.dtype)
                if i1 < n:
                    blk = self._gram(xi, self.x1[i1:]).to(self.dtype)
                    K[i0:i1, i1:] = blk
                    K[i1:, i0:i1] = blk.mT
        else:
            for i0 in range(0, n, self.block_rows):
                i1 = min(n, i0 + self.block_rows)
                K[i0:i1] = self._tile(i0, i1)
        self.K = K
        self._tiles = []
        return K

    # -- products -----------------------------------------------------------------------------
    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        """K @ V for V (M, T), result (N, T) in V's dtype; memory-free unless cached dense.

        With a dense float32 cache and a float64 V the product is accumulated in float64
        (:func:`mm_acc64`), so that repeated products agree to far below float32 rounding.
        """
        if self.K is not None:
            if V.dtype == torch.float64 and self.dtype != torch.float64:
                return mm_acc64(self.K, V)
            return (self.K @ _pad_columns(V.to(self.dtype)))[:, : V.shape[1]].to(V.dtype)
        return self.product(self.x1, self.x2, V.to(self.dtype)).to(V.dtype)

    def _row_tiles(self):
        """Yield ``(i0, i1, K[i0:i1])`` over all row tiles, one pass.

        With ``cache="auto"`` the leading tiles are kept as far as the budget allows, so every
        later pass (``normal_mv`` or ``rmatvec``) reads them instead of recomputing them.
        """
        n = self.shape[0]
        for t, i0 in enumerate(range(0, n, self.block_rows)):
            i1 = min(n, i0 + self.block_rows)
            if t < len(self._tiles):
                yield i0, i1, self._tiles[t]
                continue
            blk = self._tile(i0, i1)
            if self._room_for(t, i1 - i0):
                self._tiles.append(blk)
            yield i0, i1, blk

    def _room_for(self, t: int, rows: int) -> bool:
        """Whether tile ``t`` (the next one not cached) of ``rows`` rows joins the cache."""
        return (
            self.cache == "auto"
            and t == len(self._tiles)
            and self.cached_bytes + rows * self.shape[1] * self.itemsize <= self.cache_bytes
        )

    def _fused_normal_mv(self):
        """``f(x1_rows, V) = K(x1_rows, x2)^T (K(x1_rows, x2) V)`` by the fused op, or None.

        The ``kernel_normal_mv`` op evaluates each row panel of K once and uses it for both
        products while it is in cache (float64 accumulation for a float64 V); available for the
        kernels the ops implement, on the devices they run on.
        """
        if not self.fused or self.square:
            return None
        normal_mv, x2 = getattr(self.product, "normal_mv", None), self.x2
        return None if normal_mv is None else (lambda rows, V: normal_mv(rows, x2, V))

    def normal_mv(self, V: torch.Tensor) -> torch.Tensor:
        """K^T (K V) for V (M, T) in one pass over the rows; result (M, T) in V's dtype.

        A float64 V is multiplied in float64 (the float32 entries converted exactly), so the
        operator is the same symmetric K^T K at every call: the Nystrom system's products
        cancel heavily in the directions its preconditioner amplifies, where float32 sums
        would leave noise of ~eps32 |K| |V| (the old floor of the solver). Cached tiles are
        read; the other rows go through the fused ``kernel_normal_mv`` op (one pass, each
        panel used for both products in cache) or, for kernels without it, through Gram tiles.
        """
        t = V.shape[1]
        exact64 = V.dtype == torch.float64
        if self.K is not None:
            if exact64:
                return mm_acc64(self.K, V, mode="normal")
            Vc = _pad_columns(V.to(self.dtype))
            return (self.K.mT @ (self.K @ Vc))[:, :t].to(V.dtype)
        acc = torch.float64 if exact64 else V.dtype
        out = torch.zeros((self.shape[1], t), dtype=acc, device=V.device)
        Vc = V if exact64 else _pad_columns(V.to(self.dtype))

        def add(blk):
            if exact64:
                return mm_acc64(blk, V, mode="normal")
            return (blk.mT @ (blk @ Vc))[:, :t].to(acc)

        n = self.shape[0]
        fused = self._fused_normal_mv()
        i0 = 0
        for blk in self._tiles:
            out += add(blk)
            i0 += blk.shape[0]
        # Rows not cached yet: fill the cache first (tiles of the Gram), then the rest in one
        # fused call, memory-free.
        while i0 < n:
            i1 = min(n, i0 + self.block_rows)
            if fused is not None and not self._room_for(len(self._tiles), i1 - i0):
                out += fused(self.x1[i0:], V.to(acc) if exact64 else V.to(self.dtype)).to(acc)
                break
            blk = self._tile(i0, i1)
            if self._room_for(len(self._tiles), i1 - i0):
                self._tiles.append(blk)
            out += add(blk)
            i0 = i1
        return out.to(V.dtype)

    def rmatvec(self, V: torch.Tensor) -> torch.Tensor:
        """K^T @ V for V (N, T), result (M, T) in V's dtype (one pass over row tiles).

        A float64 V is multiplied and accumulated in float64, as in :meth:`normal_mv`.
        """
        t = V.shape[1]
        exact64 = V.dtype == torch.float64
        if self.K is not None:
            if exact64:
                return mm_acc64(self.K, V, mode="rmv")
            return (self.K.mT @ _pad_columns(V.to(self.dtype)))[:, :t].to(V.dtype)
        if (
            self.dtype == torch.float64
            and self.cache == "none"
            and self.backend != "keops"
            and self._fused_normal_mv() is not None
        ):
            # K^T V = K(x2, x1) V: one memory-free pass of the kernel_mv op (float64 throughout)
            # rather than Gram tiles of the same size.
            return self.product(self.x2, self.x1, V.to(self.dtype)).to(V.dtype)
        Vc = V if exact64 else _pad_columns(V.to(self.dtype))
        out = torch.zeros((self.shape[1], t), dtype=V.dtype, device=V.device)
        for i0, i1, blk in self._row_tiles():
            if exact64:
                out += mm_acc64(blk, V[i0:i1], mode="rmv")
            else:
                out += (blk.mT @ Vc[i0:i1])[:, :t].to(V.dtype)
        return out

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        """K[:, idx], shape (N, len(idx)), in the operator's dtype."""
        if self.K is not None:
            if self.square:
                # Symmetric: the rows are the columns, and gathering rows reads contiguous
                # memory (a column gather of a large row-major matrix is strided).
                return self.K[idx].mT
            return self.K[:, idx]
        out = self._gram(self.x1, self.x2[idx]).to(self.dtype)
        if self.square:
            # Restore exact self-pairs (x1[idx[j]] against itself) lost by indexing.
            d = self.diag()
            out[idx, torch.arange(len(idx), device=out.device)] = d[idx]
        return out

    def diag(self) -> torch.Tensor:
        """The diagonal, shape (min(N, M),) (square operators: k(x_i, x_i))."""
        if self.K is not None:
            return self.K.diagonal()
        if self.square:
            if self._diag is None:
                self._diag = self.kernel.diag(self.x1).to(self.dtype)
            return self._diag
        m = min(self.shape)
        return torch.stack(
            [self._gram(self.x1[i : i + 1], self.x2[i : i + 1])[0, 0] for i in range(m)]
        )


def _op_kernel(kernel) -> bool:
    """Whether ``kernel`` is computed by the ops: a kernel object with a registry name the ops
    know and the packed parameters they take (:meth:`fastkernels.kernels.Kernel.op_params`).

    Solvers sit below kernels, so they recognise such kernels by what they offer, not by class.
    """
    return (
        callable(getattr(kernel, "op_params", None))
        and getattr(kernel, "name", None) in ops.KERNEL_NAMES
    )


def min_tile_bytes(n: int, m: int, itemsize: int) -> int:
    """The smallest tile a :class:`KernelOperator` needs: rows x ``m`` entries of ``itemsize``
    bytes and their temporaries (the floor of any memory budget)."""
    return min(n, MIN_TILE_ROWS) * m * itemsize * _TILE_TEMPS


def _fast_gram(kernel, device) -> bool:
    """Whether ``kernel(x, x)`` runs a compiled Gram (C++ on CPU, Triton on CUDA) for inputs
    on ``device``, which holds no temporaries beyond its result."""
    if not _op_kernel(kernel):
        return False
    return (device.type == "cpu" and ops.HAS_CPP) or (device.type == "cuda" and ops.HAS_TRITON)


def _bind_product(kernel, backend, cache: str, dim: int, where: str):
    """``product(x1, x2, V)`` for :meth:`KernelOperator.matvec`, validated before any work.

    Op kernels: :func:`fastkernels.ops.kernel_product` (the backend chosen there, once; it also
    gives the Gram tiles and the fused normal product); other kernels: their own ``mv``.
    """
    if _op_kernel(kernel):
        if backend == "keops" and cache == "dense":
            raise ValueError(
                f"{where}: backend='keops' computes every product memory-free and cannot be "
                "combined with cache='dense'; use cache='auto' or 'none'"
            )
        return ops.kernel_product(kernel.name, kernel.op_params(dim), backend, where=where)
    ops.check_backend(backend, where)
    if backend == "keops":
        raise ValueError(
            f"{where}: backend='keops' needs a fastkernels.kernels.Kernel of one of "
            f"{ops.KEOPS_KERNELS}, got {type(kernel).__name__}"
        )
    return lambda x1, x2, V: kernel.mv(x1, x2, V)


def _pad_columns(V: torch.Tensor, multiple: int = 16) -> torch.Tensor:
    """V with zero columns appended up to a multiple of ``multiple`` (one column stays one).

    The tile products K_tile @ V are skinny GEMMs; MKL runs them far below speed for column
    counts off a multiple of the vector width (measured on AVX-512, a 5592 x 3000 float32 tile:
    15 columns 40 ms, 16 columns 24 ms, 8 columns 32 ms); a single column is a GEMV, which
    is fast.
    """
    t = V.shape[1]
    if t == 1 or t % multiple == 0:
        return V
    out = V.new_zeros((V.shape[0], -(-t // multiple) * multiple))
    out[:, :t] = V
    return out


def _tile_plan(
    n: int, m: int, itemsize: int, memory_budget: int, reserved_bytes: int
) -> tuple[int, int]:
    """Rows per tile and the bytes left for the tile cache, for an (n, m) kernel operator."""
    row_bytes = m * itemsize
    free = memory_budget - reserved_bytes
    block_rows = int(
        max(MIN_TILE_ROWS, min(n, _TILE_ENTRIES // m, free // 2 // (row_bytes * _TILE_TEMPS)))
    )
    block_rows = min(block_rows, n)
    # Whatever the tiles in flight and the runtime share leave is the cache allowance.
    runtime = int(_RUNTIME_SHARE * memory_budget)
    cache_bytes = max(0, free - block_rows * row_bytes * _TILE_TEMPS - runtime)
    return block_rows, cache_bytes


def as_operator(A, where: str = "solver"):
    """A tensor as a :class:`DenseOperator`; an object with ``matvec`` and ``shape`` as itself.

    Raises
    ------
    TypeError
        Neither a 2-D tensor nor an operator.
    """
    if isinstance(A, torch.Tensor):
        return DenseOperator(A)
    if hasattr(A, "matvec") and hasattr(A, "shape"):
        return A
    if hasattr(A, "mv") and hasattr(A, "shape") and not hasattr(A, "params"):
        return _MvAdapter(A)
    raise TypeError(
        f"{where}: A must be a 2-D tensor or a linear operator with shape and matvec(V), "
        f"got {type(A).__name__}"
    )


class _MvAdapter:
    """An object exposing ``mv(V)`` and ``shape`` seen through ``matvec``."""

    def __init__(self, A):
        self.A, self.shape = A, tuple(A.shape)

    def matvec(self, V):
        return self.A.mv(V)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}"
    return type(x).__name__
