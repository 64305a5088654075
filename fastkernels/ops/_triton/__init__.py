"""Triton kernels of the fastkernels ops, one file per op, and their launchers.

Each ``<op>.py`` holds the ``@triton.jit`` kernel ``_<op>_kernel`` and a launcher
``<op>_triton`` that takes torch tensors, validates them exactly as the reference does, allocates
the output and computes the grid. The launchers are device-agnostic: :mod:`fastkernels.ops`
registers them for CUDA tensors, and the tests run them on CPU tensors under
``TRITON_INTERPRET=1``. Importing this package needs ``triton`` but no GPU or driver.

Numerics (accumulation dtype, IEEE vs TF32, the ``acos`` used by the arc-cosine and NTK
epilogues) are described in :mod:`._common`.
"""

from .gram import gram_triton
from .kernel_mv import kernel_mv_triton
from .kernel_normal_mv import kernel_normal_mv_triton
from .ntk_gram import ntk_gram_triton
from .ntk_mv import ntk_mv_triton
from .resnet import resnet_bwd_triton, resnet_fwd_triton, resnet_sgd_triton

__all__ = [
    "gram_triton",
    "kernel_mv_triton",
    "kernel_normal_mv_triton",
    "ntk_gram_triton",
    "ntk_mv_triton",
    "resnet_fwd_triton",
    "resnet_bwd_triton",
    "resnet_sgd_triton",
]
