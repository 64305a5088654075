"""Kernel ridge with the finite-width empirical NTK of a network at initialisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._validation import check_choice, check_positive_int, resolve_dtype
from ..models import ARCHS, BLOCKS, TRAINABLE, StackedNet
from ..ntk.empirical import SCALINGS
from ..ntk.kernel import EmpiricalNTK
from .base import BaseRegressor
from .kernel_ridge import DEFAULT_RIDGE_GRID, KernelRidge


class NTKRegressor(BaseRegressor):
    """Kernel ridge regression with the empirical NTK of a randomly initialised network.

    The network (3resnet, 3layer or 2layer, initialised as in :class:`ResNetRegressor`) is never
    trained: its tangent kernel with respect to the ``trainable`` parameters, summed over the k
    outputs ("trace" mode), is the kernel, and the k outputs are fitted by kernel ridge with the
    ridge chosen on a validation split. This is the paper's "(NTK)" learner: what training the
    linearised network (without its initial output) converges to.

    Parameters
    ----------
    arch : {"3resnet", "3layer", "2layer"}, default "3resnet"
    width : int, default 256
    trainable : {"hidden", "last", "all"}, default "hidden"
    block : {"full", "bottleneck"}, default "full"
    scaling : {"standard", "ntk"}, default "standard"
        ``"standard"``: raw gradient inner products of the network as the paper trains it.
        ``"ntk"``: per-layer init-variance weighting (converges to the analytic NTK).
    ridge : float or "auto", default "auto"
    ridge_grid : sequence of float
        Relative ridge candidates (times the mean kernel diagonal).
    validation_fraction : float, default 0.2
    dtype : torch.dtype, default torch.float64
    device : optional
    random_state : int, default 0
        Seed of the network's init and of the validation split.

    Attributes
    ----------
    net_ : StackedNet
    kernel_ : EmpiricalNTK
    krr_ : KernelRidge
        The fitted kernel ridge model.
    hparams_ : dict
    """

    def __init__(
        self,
        arch: str = "3resnet",
        width: int = 256,
        trainable: str = "hidden",
        block: str = "full",
        scaling: str = "standard",
        ridge="auto",
        ridge_grid: Sequence[float] = DEFAULT_RIDGE_GRID,
        validation_fraction: float = 0.2,
        dtype=torch.float64,
        device=None,
        random_state: int = 0,
    ):
        self.arch = arch
        self.width = width
        self.trainable = trainable
        self.block = block
        self.scaling = scaling
        self.ridge = ridge
        self.ridge_grid = ridge_grid
        self.validation_fraction = validation_fraction
        self.dtype = dtype
        self.device = device
        self.random_state = random_state

    def check_params(self):
        """Check the constructor arguments (raises ValueError naming the bad one)."""
        where = "NTKRegressor"
        check_choice(self.arch, ARCHS, name="arch", where=where)
        check_positive_int(self.width, name="width", where=where)
        check_choice(self.trainable, TRAINABLE, name="trainable", where=where)
        check_choice(self.block, BLOCKS, name="block", where=where)
        check_choice(self.scaling, SCALINGS, name="scaling", where=where)
        if self.block == "bottleneck" and self.trainable != "hidden":
            raise ValueError(f"{where}: block='bottleneck' supports trainable='hidden' only")
        resolve_dtype(self.dtype, where=where)
        KernelRidge(
            kernel="linear",
            ridge=self.ridge,
            ridge_grid=self.ridge_grid,
            validation_fraction=self.validation_fraction,
        ).check_params()

    def fit(self, X, Y) -> NTKRegressor:
        """Fit on X (N, d), Y (N,) or (N, k); returns self."""
        self.check_params()
        dtype = resolve_dtype(self.dtype, where="NTKRegressor")
        X, Y = self._check_fit_input(X, Y, dtype=dtype, device=self.device)
        g = torch.Generator().manual_seed(int(self.random_state))
        self.net_ = StackedNet(
            self.arch,
            X.shape[1],
            self.width,
            Y.shape[1],
            block=self.block,
            generator=g,
            dtype=dtype,
            device=X.device,
        )
        self.kernel_ = EmpiricalNTK(self.net_, self.trainable, self.scaling)
        self.krr_ = KernelRidge(
            kernel=self.kernel_,
            ridge=self.ridge,
            ridge_grid=self.ridge_grid,
            validation_fraction=self.validation_fraction,
            dtype=dtype,
            device=X.device,
            random_state=self.random_state,
        ).fit(X, Y)
        self.hparams_ = {**self.krr_.hparams_}
        return self

    def predict(self, X):
        """Predictions for X (n, d): shape (n, k), or (n,) when fitted on 1-D Y."""
        self._check_is_fitted("predict")
        X_t = self._check_predict_input(X, dtype=self.net_.A.dtype, device=self.net_.A.device)
        pred = self.krr_.predict(X_t)
        if pred.dim() == 1:
            pred = pred[:, None]
        return self._format_output(pred, X)
