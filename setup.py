"""Build of fastkernels: pure Python plus one optional C++ CPU extension, ``fastkernels._C``.

The extension (``csrc/``) needs PyTorch importable at build time, so build it with

    pip install --no-build-isolation -e .

(an isolated build has no torch and installs the pure-Python package). Without a compiler or
torch, or with ``FASTKERNELS_NO_EXT=1``, the package installs without the extension and the ops
run their torch reference (``fastkernels info`` says which). ``FASTKERNELS_REQUIRE_EXT=1`` turns
a failed extension build into an error (CI, so that a broken build cannot pass as a fallback).

No ``-march=native``: the binary must run on other CPUs. The hot loops are compiled for several
ISA levels and chosen at run time (csrc/epilogue.cpp).
"""

import os

from setuptools import setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() not in ("", "0", "false", "no")


def _extensions():
    if _flag("FASTKERNELS_NO_EXT"):
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        if _flag("FASTKERNELS_REQUIRE_EXT"):
            raise
        return [], {}
    sources = [
        "csrc/module.cpp",
        "csrc/epilogue.cpp",
        "csrc/gram.cpp",
        "csrc/kernel_mv.cpp",
        "csrc/kernel_normal_mv.cpp",
        "csrc/dense_mv.cpp",
        "csrc/ntk_gram.cpp",
        "csrc/ntk_mv.cpp",
        "csrc/resnet_fwd.cpp",
        "csrc/resnet_bwd.cpp",
        "csrc/resnet_sgd.cpp",
    ]
    ext = CppExtension(
        "fastkernels._C",
        sources,
        # Headers and the per-ISA body: an edit there alone must rebuild the extension too.
        depends=[
            "csrc/kernel_common.h",
            "csrc/ntk_common.h",
            "csrc/epilogue_body.inc",
            "csrc/resnet_common.h",
        ],
        # -fno-math-errno / -fno-trapping-math let sqrt and selects vectorise (as in torch);
        # OpenMP for at::parallel_for and `omp simd`.
        extra_compile_args=["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"],
        extra_link_args=["-fopenmp"],
        # A failed build leaves a working pure-Python install unless the extension is required.
        optional=not _flag("FASTKERNELS_REQUIRE_EXT"),
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=False)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
