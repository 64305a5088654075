"""Finite-width empirical neural tangent kernels.

For a network made of affine layers z_l = W_l a_l + b_l, elementwise activations and residual
sums, the gradient of output r with respect to W_l at input x is the outer product
delta_{l,r}(x) a_l(x)^T, with delta_{l,r} = d out_r / d z_l. Hence

    Theta_rs(x, x') = sum_l (<a_l(x), a_l(x')> + [bias]) * <delta_{l,r}(x), delta_{l,s}(x')>,

a sum over layers of Hadamard products of two small Gram matrices. That "structured" path costs
one forward and k backward passes plus GEMMs of width-sized factors, instead of per-sample
Jacobians of size (#parameters). The generic path (torch.func Jacobians) serves any module and
is the test oracle.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from .._validation import as_float_tensor, check_choice
from ..models import StackedNet

MODES = ("trace", "full", "diagonal")
SCALINGS = ("standard", "ntk")


def ntk_factors(
    net: StackedNet,
    x: torch.Tensor,
    trainable: str = "hidden",
    scaling: str = "standard",
    member: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer factors (A_l, B_l) of the empirical NTK of one member of a StackedNet.

    Parameters
    ----------
    net : StackedNet
    x : torch.Tensor, shape (N, d)
    trainable : {"hidden", "last", "all"}
        Which parameters the tangent kernel differentiates.
    scaling : {"standard", "ntk"}
        ``"standard"``: the raw gradient inner products (the kernel that gradient descent with
        one learning rate follows). ``"ntk"``: each weight's (bias's) contribution multiplied by
        its init variance, the NTK parameterisation whose width -> infinity limit is the
        analytic NTK of :mod:`fastkernels.kernels`.
    member : int
        Ensemble member.

    Returns
    -------
    list of (A, B)
        A: (N, fan_in [+ 1 for a bias]) layer inputs, B: (N, k, fan_out) output sensitivities;
        Theta_rs(x_i, x'_j) = sum_l (A_l A'_l^T)_ij (B_l[:, r] B'_l[:, s]^T)_ij.
    """
    check_choice(scaling, SCALINGS, name="scaling", where="ntk_factors")
    names = set(net.parameter_names(trainable))
    if net.block == "bottleneck" and "A" in names:
        raise ValueError(
            "ntk_factors: with block='bottleneck' the readout A is used twice; the structured "
            "path covers trainable='hidden' only (use empirical_ntk(..., path='generic'))"
        )
    if not 0 <= member < net.n_models:
        raise ValueError(f"ntk_factors: member must be in [0, {net.n_models}), got {member}")
    with torch.enable_grad():
        # Differentiate through the input, not the parameters: every pre-activation depends on
        # x, so the graph exists even when the parameters are frozen (requires_grad=False).
        # (An inference-mode tensor cannot require grad: a normal copy of it can.)
        xg = x.clone() if x.is_inference() else x.detach()
        out, taps = net.forward_taps(xg.requires_grad_(True))
        out = out[member]
        selected = [t for t in taps if t.layer.weight in names]
        preacts = [t.preact for t in selected]
        k = out.shape[-1]
        per_output = []
        for r in range(k):
            grads = torch.autograd.grad(
                out[:, r].sum(), preacts, retain_graph=r < k - 1, allow_unused=True
            )
            per_output.append(
                [
                    torch.zeros_like(p[member]) if g is None else g[member]
                    for g, p in zip(grads, preacts)
                ]
            )
    factors = []
    for i, tap in enumerate(selected):
        layer = tap.layer
        a = tap.input[member].detach()
        if scaling == "ntk":
            a = a * layer.var_weight**0.5
        if layer.bias is not None and layer.bias in names:
            ones = torch.ones_like(a[:, :1])
            if scaling == "ntk":
                ones = ones * layer.var_bias**0.5
            a = torch.cat([a, ones], dim=1)
        b = torch.stack([per_output[r][i].detach() for r in range(k)], dim=1)
        factors.append((a, b))
    return factors


class NotStructured(Exception):
    """The structured path does not apply to a model; the message says why."""


