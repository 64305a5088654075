"""Shared pieces of the Triton kernels: the GEMM-tile prologue, the kernel epilogues, ``acos``.

The ``@triton.jit`` helpers here mirror :mod:`fastkernels.kernels.formulas` line by line: every
kernel is an elementwise epilogue of ``s = x1 x2^T`` (one ``tl.dot`` tile), the squared row norms
``n1`` and the squared column norms ``n2``, with the same clamps, self-pair rule and zero-norm
rule as the reference.

Precision
---------
Tiles accumulate in the input dtype: float32 inputs accumulate in float32 and float64 inputs in
float64 (``tl.dot`` supports float64 operands and accumulator). ``tl.dot`` runs in IEEE float32 by
default (``input_precision="ieee"``); TF32 is opt-in (argument ``allow_tf32=True`` of the
launchers, or the environment variable ``FASTKERNELS_TRITON_TF32=1`` for the registered CUDA
ops). TF32 rounds the dot operands to a 10-bit mantissa (~5e-4 relative per operand): the tests
hold it to 1e-2 relative to the largest entry on unit-variance inputs with ``gamma ~ 1/D``; it
is worse for distance kernels of nearly coincident points (cancellation in ``n1 + n2 - 2 s``).
float64 inputs never use TF32. The launchers shift the inputs of the distance kernels by the
mean of x2's rows before the launch (``fastkernels.ops._common.center_inputs``), so that the
norms in ``n1 + n2 - 2 s`` are those of the data's spread, not of its distance from the origin.
On the GPU, float32 ``exp`` / ``sqrt`` / division are the hardware's fast versions (a few ulp),
well inside the float32 tolerance of 1e-5.

Parameters
----------
Continuous parameters (``gamma``, ``coef0``) travel in a 2-element tensor of the input dtype:
a Python float argument of a Triton kernel is passed as float32, which would round ``gamma`` in
a float64 computation. Discrete ones (kernel, Matern nu, arc-cosine order, architecture, depth,
trainable set) are ``tl.constexpr``, so each variant compiles to a branch-free epilogue.

acos
----
Triton's ``libdevice.acos`` is an extern call that the interpreter cannot run, so :func:`_acos`
is written with plain ``tl`` operations: fdlibm's rational approximation of ``asin`` on
[0, 1/2] (``e_asin.c``; error below 2^-58) and the half-angle identity
``acos(|c|) = 2 asin(sqrt((1 - |c|) / 2))`` for ``|c| > 1/2``. Measured against numpy's arccos
on a dense grid of [-1, 1] (plus points within 1e-16 of +-1): 2.3e-16 relative in float64 and
1.5e-7 relative in float32; ``acos(1) = 0`` and ``acos(-1) = pi`` exactly (to the dtype).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os

import torch
import triton
import triton.language as tl

from .._common import unpack_params

__all__ = [
    "KERNEL_CODES",
    "epilogue_constants",
    "params_tensor",
    "small_tensor",
    "launch_device",
    "input_precision",
    "dot_block",
    "default_block_k",
]

KERNEL_CODES = {
    "rbf": 0,
    "laplace": 1,
    "matern": 2,
    "polynomial": 3,
    "linear": 4,
    "arccos": 5,
    "nngp": 6,
    "ntk": 7,
}
_TF32_ENV = "FASTKERNELS_TRITON_TF32"

_PI = tl.constexpr(math.pi)
_HALF_PI = tl.constexpr(math.pi / 2)
_SQRT3 = tl.constexpr(math.sqrt(3.0))
_SQRT5 = tl.constexpr(math.sqrt(5.0))
_TWO_PI = tl.constexpr(2 * math.pi)
_FOUR_PI = tl.constexpr(4 * math.pi)
# fdlibm e_asin.c: asin(x) = x + x R(x^2) on [0, 1/2], R = P / Q.
_PS0 = tl.constexpr(1.66666666666666657415e-01)
_PS1 = tl.constexpr(-3.25565818622400915405e-01)
_PS2 = tl.constexpr(2.01212532134862925881e-01)
_PS3 = tl.constexpr(-4.00555345006794114027e-02)
_PS4 = tl.constexpr(7.91534994289814532176e-04)
_PS5 = tl.constexpr(3.47933107596021167570e-05)
_QS1 = tl.constexpr(-2.40339491173441421878e00)
_QS2 = tl.constexpr(2.02094576023350569471e00)
_QS3 = tl.constexpr(-6.88283971605453293030e-01)
_QS4 = tl.constexpr(7.70381505559019352791e-02)


# ---------------------------------------------------------------------------------------------
# Launcher helpers (host side)
# ---------------------------------------------------------------------------------------------


def input_precision(dtype: torch.dtype, allow_tf32: bool | None) -> str:
    """``tl.dot``'s input precision: ``"tf32"`` only for float32 with TF32 opted in."""
    if allow_tf32 is None:
        allow_tf32 = os.environ.get(_TF32_ENV, "0") == "1"
    return "tf32" if (allow_tf32 and dtype == torch.float32) else "ieee"


