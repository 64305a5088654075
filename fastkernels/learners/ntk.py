"""Kernel ridge with the finite-width empirical NTK of a network at initialisation."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from .._validation import check_choice, check_positive_int, resolve_dtype
from ..models import ARCHS, BLOCKS, TRAINABLE, StackedNet
from ..ntk.empirical import SCALINGS, NotStructured, module_factors
from ..ntk.kernel import EmpiricalNTK
from ..solvers import DEFAULT_MEMORY_BUDGET
from .base import BaseRegressor, GridEdgeWarning, grid_edge_message
from .kernel_ridge import DEFAULT_RIDGE_GRID, KernelRidge


class ModuleNTK(EmpiricalNTK):
    """Trace-mode empirical NTK of any ``nn.Module`` at its current parameters.

    The kernel object :class:`NTKRegressor` fits with when given ``model``: like
    :class:`~fastkernels.ntk.EmpiricalNTK` (blocks, products, the memo of the right-hand
    factors) with the factors of :func:`fastkernels.ntk.empirical.module_factors`, which
    cover modules built from ``nn.Linear`` layers, elementwise activations and residual sums
    (forward hooks collect the layer inputs). Any other module falls back, with one warning, to
    per-sample Jacobians (torch.func), whose memory grows as samples x parameters.

    Parameters
    ----------
    model : nn.Module
        Maps (N, d) to (N, k) or (N,), each output row depending on its input row only. The
        tangent kernel differentiates the parameters with ``requires_grad=True``.
    block_size : int, default 2048
        Rows of x1 per block in ``mv``.
    """

    def __init__(self, model: nn.Module, block_size: int = 2048):
        # "requires_grad" stands in for the trainable set (it only keys the factor memo).
        super().__init__(model, "requires_grad", "standard", block_size)
        self.param_names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.path = "structured"

    def factors(self, x: torch.Tensor):
        """Per-layer factors ``(A_l, B_l)`` of ``x`` in x's dtype (one pair, ``(1, J)``, with
        the Jacobian J on the generic path)."""
        like = next(iter(self.net.parameters()))
        out_dtype = x.dtype if x.is_floating_point() else like.dtype
        xm = x.to(dtype=like.dtype, device=like.device)
        if self.path == "structured":
            try:
                f = module_factors(self.net, xm, self.param_names)
            except NotStructured as exc:
                warnings.warn(
                    f"NTKRegressor: the model's tangent kernel falls back to per-sample "
                    f"Jacobians (torch.func; memory grows with samples x parameters): {exc}",
                    UserWarning,
                    stacklevel=2,
                )
                self.path = "generic"
        if self.path == "generic":
            f = [(torch.ones_like(xm[:, :1]), self._jacobian(xm))]
        return [(a.to(out_dtype), b.to(out_dtype)) for a, b in f]

    def _jacobian(self, x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """Per-sample Jacobian of the outputs, shape (N, k, #parameters)."""
        from torch.func import functional_call, jacrev, vmap

        named = dict(self.net.named_parameters())
        theta = {n: named[n].detach() for n in self.param_names}

        def single(p, xi):
            return functional_call(self.net, p, (xi[None],), strict=False).reshape(-1)

        jac = vmap(jacrev(single), in_dims=(None, 0))
        parts = []
        for s in range(0, len(x), chunk):
            J = jac(theta, x[s : s + chunk])
            parts.append(torch.cat([j.flatten(2) for j in J.values()], dim=2))
        return torch.cat(parts)

    def params(self) -> dict:
        n = sum(p.numel() for name, p in self.net.named_parameters() if name in self.param_names)
        return {"model": type(self.net).__name__, "n_parameters": n, "path": self.path}


class NTKRegressor(BaseRegressor):
    """Kernel ridge regression with the empirical NTK of a randomly initialised network.

    The network (3resnet, 3layer or 2layer, initialised as in :class:`ResNetRegressor`, or
    the ``model`` given) is never trained: its tangent kernel with respect to the
    ``trainable`` parameters, summed over the k outputs ("trace" mode), is the kernel, and the
    k outputs are fitted by kernel ridge with the ridge chosen on a validation split. This is
    the paper's "(NTK)" learner: what training the linearised network (without its initial
    output) converges to.

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
    dtype : {"float64", "float32"} or torch.dtype, default "float64"
        Dtype of the network, the kernel and the solve.
    device : optional
    random_state : int, default 0
        Seed of the network's init and of the validation split.
    solver, n_centers, memory_budget, tol, max_iter, compute_dtype, search_size, verbose
        Passed to :class:`KernelRidge` (same meaning): the solver ("auto", "cholesky", "cg",
        "nystrom"), Nystrom centres / CG preconditioner rank, memory budget, iteration
        control, dtype of the kernel evaluations inside the iterative solvers, size of the
        hyperparameter-search subsample, progress output (default False).
    model : torch.nn.Module, optional
        A network to take the tangent kernel of, at its current parameters, instead of
        building one from ``arch``, ``width`` and ``block`` (which must then keep their
        defaults). ``fit`` works on a copy, converted to ``dtype`` and moved to the data's
        device, so later changes to ``model`` do not change a fitted estimator. A
        :class:`~fastkernels.models.StackedNet` (member 0) honours ``trainable`` and
        ``scaling``. Any other module maps (N, d) to (N, k) or (N,); its kernel differentiates
        the parameters with ``requires_grad=True`` (``trainable`` keeps its default and
        ``scaling`` must be ``"standard"``: a module's init variances are unknown), from
        per-layer factors for modules built from ``nn.Linear`` layers, elementwise
        activations and residual sums, else (one warning) from per-sample Jacobians
        (:class:`ModuleNTK`).

    Attributes
    ----------
    net_ : StackedNet or torch.nn.Module
        The network whose tangent kernel was used (the copy of ``model`` when given).
    kernel_ : EmpiricalNTK
        The kernel (a :class:`ModuleNTK` for a ``model`` that is not a StackedNet).
    krr_ : KernelRidge
        The fitted kernel ridge model.
    solver_info_ : dict
        ``krr_.solver_info_``: solver, iterations, residual history, converged flag.
    hparams_ : dict
        The kernel ridge fit's ``hparams_`` (kernel, ridge, solver, ...), including
        ``"grid_edge"`` (list of str) and, when the ridge was searched, ``"ridge_rel"``.
    n_iter_ : int
        ``krr_.n_iter_``: iterations of the final solve (0 for a direct solve).
    n_features_in_ : int
        Number of features seen by ``fit``.
    feature_names_in_ : ndarray of str
        Column names of X, when ``fit`` got a DataFrame with string column names.
    n_outputs_ : int
        Number of outputs k.

    Notes
    -----
    X and Y may be NumPy arrays, lists, DataFrames (validated as scikit-learn's
    ``check_array`` does) or torch tensors (kept on their device). ``predict`` returns a NumPy
    array for input that is not a tensor and a tensor for tensor input.
    """

    _fitted_attribute = "krr_"

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
        dtype="float64",
        device=None,
        random_state: int = 0,
        solver: str = "auto",
        n_centers: int | None = None,
        memory_budget=DEFAULT_MEMORY_BUDGET,
        tol: float | None = None,
        max_iter: int | None = None,
        compute_dtype="auto",
        search_size: int = 4000,
        verbose: bool = False,
        model: nn.Module | None = None,
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
        self.solver = solver
        self.n_centers = n_centers
        self.memory_budget = memory_budget
        self.tol = tol
        self.max_iter = max_iter
        self.compute_dtype = compute_dtype
        self.search_size = search_size
        self.verbose = verbose
        self.model = model

    def _solver_params(self) -> dict:
        return {
            "solver": self.solver,
            "n_centers": self.n_centers,
            "memory_budget": self.memory_budget,
            "tol": self.tol,
            "max_iter": self.max_iter,
            "compute_dtype": self.compute_dtype,
            "search_size": self.search_size,
            "verbose": self.verbose,
        }

    def check_params(self):
        """Check the constructor arguments (raises ValueError/TypeError naming the bad one)."""
        where = "NTKRegressor"
        check_choice(self.arch, ARCHS, name="arch", where=where)
        check_positive_int(self.width, name="width", where=where)
        check_choice(self.trainable, TRAINABLE, name="trainable", where=where)
        check_choice(self.block, BLOCKS, name="block", where=where)
        check_choice(self.scaling, SCALINGS, name="scaling", where=where)
        if self.model is not None:
            self._check_model(where)
        elif self.block == "bottleneck" and self.trainable != "hidden":
            raise ValueError(f"{where}: block='bottleneck' supports trainable='hidden' only")
        resolve_dtype(self.dtype, where=where)
        KernelRidge(
            kernel="linear",
            ridge=self.ridge,
            ridge_grid=self.ridge_grid,
            validation_fraction=self.validation_fraction,
            **self._solver_params(),
        ).check_params()

    def _check_model(self, where: str) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(
                f"{where}: model must be a torch.nn.Module or None, got {type(self.model).__name__}"
            )
        defaults = {"arch": "3resnet", "width": 256, "block": "full"}
        if not isinstance(self.model, StackedNet):
            defaults["trainable"] = "hidden"
        changed = [k for k, v in defaults.items() if getattr(self, k) != v]
        if changed:
            raise ValueError(
                f"{where}: {', '.join(changed)} describe the network NTKRegressor builds; with "
                f"model= the network is given: leave {' and '.join(changed)} at the default"
                + (
                    " (a module's kernel differentiates its parameters with requires_grad=True)"
                    if "trainable" in changed
                    else ""
                )
            )
        if not isinstance(self.model, StackedNet) and self.scaling != "standard":
            raise ValueError(
                f"{where}: scaling='ntk' needs a StackedNet model (its init variances are "
                "known); got a " + type(self.model).__name__
            )
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError(f"{where}: model has no parameter with requires_grad=True")
        for name, mod in self.model.named_modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.training:
                # Samples interact through batch statistics: no per-sample tangent kernel.
                raise ValueError(
                    f"{where}: model's BatchNorm {name!r} is in training mode, so samples "
                    "interact; call model.eval() first"
                )

    def check_fit_plan(self, n: int, n_outputs: int = 1) -> dict:
        """The kernel ridge solve's plan for ``n`` samples, or the error it would raise
        (see :meth:`KernelRidge.check_fit_plan`)."""
        self.check_params()
        return KernelRidge(
            kernel="linear",
            ridge=self.ridge,
            ridge_grid=self.ridge_grid,
            validation_fraction=self.validation_fraction,
            **self._solver_params(),
        ).check_fit_plan(n, n_outputs)

    def _network(self, X: torch.Tensor, n_outputs: int, dtype: torch.dtype):
        """The network and its kernel: built from arch/width/block, or a copy of ``model``."""
        if self.model is None:
            g = torch.Generator().manual_seed(int(self.random_state))
            net = StackedNet(
                self.arch,
                X.shape[1],
                self.width,
                n_outputs,
                block=self.block,
                generator=g,
                dtype=dtype,
                device=X.device,
            )
            return net, EmpiricalNTK(net, self.trainable, self.scaling)
        net = copy.deepcopy(self.model).to(dtype=dtype, device=X.device)
        if isinstance(net, StackedNet):
            if net.in_features != X.shape[1]:
                raise ValueError(
                    f"NTKRegressor.fit: model takes {net.in_features} features, but X has "
                    f"{X.shape[1]}"
                )
            if net.block == "bottleneck" and self.trainable != "hidden":
                raise ValueError(
                    "NTKRegressor: a bottleneck StackedNet model supports trainable='hidden' only"
                )
            kernel = EmpiricalNTK(net, self.trainable, self.scaling)
        else:
            kernel = ModuleNTK(net)
        try:
            kernel.factors(X[:1])  # fails here, with a clear message, on input the model rejects
        except RuntimeError as exc:
            raise ValueError(
                f"NTKRegressor.fit: model does not accept X of shape {tuple(X.shape)}: "
                f"{' '.join(str(exc).split())}"
            ) from None
        return net, kernel

    def fit(self, X, Y) -> NTKRegressor:
        """Fit on X (N, d), Y (N,) or (N, k).

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (N, d)
        Y : array-like or torch.Tensor, shape (N,) or (N, k)

        Returns
        -------
        NTKRegressor
            self, fitted.

        Raises
        ------
        ValueError
            Bad parameters or input (see :meth:`KernelRidge.fit`), or X that ``model`` does
            not accept.

        Warns
        -----
        GridEdgeWarning
            The ridge search chose the smallest or largest value of ``ridge_grid`` (also in
            ``hparams_["grid_edge"]``).
        """
        self.check_params()
        dtype = resolve_dtype(self.dtype, where="NTKRegressor")
        X, Y = self._check_fit_input(X, Y, dtype=dtype, device=self.device)
        net, kernel = self._network(X, Y.shape[1], dtype)
        with warnings.catch_warnings():
            # Re-issued below under this estimator's name and pointing at its caller: the inner
            # KernelRidge is an implementation detail the user never built. Other warnings (an
            # unconverged solve) pass through unchanged.
            warnings.simplefilter("ignore", GridEdgeWarning)
            krr = KernelRidge(
                kernel=kernel,
                ridge=self.ridge,
                ridge_grid=self.ridge_grid,
                validation_fraction=self.validation_fraction,
                dtype=dtype,
                device=X.device,
                random_state=self.random_state,
                **self._solver_params(),
            ).fit(X, Y)
        # The kernel kept the centres' factors for the solve; a fitted model does not need them.
        kernel.clear_cache()
        self.net_, self.kernel_ = net, kernel
        self.hparams_ = {**krr.hparams_}
        self.solver_info_ = krr.solver_info_
        self.n_iter_ = krr.n_iter_
        self.krr_ = krr  # last: its presence marks the estimator fitted
        if self.hparams_["grid_edge"]:
            warnings.warn(
                grid_edge_message("NTKRegressor", self.hparams_["grid_edge"]),
                GridEdgeWarning,
                stacklevel=2,
            )
        return self

    def predict(self, X):
        """Predictions for X (n, d).

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n, d)

        Returns
        -------
        numpy.ndarray or torch.Tensor, shape (n, k), or (n,) when fitted on 1-D Y
            A tensor (on the fit's device, in ``dtype``) for tensor input, else a NumPy array.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Called before ``fit``.
        ValueError
            X is not (n, d) with the fitted d, is empty or holds NaN or inf.
        """
        self._check_is_fitted("predict")
        fit_X = self.krr_.X_fit_
        X_t = self._check_predict_input(X, dtype=fit_X.dtype, device=fit_X.device)
        pred = self.krr_.predict(X_t)
        self.kernel_.clear_cache()
        if pred.dim() == 1:
            pred = pred[:, None]
        return self._format_output(pred, X)