def module_factors(
    model: nn.Module, x: torch.Tensor, params: list[str] | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer NTK factors of any module built from nn.Linear layers, via hooks.

    Forward hooks record each selected nn.Linear's input and output; k backward passes give the
    output sensitivities. Activations, residual sums and any other parameter-free per-sample
    operations in between are handled by autograd.

    Parameters
    ----------
    model : nn.Module
        Maps (N, d) to (N, k) or (N,), each output row depending on its input row only.
    x : torch.Tensor, shape (N, d)
    params : list of str, optional
        Parameter names to differentiate (default: every parameter with requires_grad).

    Returns
    -------
    list of (A, B) as in :func:`ntk_factors`.

    Raises
    ------
    NotStructured
        A selected parameter is not the weight or bias of an nn.Linear, a Linear is called more
        than once or on non-2-D input.
    """
    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if params is None else list(params)
    missing = [n for n in names if n not in named]
    if missing:
        raise ValueError(
            f"empirical_ntk: params {missing} are not parameters of the model; "
            f"available: {sorted(named)}"
        )
    linears = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            prefix = f"{mod_name}." if mod_name else ""
            w, b = f"{prefix}weight", f"{prefix}bias"
            use_w, use_b = w in names, b in names
            if use_w or use_b:
                linears[mod_name] = (mod, use_w, use_b)
    covered = {
        f"{m}.{s}" if m else s
        for m, (_, uw, ub) in linears.items()
        for s, u in (("weight", uw), ("bias", ub))
        if u
    }
    foreign = [n for n in names if n not in covered]
    if foreign:
        raise NotStructured(f"parameters {foreign} are not weights or biases of nn.Linear layers")
    if not linears:
        raise NotStructured("no nn.Linear parameter is selected")
    records: dict[str, list] = {name: [] for name in linears}

    def hook(name):
        def fn(_mod, inputs, output):
            records[name].append((inputs[0], output))

        return fn

    handles = [mod.register_forward_hook(hook(name)) for name, (mod, _, _) in linears.items()]
    try:
        with torch.enable_grad():
            xg = x.clone() if x.is_inference() else x.detach()
            out = model(xg.requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
    for name, rec in records.items():
        if len(rec) != 1:
            raise NotStructured(f"nn.Linear {name!r} ran {len(rec)} times in one forward pass")
        if rec[0][0].dim() != 2:
            raise NotStructured(
                f"nn.Linear {name!r} got input of shape {tuple(rec[0][0].shape)}; the "
                "structured path needs one vector per sample"
            )
    if out.dim() == 1:
        out = out[:, None]
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise NotStructured(f"the model output has shape {tuple(out.shape)}, not (N, k)")
    zs = [records[name][0][1] for name in linears]
    k = out.shape[1]
    per_output = []
    for r in range(k):
        grads = torch.autograd.grad(out[:, r].sum(), zs, retain_graph=r < k - 1, allow_unused=True)
        per_output.append([torch.zeros_like(z) if g is None else g for g, z in zip(grads, zs)])
    factors = []
    for i, (name, (_mod, use_w, use_b)) in enumerate(linears.items()):
        inp = records[name][0][0].detach()
        cols = ([inp] if use_w else []) + ([torch.ones_like(inp[:, :1])] if use_b else [])
        a = torch.cat(cols, dim=1)
        b = torch.stack([per_output[r][i].detach() for r in range(k)], dim=1)
        factors.append((a, b))
    return factors


def ntk_from_factors(f1, f2, mode: str = "trace") -> torch.Tensor:
    """Contract factor lists into an NTK block.

    Returns (N, M) for ``"trace"`` (sum over outputs), (N, M, k) for ``"diagonal"`` and
    (N, M, k, k) for ``"full"``.
    """
    check_choice(mode, MODES, name="mode", where="ntk_from_factors")
    if mode == "trace":
        from ..ops.ntk_gram import ntk_gram

        a1, b1 = [a for a, _ in f1], [b.flatten(1) for _, b in f1]
        # The very same tensors on both sides when f2 is f1: ntk_gram then sees a symmetric
        # kernel and computes half of it.
        a2, b2 = (a1, b1) if f2 is f1 else ([a for a, _ in f2], [b.flatten(1) for _, b in f2])
        return ntk_gram(a1, b1, a2, b2)
    out = None
    for (a1, b1), (a2, b2) in zip(f1, f2):
        ga = a1 @ a2.T
        if mode == "diagonal":
            term = ga[:, :, None] * torch.einsum("irp,jrp->ijr", b1, b2)
        else:
            term = ga[:, :, None, None] * torch.einsum("irp,jsp->ijrs", b1, b2)
        out = term if out is None else out + term
    return out


def _generic_ntk(fn: Callable, params: dict, x1, x2, mode: str, chunk: int) -> torch.Tensor:
    """torch.func Jacobian contraction; ``fn(params, x) -> (B, k)``."""
    from torch.func import jacrev, vmap

    def single(p, x):
        return fn(p, x[None])[0]

    jac = vmap(jacrev(single), in_dims=(None, 0))

    def jacobians(x):
        parts = []
        for s in range(0, len(x), chunk):
            J = jac(params, x[s : s + chunk])
            parts.append(torch.cat([j.flatten(2) for j in J.values()], dim=2))  # (B, k, P)
        return torch.cat(parts)

    J1 = jacobians(x1)
    J2 = J1 if x2 is x1 else jacobians(x2)
    if mode == "trace":
        return torch.einsum("irp,jrp->ij", J1, J2)
    if mode == "diagonal":
        return torch.einsum("irp,jrp->ijr", J1, J2)
    return torch.einsum("irp,jsp->ijrs", J1, J2)


def empirical_ntk(
    model: nn.Module,
    x1,
    x2=None,
    *,
    mode: str = "trace",
    trainable: str = "hidden",
    params: list[str] | None = None,
    scaling: str = "standard",
    path: str = "auto",
    member: int = 0,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Empirical NTK of ``model`` at its current parameters between x1 and x2.

    Parameters
    ----------
    model : StackedNet or nn.Module
        A StackedNet (structured path) or any module mapping (B, d) to (B, k) (generic path).
    x1 : torch.Tensor, shape (N, d)
    x2 : torch.Tensor, shape (M, d), optional (default x1)
    mode : {"trace", "full", "diagonal"}
        Sum over outputs (N, M); every output pair (N, M, k, k); matching outputs (N, M, k).
    trainable : {"hidden", "last", "all"}
        Parameter set of a StackedNet.
    params : list of str, optional
        For a generic module: names of the parameters to differentiate (default all).
    scaling : {"standard", "ntk"}
        See :func:`ntk_factors` (StackedNet only).
    path : {"auto", "structured", "generic"}
    member : int
        Ensemble member of a StackedNet.
    chunk_size : int
        Samples per Jacobian chunk on the generic path.

    Returns
    -------
    torch.Tensor
        The kernel block, dtype of the model.
    """
    where = "empirical_ntk"
    check_choice(mode, MODES, name="mode", where=where)
    check_choice(path, ("auto", "structured", "generic"), name="path", where=where)
    check_choice(scaling, SCALINGS, name="scaling", where=where)
    if isinstance(model, StackedNet):
        if (
            isinstance(member, bool)
            or not isinstance(member, int)
            or not 0 <= member < model.n_models
        ):
            raise ValueError(f"{where}: member must be in [0, {model.n_models}), got {member!r}")
    elif scaling != "standard":
        raise ValueError(f"{where}: scaling='ntk' needs a StackedNet (init variances are known)")
    x1 = as_float_tensor(x1, name="x1", where=where, dtype=next(model.parameters()).dtype)
    same = x2 is None or x2 is x1
    x2 = x1 if same else as_float_tensor(x2, name="x2", where=where, dtype=x1.dtype)
    d = getattr(model, "in_features", None)
    if d is not None:
        for name, x in (("x1", x1), ("x2", x2)):
            if x.shape[1] != d:
                raise ValueError(f"{where}: {name} must have {d} features, got {x.shape[1]}")
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"{where}: x1 and x2 must have the same number of features")
    if isinstance(model, StackedNet):
        structured_ok = not (
            model.block == "bottleneck" and "A" in model.parameter_names(trainable)
        )
        if path == "structured" and not structured_ok:
            raise ValueError(
                f"{where}: the structured path does not cover a bottleneck StackedNet whose "
                "readout A is trained (A is used twice); use path='generic'"
            )
        if path in ("auto", "structured") and structured_ok:
            f1 = ntk_factors(model, x1, trainable, scaling, member)
            f2 = f1 if same else ntk_factors(model, x2, trainable, scaling, member)
            return ntk_from_factors(f1, f2, mode)
        if scaling != "standard":
            raise ValueError(f"{where}: scaling='ntk' is available on the structured path only")
        names = model.parameter_names(trainable)
        full = dict(model.named_parameters()) | dict(model.named_buffers())
        theta = {n: full[n][member : member + 1].detach() for n in names}
        rest = {n: t[member : member + 1].detach() for n, t in full.items() if n not in theta}
        view = model.member(member)

        def fn(p, x):
            return torch.func.functional_call(view, {**rest, **p}, (x,))[0]

        return _generic_ntk(fn, theta, x1, x2, mode, chunk_size)

    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.training:
            # Samples interact through batch statistics: no per-sample tangent kernel exists.
            raise ValueError(
                f"{where}: BatchNorm {mod_name!r} is in training mode, so samples interact; "
                "call model.eval() first"
            )
    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if params is None else list(params)
    missing = [n for n in names if n not in named]
    if missing:
        raise ValueError(
            f"{where}: params {missing} are not parameters of the model; available: {sorted(named)}"
        )
    if path in ("auto", "structured"):
        try:
            f1 = _call_model(module_factors, model, x1, names, "x1")
            f2 = f1 if same else _call_model(module_factors, model, x2, names, "x2")
            return ntk_from_factors(f1, f2, mode)
        except NotStructured as exc:
            if path == "structured":
                raise ValueError(f"{where}: the structured path does not apply: {exc}") from None
            warnings.warn(
                f"{where}: falling back to the generic torch.func path (memory grows with "
                f"samples x parameters): {exc}",
                UserWarning,
                stacklevel=2,
            )
    theta = {n: named[n].detach() for n in names}

    def fn(p, x):
        return torch.func.functional_call(model, p, (x,), strict=False)

    return _generic_ntk(fn, theta, x1, x2, mode, chunk_size)


def _call_model(fn, model, x, names, arg):
    """Run ``fn(model, x, names)``, turning a shape error inside the model into a clear one."""
    try:
        return fn(model, x, names)
    except RuntimeError as exc:
        if "shape" in str(exc) or "size" in str(exc):
            raise ValueError(
                f"empirical_ntk: {arg} of shape {tuple(x.shape)} does not fit the model: "
                f"{' '.join(str(exc).split())}"
            ) from None
        raise