def default_block_k(dtype: torch.dtype) -> int:
    """BLOCK_K of the D loop: 32 for float32, 16 for float64 (twice the bytes per element)."""
    return 16 if dtype == torch.float64 else 32


def dot_block(size: int, cap: int) -> int:
    """A power-of-two block >= 16 (``tl.dot``'s smallest safe tile edge), at most ``cap``."""
    return max(16, min(cap, triton.next_power_of_2(size)))


def epilogue_constants(op: str, kernel: str, params) -> tuple[dict, float, float, int]:
    """Validate ``params`` (as the reference does) and split them for the kernel launch.

    Returns
    -------
    constexprs : dict
        ``KERNEL``, ``NU2`` (2 nu), ``ORDER``, ``ARCH``, ``DEPTH``, ``TRAINABLE``.
    gamma, coef0 : float
        Continuous parameters (1 and 0 where the kernel has none).
    degree : int
        Polynomial degree (1 where the kernel has none).
    """
    kw = unpack_params(op, kernel, params)
    const = {
        "KERNEL": KERNEL_CODES[kernel],
        "NU2": 1 if kernel == "laplace" else int(round(2 * kw.get("nu", 0.5))),
        "ORDER": kw.get("order", 0),
        "ARCH": 1 if kw.get("arch") == "3resnet" else 0,
        "DEPTH": kw.get("depth") or 0,
        "TRAINABLE": 1 if kw.get("trainable") == "all" else 0,
    }
    return const, float(kw.get("gamma", 1.0)), float(kw.get("coef0", 0.0)), kw.get("degree", 1)


def launch_device(like: torch.Tensor):
    """Context making ``like``'s GPU current: Triton launches on the current device."""
    return torch.cuda.device(like.device) if like.is_cuda else contextlib.nullcontext()


