"""The paper's networks as scikit-learn style regressors (PAPER.md 2.1-2.2)."""

from __future__ import annotations

import itertools
import math
import warnings

import torch

from .._validation import check_choice, check_positive_int, check_xy, resolve_dtype
from ..models import ARCHS, BLOCKS, TRAINABLE, StackedNet, train_sgd
from ..models.nets import check_init_scales
from .base import (
    BaseRegressor,
    DivergenceWarning,
    GridEdgeWarning,
    grid_edge,
    grid_edge_message,
    squared_error,
    validation_split,
)

RECIPES = ("joint", "paper", "online", "layerwise")
LOSSES = ("sum", "mean")

# The paper's SGD (PAPER.md 2.2): momentum 0.9, batch 50, 800 epochs, lr / 10 at half of them;
# lr and weight decay one point of the paper's {1, 2, 5} x 10^-j grid that trains the parity
# instances; weight decay on every trained parameter.
_PAPER_SGD = {
    "lr": 0.05,
    "weight_decay": 5e-3,
    "momentum": 0.9,
    "batch_size": 50,
    "epochs": 800,
    "lr_drop": 0.5,
    "decay_params": "all",
}

# Defaults per recipe; an explicit constructor argument overrides them.
RECIPE_DEFAULTS = {
    # The paper's SGD with every layer trained, the readout A included (its step capped at
    # 1 / width, see lr_readout), and weight decay 0.05 on the first layer W only. The ablation
    # of the paper's Fig. 2(a) at N = 1000 (preset paper-fig2a-ablation, README) found these two
    # choices the ones that make the 3resnet learn there; the paper's own recipe (A fixed at
    # init, weight decay on every layer) does not at that N.
    "joint": {**_PAPER_SGD, "weight_decay": 0.05, "decay_params": ("W",)},
    "paper": dict(_PAPER_SGD),
    # Online SGD: batch 1, each sample used once (a fresh sample per step), no momentum or
    # weight decay, constant step; increments from zero (bottleneck block) by default.
    "online": {
        "lr": 0.01,
        "weight_decay": 0.0,
        "momentum": 0.0,
        "batch_size": 1,
        "epochs": 1,
        "lr_drop": None,
        "decay_params": "all",
    },
    # Layer-wise: first layer for half the epochs, then it is frozen and the second block
    # trains for the other half, each phase with the paper's schedule.
    "layerwise": dict(_PAPER_SGD),
}
# The trained parameters of each recipe when ``trainable`` is left as None.
RECIPE_TRAINABLE = {"joint": "all", "paper": "hidden", "online": "hidden", "layerwise": "hidden"}

# The paper's hyperparameter grid {1, 2, 5} x 10^-j over the range that trains these networks
# (smaller learning rates do not converge in 800 epochs; larger ones diverge).
PAPER_GRID = {
    "lr": [0.01, 0.02, 0.05, 0.1, 0.2],
    "weight_decay": [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2],
}