@functools.lru_cache(maxsize=256)
def small_tensor(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small read-only tensor of ``values``, made once per (values, dtype, device).

    A fresh host-to-device copy per launch would synchronise the stream (and cannot happen
    inside CUDA-graph capture); solver loops call the ops with the same parameters every time.
    """
    return torch.tensor(values, dtype=dtype, device=device)


def params_tensor(gamma: float, coef0: float, like: torch.Tensor) -> torch.Tensor:
    """``[gamma, coef0]`` in the dtype and on the device of ``like`` (read by ``tl.load``)."""
    return small_tensor((gamma, coef0), like.dtype, like.device)


# ---------------------------------------------------------------------------------------------
# Device helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _acos(c):
    """arccos of a tensor with entries in [-1, 1], in the tensor's dtype (module docstring)."""
    a = tl.abs(c)
    small = a <= 0.5
    z = tl.where(small, c * c, (1.0 - a) * 0.5)
    # Horner's rule with the tensor on the left of every operation: under the interpreter,
    # ``constexpr op tensor`` would wrap the result in a constexpr.
    h = z * _PS5 + _PS4
    h = z * h + _PS3
    h = z * h + _PS2
    h = z * h + _PS1
    h = z * h + _PS0
    p = z * h
    h = z * _QS4 + _QS3
    h = z * h + _QS2
    h = z * h + _QS1
    q = z * h + 1.0
    r = p / q
    # |c| <= 1/2: acos(c) = pi/2 - asin(c). |c| > 1/2: t = acos(|c|) = 2 asin(sqrt(z)), and
    # acos(c) = pi - t for negative c; sqrt(z) with z = (1 - |c|) / 2 keeps full precision near
    # |c| = 1, where pi/2 - asin(c) would cancel.
    sq = tl.sqrt(z)
    t = 2.0 * (sq + sq * r)
    big = tl.where(c > 0.0, t, -t + _PI)
    return tl.where(small, -(c + c * r) + _HALF_PI, big)


@triton.jit
def _arccos_terms(s, d1, d2, same, HAS_DIAG: tl.constexpr):
    """Order-1 and order-0 arc-cosine kernels of (s, d1, d2), as ``formulas._arccos_epilogue``.

    ``s`` is (BM, BN), ``d1`` (BM, 1), ``d2`` (1, BN). A zero norm gives cosine 0 (taking
    precedence over the self-pair rule); self-pairs have cosine exactly 1.
    """
    root = tl.sqrt(d1) * tl.sqrt(d2)
    nonzero = root > 0.0
    c = s / tl.where(nonzero, root, 1.0)
    c = tl.minimum(tl.maximum(c, -1.0), 1.0)
    if HAS_DIAG:
        # acos has infinite slope at 1: a rounding error in the cosine of a point with itself
        # would become an angle of ~sqrt(eps). Self-pairs are exactly aligned.
        c = tl.where(same, 1.0, c)
    c = tl.where(nonzero, c, 0.0)
    theta = _acos(c)
    # sin(theta) from the cosine: sqrt((1 - c)(1 + c)) keeps precision near c = -1.
    sin = tl.sqrt(tl.maximum((1.0 - c) * (1.0 + c), 0.0))
    k1 = root * (sin + (-theta + _PI) * c) / _PI
    k0 = (-theta + _PI) / _PI
    return k1, k0


@triton.jit
def _relu_kernels(
    s,
    n1,
    n2,
    same,
    ARCH: tl.constexpr,
    DEPTH: tl.constexpr,
    NTK: tl.constexpr,
    TRAINABLE: tl.constexpr,
    HAS_DIAG: tl.constexpr,
):
    """NNGP / NTK of the ReLU nets from Sigma_1 = (s, n1, n2), as ``formulas._relu_kernels``.

    Lambda = half the order-1 arc-cosine kernel, Lambda' = half the order-0 one.
    """
    if ARCH == 0:
        sig = s
        d1 = n1
        d2 = n2
        tangent = s
        for _ in tl.static_range(DEPTH - 1):
            k1, k0 = _arccos_terms(sig, d1, d2, same, HAS_DIAG)
            lam = 0.5 * k1
            tangent = lam + tangent * (0.5 * k0)
            # Lambda at theta = 0 is exactly s / 2: the variances halve at every ReLU layer.
            sig = lam
            d1 = 0.5 * d1
            d2 = 0.5 * d2
        k1, k0 = _arccos_terms(sig, d1, d2, same, HAS_DIAG)
        nngp = 0.5 * k1
        hidden = tangent * (0.5 * k0)
    else:
        k1, k0 = _arccos_terms(s, n1, n2, same, HAS_DIAG)
        lam1 = 0.5 * k1
        dlam1 = 0.5 * k0
        k1, k0 = _arccos_terms(lam1, 0.5 * n1, 0.5 * n2, same, HAS_DIAG)
        lam2 = 0.5 * k1
        dlam2 = 0.5 * k0
        # Means of h1 and h2 (variances Sigma_1(x, x) and Sigma_1(x, x) / 2): see formulas.py.
        m1a = tl.sqrt(n1 / _TWO_PI)
        m1b = tl.sqrt(n2 / _TWO_PI)
        m2a = tl.sqrt(n1 / _FOUR_PI)
        m2b = tl.sqrt(n2 / _FOUR_PI)
        nngp = lam1 + lam2 + m1a * m2b + m2a * m1b
        hidden = lam1 * dlam2 + s * dlam1 * (1.0 + dlam2)
    if NTK:
        # With no readout bias, the readout's own contribution is exactly the NNGP.
        if TRAINABLE == 1:
            out = hidden + nngp
        else:
            out = hidden
    else:
        out = nngp
    return out


@triton.jit
def _epilogue(
    s,
    n1,
    n2,
    same,
    D,
    gamma,
    coef0,
    degree,
    KERNEL: tl.constexpr,
    NU2: tl.constexpr,
    ORDER: tl.constexpr,
    ARCH: tl.constexpr,
    DEPTH: tl.constexpr,
    TRAINABLE: tl.constexpr,
    HAS_DIAG: tl.constexpr,
):
    """The kernel value of a (BM, BN) tile from s (BM, BN), n1 (BM,), n2 (BN,)."""
    d1 = n1[:, None]
    d2 = n2[None, :]
    if KERNEL <= 2:  # rbf, laplace, matern: functions of the squared distance
        # Cancellation in n1 + n2 - 2 s can give tiny negative values: clamp; self-pairs get an
        # exact 0 so that k(x, x) = k(0) exactly.
        dist2 = tl.maximum(d1 + d2 - 2.0 * s, 0.0)
        if HAS_DIAG:
            dist2 = tl.where(same, 0.0, dist2)
        if KERNEL == 0:
            k = tl.exp(-gamma * dist2)
        else:
            r = gamma * tl.sqrt(dist2)
            if NU2 == 1:
                k = tl.exp(-r)
            elif NU2 == 3:
                k = (r * _SQRT3 + 1.0) * tl.exp(r * (-_SQRT3))
            else:
                k = (r * _SQRT5 + 1.0 + (5.0 / 3.0) * r * r) * tl.exp(r * (-_SQRT5))
    elif KERNEL == 3:
        base = gamma * s + coef0
        k = base
        for _ in range(1, degree):
            k = k * base
    elif KERNEL == 4:
        k = s
    elif KERNEL == 5:
        k1, k0 = _arccos_terms(s, d1, d2, same, HAS_DIAG)
        if ORDER == 0:
            k = k0
        else:
            k = k1
    else:  # nngp (6), ntk (7): inputs enter as Sigma_1 = <x, x'> / D
        # D * 1.0 rather than D.to(): D is a Python int under the interpreter (and a constexpr
        # if a caller lets Triton specialise D == 1); int32 -> float32 is exact for D < 2^24.
        df = D * 1.0
        k = _relu_kernels(
            s / df, d1 / df, d2 / df, same, ARCH, DEPTH, KERNEL == 7, TRAINABLE, HAS_DIAG
        )
    return k


@triton.jit
def _grouped_tile(pid, N, M, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Tile (pid_m, pid_n) of program ``pid``, in groups of GROUP_M tile rows (Triton's matmul
    tutorial): consecutive programs share column tiles of x2 while they are in L2."""
    num_pid_m = tl.cdiv(N, BLOCK_M)
    num_pid_n = tl.cdiv(M, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _tile_terms(
    x1_ptr,
    x2_ptr,
    offs_m,
    offs_n,
    N,
    M,
    D,
    stride_x1n,
    stride_x1d,
    stride_x2m,
    stride_x2d,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """s = x1[offs_m] x2[offs_n]^T (BM, BN) and the squared norms n1 (BM,), n2 (BN,).

    Rows past N / M and columns past D load as 0, so padded entries are finite (zero norms).
    """
    dt = x1_ptr.dtype.element_ty
    s = tl.zeros((BLOCK_M, BLOCK_N), dtype=dt)
    n1 = tl.zeros((BLOCK_M,), dtype=dt)
    n2 = tl.zeros((BLOCK_N,), dtype=dt)
    row_ok = offs_m[:, None] < N
    col_ok = offs_n[None, :] < M
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(
            x1_ptr + offs_m[:, None] * stride_x1n + offs_k[None, :] * stride_x1d,
            mask=row_ok & (offs_k[None, :] < D),
            other=0.0,
        )
        # x2 is read transposed (BK, BN), the B operand of tl.dot.
        b = tl.load(
            x2_ptr + offs_k[:, None] * stride_x2d + offs_n[None, :] * stride_x2m,
            mask=(offs_k[:, None] < D) & col_ok,
            other=0.0,
        )
        s = tl.dot(a, b, s, input_precision=INPUT_PRECISION)
        n1 += tl.sum(a * a, axis=1)
        n2 += tl.sum(b * b, axis=0)
    return s, n1, n2