class ResNetRegressor(BaseRegressor):
    """A small ReLU network (3resnet, 3layer or 2layer) trained by SGD on the squared loss.

    ``trainable`` sets the trained parameters: ``"hidden"`` trains W and U (or V) and leaves the
    readout A at its random init, the paper's setting; ``"last"`` trains A only (random
    features of the network, a kernel method); ``"all"`` trains everything. The default recipe
    ``"joint"`` trains all of them with the paper's SGD settings and weight decay on the first
    layer only; ``recipe="paper"`` is the paper's own (hidden layers only, decay on all).

    Hyperparameters: with ``param_grid`` (a dict of lists for ``lr`` and ``weight_decay``, or
    ``"paper"`` for the paper's grid) every combination is trained at once as one stacked
    ensemble, and the best one is chosen on ``selection``: ``"validation"`` (default) holds out
    ``validation_fraction`` of the training set and refits the winner on all of it; ``"test"``
    reproduces the paper's practice and chooses on the data passed to ``fit`` as
    ``X_select, Y_select`` (the sweep passes the test set and records that it did).

    Parameters
    ----------
    arch : {"3resnet", "3layer", "2layer"}, default "3resnet"
    width : int, default 256
        Hidden width m.
    trainable : {"hidden", "last", "all"}, optional
        Default: the recipe's ("all" for "joint", "hidden" for the others).
    recipe : {"joint", "paper", "online", "layerwise"}, default "joint"
        Training recipe; fixes the defaults of the arguments left as None. ``"paper"``,
        ``"online"`` and ``"layerwise"`` are PAPER.md 2.2; ``"joint"`` is the paper's SGD with
        every layer trained and weight decay 0.05 on W only.
    block : {"full", "bottleneck"}, optional
        Second block of the 3resnet; default "bottleneck" for the online recipe, else "full".
    lr, weight_decay, momentum, batch_size, epochs, lr_drop : optional
        SGD settings; None takes the recipe's default (paper: 0.05, 5e-3, 0.9, 50, 800, 0.5;
        joint: the same with weight decay 0.05, on W only).
        ``lr_drop`` is the fraction of epochs after which the learning rate is divided by 10.
    lr_second : float, optional
        Separate learning rate for the second block (U or V), as the theory recipe uses.
    lr_readout : float, optional
        Learning rate of the readout A when it is trained (``"last"``, ``"all"``); default
        ``min(lr, 1 / width)``: the readout's curvature grows like the width and SGD at the
        hidden layers' step size diverges on it.
    second_init, bias_init, readout_init : float, default 1.0
        Factors on the init standard deviation of the second block (U, or V0), of the biases
        and of the readout A (0: start at zero); see :class:`~fastkernels.models.StackedNet`.
    loss : {"sum", "mean"}, default "sum"
        The training loss per sample: the squared error summed over the k outputs (the test
        error's scale) or averaged over them (gradients 1 / k as large).
    decay_params : "all" or list of str, optional
        The trained parameters that get weight decay: ``"all"`` or names of
        :meth:`~fastkernels.models.StackedNet.parameter_names` (e.g. ``["W", "U"]``). Default:
        the recipe's (joint: the first layer W only; the others: all).
    param_grid : dict or "paper", optional
        Grid of ``lr`` and ``weight_decay`` values searched as one ensemble.
    selection : {"validation", "test"}, default "validation"
    validation_fraction : float, default 0.2
    dtype : {"float32", "float64"} or torch.dtype, default "float32"
        Dtype of the network, its training and its predictions.
    device : str or torch.device, optional
    random_state : int, default 0
        Seed of the init, the mini-batch order and the validation split.
    verbose : bool, default False
        Progress bar over epochs.

    Attributes
    ----------
    net_ : StackedNet
        The fitted network (one member).
    hparams_ : dict
        Chosen hyperparameters and, after a search, the validation (or selection) error; and
        the fit's status: ``"final_loss"`` (float) the returned network's last training loss
        (the last epoch's mean; with ``selection="test"`` and a grid, whose history averages
        the members, the chosen member's training error after training), ``"diverged"``
        (bool) whether that loss or the network's predictions on the training inputs are not
        finite, and ``"grid_edge"`` (list of str, empty without a search) the searched ``lr``
        or ``weight_decay`` chosen at the smallest or largest value of its grid axis.
    diverged_ : bool
        ``hparams_["diverged"]``.
    loss_history_ : list of float
        Training loss per epoch of the final fit.
    search_results_ : list of dict
        Every grid point with its selection error (after a search).
    fit_messages_ : list of str
        The texts of the warnings the fit raised (grid edge, divergence).
    n_iter_ : int
        SGD epochs of the returned network's training (both phases of the layer-wise recipe;
        the final refit after a validation search).
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
    array for input that is not a tensor and a tensor for tensor input, in ``dtype`` either
    way (float32 by default, where scikit-learn's own regressors return float64).
    """

    _fitted_attribute = "net_"

    def __init__(
        self,
        arch: str = "3resnet",
        width: int = 256,
        trainable: str | None = None,
        recipe: str = "joint",
        block: str | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        momentum: float | None = None,
        batch_size: int | None = None,
        epochs: int | None = None,
        lr_drop: float | None = None,
        lr_second: float | None = None,
        lr_readout: float | None = None,
        second_init: float = 1.0,
        bias_init: float = 1.0,
        readout_init: float = 1.0,
        loss: str = "sum",
        decay_params=None,
        param_grid=None,
        selection: str = "validation",
        validation_fraction: float = 0.2,
        dtype="float32",
        device=None,
        random_state: int = 0,
        verbose: bool = False,
    ):
        self.arch = arch
        self.width = width
        self.trainable = trainable
        self.recipe = recipe
        self.block = block
        self.lr = lr
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.batch_size = batch_size
        self.epochs = epochs
        self.lr_drop = lr_drop
        self.lr_second = lr_second
        self.lr_readout = lr_readout
        self.second_init = second_init
        self.bias_init = bias_init
        self.readout_init = readout_init
        self.loss = loss
        self.decay_params = decay_params
        self.param_grid = param_grid
        self.selection = selection
        self.validation_fraction = validation_fraction
        self.dtype = dtype
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # -- configuration ------------------------------------------------------------------------
    def check_params(self):
        """Check the constructor arguments (raises ValueError naming the bad one)."""
        self._settings()

    def _settings(self) -> dict:
        where = "ResNetRegressor"
        check_choice(self.arch, ARCHS, name="arch", where=where)
        check_positive_int(self.width, name="width", where=where)
        check_choice(self.recipe, RECIPES, name="recipe", where=where)
        trainable = RECIPE_TRAINABLE[self.recipe] if self.trainable is None else self.trainable
        check_choice(trainable, TRAINABLE, name="trainable", where=where)
        check_choice(self.loss, LOSSES, name="loss", where=where)
        check_init_scales(
            second_init=self.second_init,
            bias_init=self.bias_init,
            readout_init=self.readout_init,
            where=where,
        )
        check_choice(self.selection, ("validation", "test"), name="selection", where=where)
        if self.block is not None:
            check_choice(self.block, BLOCKS, name="block", where=where)
        s = dict(RECIPE_DEFAULTS[self.recipe])
        for key in s:
            if getattr(self, key) is not None:
                s[key] = getattr(self, key)
        for key in ("lr", "momentum", "weight_decay"):
            v = s[key]
            if (
                not isinstance(v, (int, float))
                or not math.isfinite(v)
                or v < 0
                or (key == "lr" and v == 0)
            ):
                raise ValueError(
                    f"{where}: {key} must be a finite number "
                    f"{'> 0' if key == 'lr' else '>= 0'}, got {v!r}"
                )
        check_positive_int(s["batch_size"], name="batch_size", where=where)
        check_positive_int(s["epochs"], name="epochs", where=where)
        if s["lr_drop"] is not None and not 0 < s["lr_drop"] <= 1:
            raise ValueError(f"{where}: lr_drop must be in (0, 1] or None, got {s['lr_drop']!r}")
        for key in ("lr_second", "lr_readout"):
            v = getattr(self, key)
            if v is not None and not (
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf
            ):
                raise ValueError(f"{where}: {key} must be a finite number > 0, got {v!r}")
        block = self.block or (
            "bottleneck" if self.recipe == "online" and self.arch == "3resnet" else "full"
        )
        if block == "bottleneck" and self.arch != "3resnet":
            raise ValueError(f"{where}: block='bottleneck' needs arch='3resnet', got {self.arch!r}")
        if self.recipe == "layerwise" and (self.arch == "2layer" or trainable != "hidden"):
            raise ValueError(
                f"{where}: recipe='layerwise' needs a 3-layer arch and trainable='hidden'"
            )
        s["block"] = block
        s["trainable"] = trainable
        names = StackedNet(self.arch, 1, 1, 1, block=block, device="meta").parameter_names(
            trainable
        )
        dp = s.pop("decay_params")
        if isinstance(dp, str) and dp == "all":
            dp = names
        elif self.decay_params is None:  # the recipe's: those of its parameters trained here
            dp = [n for n in names if n in dp]
        elif isinstance(dp, str) or not all(isinstance(n, str) and n in names for n in dp):
            raise ValueError(
                f"{where}: decay_params must be 'all' or a list of trained parameter names "
                f"(a subset of {names}), got {dp!r}"
            )
        s["decay"] = [n for n in names if n in dp]
        s["names"] = names
        s["grid"] = self._grid(s)
        s["dtype"] = resolve_dtype(self.dtype, where=where)
        return s

    def _grid(self, s: dict) -> list[tuple[float, float]]:
        grid = self.param_grid
        if grid is None:
            return [(float(s["lr"]), float(s["weight_decay"]))]
        if grid == "paper":
            grid = PAPER_GRID
        if not isinstance(grid, dict) or set(grid) - {"lr", "weight_decay"}:
            raise ValueError(
                "ResNetRegressor: param_grid must be 'paper' or a dict with keys 'lr' and/or "
                f"'weight_decay', got {grid!r}"
            )
        lrs = grid.get("lr", [s["lr"]])
        wds = grid.get("weight_decay", [s["weight_decay"]])
        for name, vals in (("lr", lrs), ("weight_decay", wds)):
            if (
                not vals
                or any(not isinstance(v, (int, float)) or v < 0 for v in vals)
                or (name == "lr" and 0 in vals)
            ):
                raise ValueError(
                    f"ResNetRegressor: param_grid[{name!r}] must be a non-empty list of "
                    f"numbers, got {vals!r}"
                )
        return [(float(a), float(b)) for a, b in itertools.product(lrs, wds)]

    # -- several seeds at once -----------------------------------------------------------------
    @staticmethod
    def fit_together(estimators, datasets):
        """Fit estimators that differ only in ``random_state`` as one stacked ensemble
        (:func:`fastkernels.learners.resnet.fit_together`)."""
        return fit_together(estimators, datasets)

    def fit_together_limit(self, n_features: int, n_outputs: int, budget_mib: float = 2048) -> int:
        """How many such estimators one joint fit may hold: their grid members' weights and
        momentum buffers (two copies of every parameter) within ``budget_mib``; at least 1."""
        s = self._settings()
        d, m, k = n_features, self.width, n_outputs
        per_member = d * m + m + m * m + m + k * m + m * (k + 1)  # an upper bound, any arch
        size = s["dtype"].itemsize
        member_mib = 2 * per_member * size / 2**20
        return max(1, int(budget_mib // (member_mib * len(s["grid"]))))

    # -- training -----------------------------------------------------------------------------
    def _train(self, s, X, Y, grid, seed) -> tuple[StackedNet, list[float]]:
        return self._train_group(s, [(X, Y)], [grid], [seed])[0]

    def _train_group(self, s, data, grids, seeds) -> list[tuple[StackedNet, list[float]]]:
        """Train one grid ensemble per (data, grid, seed) entry, all as one stacked ensemble.

        Entry j gives what training it alone would: its network is initialised from its own
        generator (seeded by ``seeds[j]``), which then draws its mini-batch orders, shared by
        the entry's grid members; members see their entry's data (same N for every entry).
        Returns (network, per-epoch loss averaged over the entry's members) per entry.
        """
        nets, gens = [], []
        for (X, _), grid, seed in zip(data, grids, seeds):
            g = torch.Generator().manual_seed(int(seed))
            nets.append(
                StackedNet(
                    self.arch,
                    X.shape[1],
                    self.width,
                    data[0][1].shape[1],
                    n_models=len(grid),
                    block=s["block"],
                    generator=g,
                    dtype=s["dtype"],
                    device=X.device,
                    second_init=self.second_init,
                    bias_init=self.bias_init,
                    readout_init=self.readout_init,
                )
            )
            gens.append(g)
        net = nets[0] if len(nets) == 1 else StackedNet.stack(nets)
        if len(data) == 1:
            X, Y = data[0]
        else:  # each member its entry's data: (E, N, d), (E, N, k)
            X = torch.cat([x.expand(len(grid), *x.shape) for (x, _), grid in zip(data, grids)])
            Y = torch.cat([y.expand(len(grid), *y.shape) for (_, y), grid in zip(data, grids)])
        names = net.parameter_names(s["trainable"])
        epochs = s["epochs"]
        if self.recipe == "layerwise":
            first = [n for n in names if n in ("W", "b1")]
            second = [n for n in names if n not in first]
            params, epochs = [first, second], [max(1, epochs // 2), max(1, epochs - epochs // 2)]
        else:
            params = names
        lrs = torch.tensor([lr for grid in grids for lr, _ in grid], dtype=torch.float64)
        lr_scale = {}
        if self.lr_second is not None:
            for n in ("U", "b2", "V"):
                lr_scale[n] = float(self.lr_second) / lrs
        # The readout's curvature grows like the width (its inputs are m non-negative ReLU
        # features), so SGD at the hidden layers' step diverges on A: its step is capped.
        readout_lr = self.lr_readout if self.lr_readout is not None else 1.0 / self.width
        lr_scale["A"] = (readout_lr / lrs).clamp(max=1.0)
        wds = torch.tensor([wd for grid in grids for _, wd in grid], dtype=torch.float64)
        decay_scale = None
        if s["decay"] != s["names"]:
            decay_scale = {n: float(n in s["decay"]) for n in names}
        history = train_sgd(
            net,
            X,
            Y,
            params=params,
            lr=lrs,
            weight_decay=wds,
            decay_scale=decay_scale,
            loss=self.loss,
            momentum=s["momentum"],
            batch_size=s["batch_size"],
            epochs=epochs,
            lr_drop=s["lr_drop"],
            lr_scale=lr_scale,
            generator=gens[0] if len(gens) == 1 else gens,
            progress=self.verbose,
            desc=f"{self.arch} ({s['trainable']})",
            per_member=True,
        )
        out, start = [], 0
        for grid in grids:
            stop = start + len(grid)
            own = net if len(nets) == 1 else net.members(range(start, stop))
            out.append((own, history[:, start:stop].mean(dim=1).tolist()))
            start = stop
        return out

    @staticmethod
    def _member_errors(net, X, Y) -> list[float]:
        with torch.no_grad():
            out = net(X)
        return [squared_error(out[e], Y) for e in range(net.n_models)]

    def fit(self, X, Y, X_select=None, Y_select=None) -> ResNetRegressor:
        """Train on X (N, d), Y (N,) or (N, k).

        A diverged fit is a result, not an error: it returns with non-finite predictions,
        ``hparams_["diverged"]`` True and a warning.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (N, d)
        Y : array-like or torch.Tensor, shape (N,) or (N, k)
        X_select, Y_select : array-like or torch.Tensor, optional
            Used only with ``selection="test"`` and a ``param_grid``.

        Returns
        -------
        ResNetRegressor
            self, fitted.

        Warns
        -----
        DivergenceWarning
            The returned network's training loss or its predictions on the training inputs are
            not finite (grid members that diverged and lost the selection do not count).
        GridEdgeWarning
            The search chose the smallest or largest ``lr`` or ``weight_decay`` of the grid.
        """
        fit_together([self], [(X, Y, X_select, Y_select)])
        return self

    def _prepare(self, X, Y, X_select, Y_select):
        """Settings and checked inputs of one fit (before any training)."""
        s = self._settings()
        X, Y = self._check_fit_input(X, Y, dtype=s["dtype"], device=self.device)
        Xs = Ys = None
        if len(s["grid"]) > 1 and self.selection == "test":
            if X_select is None or Y_select is None:
                raise ValueError(
                    "ResNetRegressor.fit: selection='test' needs X_select and Y_select"
                )
            Xs, Ys = check_xy(
                X_select,
                Y_select,
                where="ResNetRegressor.fit (X_select, Y_select)",
                dtype=X.dtype,
                device=X.device,
            )
            if Xs.shape[1] != X.shape[1] or Ys.shape[1] != Y.shape[1]:
                raise ValueError(
                    "ResNetRegressor.fit: X_select, Y_select must have the shapes of X, Y "
                    f"(n, {X.shape[1]}), (n, {Y.shape[1]}); "
                    f"got {tuple(Xs.shape)}, {tuple(Ys.shape)}"
                )
        return s, X, Y, Xs, Ys

    def _finish(self, s, X, Y, net, history, chosen, errs, own_history, extra) -> None:
        """Set the fitted attributes and status of a trained network; warn as ``fit`` says."""
        grid = s["grid"]
        hp = {
            "arch": self.arch,
            "width": self.width,
            "trainable": s["trainable"],
            "recipe": self.recipe,
            "block": s["block"],
            "epochs": s["epochs"],
            "batch_size": s["batch_size"],
            "momentum": s["momentum"],
            **extra,
        }
        self.search_results_ = []
        if len(grid) > 1:
            self.search_results_ = [
                {"lr": lr, "weight_decay": wd, "error": e} for (lr, wd), e in zip(grid, errs)
            ]
        hp.update(
            lr=chosen[0],
            weight_decay=chosen[1],
            selection=self.selection if len(grid) > 1 else "fixed",
        )
        if self.lr_second is not None:
            hp["lr_second"] = self.lr_second
        for key, default in (
            ("second_init", 1.0),
            ("bias_init", 1.0),
            ("readout_init", 1.0),
            ("loss", "sum"),
        ):
            if getattr(self, key) != default:
                hp[key] = getattr(self, key)
        if s["decay"] != s["names"]:
            hp["decay_params"] = list(s["decay"])
        if s["trainable"] != "hidden":
            readout = self.lr_readout if self.lr_readout is not None else 1.0 / self.width
            hp["lr_readout"] = min(chosen[0], readout)
        edges = []
        if len(grid) > 1:
            for name, axis, value in (("lr", 0, chosen[0]), ("weight_decay", 1, chosen[1])):
                edge = grid_edge(name, [point[axis] for point in grid], value)
                if edge is not None:
                    edges.append(edge)
        with torch.no_grad():
            finite_pred = bool(torch.isfinite(net(X)[0]).all())
        if own_history:
            final_loss = float(history[-1])
            bad = next((i + 1 for i, h in enumerate(history) if not math.isfinite(h)), None)
        else:
            final_loss = self._member_errors(net, X, Y)[0]
            bad = None
        diverged = not (math.isfinite(final_loss) and finite_pred)
        hp.update(final_loss=final_loss, diverged=diverged, grid_edge=edges)
        self.loss_history_, self.hparams_ = history, hp
        self.n_iter_ = len(history)
        self.diverged_ = diverged
        self.net_ = net  # last: its presence marks the estimator fitted
        # Kept on the estimator too (fit_messages_): a joint fit's warnings name no estimator.
        messages: list[tuple[str, type]] = []
        if edges:
            messages.append((grid_edge_message("ResNetRegressor", edges), GridEdgeWarning))
        if diverged:
            when = (
                f"the training loss first became non-finite at epoch {bad} of {len(history)}"
                if bad is not None
                else f"final training loss {final_loss:.3g}"
            )
            what = (
                "predictions are not finite"
                if not finite_pred
                else "predictions are finite but not usable"
            )
            messages.append(
                (
                    f"ResNetRegressor: training diverged ({when}) with lr={chosen[0]:g}, "
                    f"weight_decay={chosen[1]:g}; {what}. Lower lr.",
                    DivergenceWarning,
                )
            )
        self.fit_messages_ = [text for text, _ in messages]
        for text, category in messages:
            warnings.warn(text, category, stacklevel=4)

    def predict(self, X):
        """Predictions for X (n, d).

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n, d)

        Returns
        -------
        numpy.ndarray or torch.Tensor, shape (n, k), or (n,) when fitted on 1-D Y
            A tensor (on the network's device, in ``dtype``) for tensor input, else a NumPy
            array.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Called before ``fit``.
        ValueError
            X is not (n, d) with the fitted d, is empty or holds NaN or inf.
        """
        self._check_is_fitted("predict")
        X_t = self._check_predict_input(X, dtype=self.net_.A.dtype, device=self.net_.A.device)
        with torch.no_grad():
            pred = self.net_(X_t)[0]
        return self._format_output(pred, X)


def _same_configuration(estimators) -> None:
    params = [
        {k: v for k, v in est.get_params().items() if k != "random_state"} for est in estimators
    ]
    if any(p != params[0] for p in params[1:]):
        raise ValueError(
            "fit_together: the estimators must have the same parameters except random_state"
        )


def fit_together(estimators: list[ResNetRegressor], datasets) -> list[ResNetRegressor]:
    """Fit several ResNetRegressors that differ only in ``random_state`` as one ensemble.

    Each estimator ends exactly as ``est.fit(*data)`` would leave it (up to float
    reassociation): its own init, mini-batch order, validation split and data, and its own
    chosen hyperparameters, refit and status. Only the training is shared: every grid member of
    every estimator is one member of a single stacked ensemble (and the validation refits
    another), so a sweep's seeds cost one training's Python and thread overhead.

    Parameters
    ----------
    estimators : list of ResNetRegressor
        Unfitted or fitted; the same parameters except ``random_state``.
    datasets : list of tuple
        One ``(X, Y)`` or ``(X, Y, X_select, Y_select)`` per estimator, with the same N.

    Returns
    -------
    list of ResNetRegressor
        The estimators, fitted.
    """
    if len(estimators) != len(datasets) or not estimators:
        raise ValueError("fit_together: give one dataset per estimator (at least one)")
    _same_configuration(estimators)
    prepared = [
        est._prepare(*(tuple(data) + (None, None))[:4]) for est, data in zip(estimators, datasets)
    ]
    if len({tuple(p[1].shape) for p in prepared}) > 1:
        raise ValueError("fit_together: the datasets must have the same shape (N, d)")
    lead = estimators[0]
    s = prepared[0][0]
    grid = s["grid"]
    seeds = [est.random_state for est in estimators]
    results: list[dict] = [{} for _ in estimators]
    full = [(p[1], p[2]) for p in prepared]
    if len(grid) == 1:
        trained = lead._train_group(s, full, [grid] * len(seeds), seeds)
        for r, (net, history) in zip(results, trained):
            r.update(net=net, history=history, chosen=grid[0], errs=None, own=True, extra={})
    elif lead.selection == "validation":
        splits = [
            validation_split(len(p[1]), lead.validation_fraction, seed, where="ResNetRegressor.fit")
            for p, seed in zip(prepared, seeds)
        ]
        data = [(p[1][tr], p[2][tr]) for p, (tr, _) in zip(prepared, splits)]
        searched = lead._train_group(s, data, [grid] * len(seeds), seeds)
        chosen = []
        for r, p, (_, val), (net, _) in zip(results, prepared, splits, searched):
            errs = lead._member_errors(net, p[1][val], p[2][val])
            best = _argmin(errs)
            chosen.append(grid[best])
            r.update(chosen=grid[best], errs=errs, own=True, extra={"val_error": errs[best]})
        refits = lead._train_group(s, full, [[c] for c in chosen], seeds)
        for r, (net, history) in zip(results, refits):
            r.update(net=net, history=history)
    else:
        trained = lead._train_group(s, full, [grid] * len(seeds), seeds)
        for r, p, (net, history) in zip(results, prepared, trained):
            errs = lead._member_errors(net, p[3], p[4])
            best = _argmin(errs)
            r.update(
                net=net.member(best),
                history=history,
                chosen=grid[best],
                errs=errs,
                own=False,
                extra={"selection_error": errs[best]},
            )
    for est, p, r in zip(estimators, prepared, results):
        est._finish(p[0], p[1], p[2], r["net"], r["history"], r["chosen"], r["errs"], r["own"],
                    r["extra"])  # fmt: skip
    return estimators


def _argmin(errors: list[float]) -> int:
    """Index of the smallest error; NaN (a diverged member) never wins."""
    finite = [e if math.isfinite(e) else math.inf for e in errors]
    return min(range(len(finite)), key=finite.__getitem__)
