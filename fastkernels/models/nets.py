"""The paper's small ReLU networks (PAPER.md 2.1), E independent copies stacked on one axis.

Stacking lets a sweep train many seeds or learning rates in one pass: every weight has a leading
ensemble axis E and the forward pass is a batched matrix product, so E small networks cost far
fewer kernel launches and Python steps than E separate ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .._validation import check_choice, check_positive_int

ARCHS = ("3resnet", "3layer", "2layer")
BLOCKS = ("full", "bottleneck")
TRAINABLE = ("hidden", "last", "all")


@dataclass
class Layer:
    """One affine layer as seen by the NTK: its parameters and their init variances.

    ``weight`` multiplies the layer input, ``bias`` (optional) is added; ``var_weight`` and
    ``var_bias`` are the init variances used by the NTK parameterisation.
    """

    weight: str
    bias: str | None
    var_weight: float
    var_bias: float
    readout: bool = False


def check_init_scales(where: str, **scales) -> dict[str, float]:
    """The init-scale factors (``second_init``, ...) as floats; ValueError naming one that is
    not a finite number >= 0."""
    out = {}
    for name, v in scales.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
            raise ValueError(f"{where}: {name} must be a finite number >= 0, got {v!r}")
        out[name] = float(v)
    return out


@dataclass
class Tap:
    """A layer's input (E, B, fan_in) and its pre-activation output (E, B, fan_out)."""

    layer: Layer
    input: torch.Tensor
    preact: torch.Tensor


class StackedNet(nn.Module):
    """E independent ReLU networks of one architecture with stacked parameters.

    Architectures (sigma = ReLU, width m, readout A):

    - ``"3resnet"``: h1 = sigma(W x + b1), h2 = sigma(U h1 + b2), out = A (h1 + h2).
      With ``block="bottleneck"`` (the theorem's variant) the second block reads
      out1 = A h1 and a constant 1: h2 = sigma((V0 + V) [A h1; 1]), and the trained parameters are
      increments W, V that start at zero on top of random W0, V0.
    - ``"3layer"``: out = A sigma(U sigma(W x + b1) + b2).
    - ``"2layer"``: out = A sigma(W x + b1).

    Init (the paper's experiments): W ~ N(0, 1/d); U, V, A and every bias ~ N(0, 1/m). A is not
    trained unless ``trainable`` includes it. ``second_init``, ``bias_init`` and
    ``readout_init`` multiply the standard deviations of U (V0), of the biases and of A (0 starts
    them at zero); the random draws are the same whatever the factors.

    Parameters
    ----------
    arch : {"3resnet", "3layer", "2layer"}
    in_features : int
        Input dimension d.
    width : int
        Hidden width m.
    out_features : int
        Output dimension k.
    n_models : int, default 1
        Ensemble size E.
    block : {"full", "bottleneck"}
        Second block of the 3resnet (ignored by other architectures).
    generator : torch.Generator, optional
        Source of the random init (CPU generator; parameters are then moved to ``device``).
    dtype, device
        Parameter dtype and device.
    second_init, bias_init, readout_init : float, default 1.0
        Factors (>= 0) on the init standard deviation of the second block (U, or V0 of the
        bottleneck), of the biases b1, b2 and of the readout A.
    """

    def __init__(
        self,
        arch: str = "3resnet",
        in_features: int = 30,
        width: int = 256,
        out_features: int = 1,
        n_models: int = 1,
        block: str = "full",
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device=None,
        second_init: float = 1.0,
        bias_init: float = 1.0,
        readout_init: float = 1.0,
    ):
        super().__init__()
        where = "StackedNet"
        self.arch = check_choice(arch, ARCHS, name="arch", where=where)
        self.block = check_choice(block, BLOCKS, name="block", where=where)
        if self.block == "bottleneck" and self.arch != "3resnet":
            raise ValueError(f"{where}: block='bottleneck' needs arch='3resnet', got arch={arch!r}")
        d = self.in_features = check_positive_int(in_features, name="in_features", where=where)
        m = self.width = check_positive_int(width, name="width", where=where)
        k = self.out_features = check_positive_int(out_features, name="out_features", where=where)
        E = self.n_models = check_positive_int(n_models, name="n_models", where=where)

        scales = check_init_scales(
            second_init=second_init, bias_init=bias_init, readout_init=readout_init, where=where
        )

        def normal(*shape, var, scale=1.0):
            t = torch.randn(*shape, generator=generator, dtype=torch.float64)
            return (t * (math.sqrt(var) * scale)).to(dtype=dtype, device=device)

        # Draw in a fixed order so that the init depends only on the generator state.
        W0 = normal(E, m, d, var=1.0 / d)
        b1 = normal(E, m, var=1.0 / m, scale=scales["bias_init"])
        layers = []
        if self.block == "bottleneck":
            self.register_buffer("W0", W0)
            self.W = nn.Parameter(torch.zeros_like(W0))
        else:
            self.W = nn.Parameter(W0)
        self.b1 = nn.Parameter(b1)
        layers.append(Layer("W", "b1", 1.0 / d, 1.0 / m))
        if self.arch in ("3resnet", "3layer"):
            if self.block == "bottleneck":
                self.register_buffer(
                    "V0", normal(E, m, k + 1, var=1.0 / m, scale=scales["second_init"])
                )
                self.V = nn.Parameter(torch.zeros_like(self.V0))
                layers.append(Layer("V", None, 1.0 / m, 0.0))
            else:
                self.U = nn.Parameter(normal(E, m, m, var=1.0 / m, scale=scales["second_init"]))
                self.b2 = nn.Parameter(normal(E, m, var=1.0 / m, scale=scales["bias_init"]))
                layers.append(Layer("U", "b2", 1.0 / m, 1.0 / m))
        self.A = nn.Parameter(normal(E, k, m, var=1.0 / m, scale=scales["readout_init"]))
        layers.append(Layer("A", None, 1.0 / m, 0.0, readout=True))
        self.layers = layers

    def parameter_names(self, trainable: str) -> list[str]:
        """Names of the parameters in the trainable set ``"hidden"``, ``"last"`` or ``"all"``."""
        check_choice(trainable, TRAINABLE, name="trainable", where="StackedNet")
        names = []
        for layer in self.layers:
            if (trainable == "hidden" and layer.readout) or (
                trainable == "last" and not layer.readout
            ):
                continue
            names.append(layer.weight)
            if layer.bias is not None:
                names.append(layer.bias)
        return names

    def _weight(self, name: str) -> torch.Tensor:
        if self.block == "bottleneck" and name in ("W", "V"):
            return getattr(self, name + "0") + getattr(self, name)
        return getattr(self, name)

    def forward_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Tap]]:
        """Forward pass that also returns each layer's input and pre-activation.

        Parameters
        ----------
        x : torch.Tensor, shape (B, d) (shared by all members) or (E, B, d)

        Returns
        -------
        out : torch.Tensor, shape (E, B, k)
        taps : list of Tap, one per layer in ``self.layers`` order
        """
        if x.dim() not in (2, 3) or x.shape[-1] != self.in_features:
            raise ValueError(
                f"StackedNet: x must be (B, {self.in_features}) or (E, B, {self.in_features}), "
                f"got {tuple(x.shape)}"
            )
        if x.dim() == 3 and x.shape[0] != self.n_models:
            raise ValueError(
                f"StackedNet: x of shape (E, B, d) must have E = n_models = {self.n_models}, "
                f"got {tuple(x.shape)}"
            )
        if x.dim() == 2:
            x = x.expand(self.n_models, *x.shape)
        taps = []

        def affine(layer: Layer, inp: torch.Tensor) -> torch.Tensor:
            z = torch.matmul(inp, self._weight(layer.weight).transpose(-1, -2))
            if layer.bias is not None:
                z = z + getattr(self, layer.bias)[:, None, :]
            taps.append(Tap(layer, inp, z))
            return z

        L = iter(self.layers)
        h1 = torch.relu(affine(next(L), x))
        if self.arch == "2layer":
            h = h1
        elif self.block == "bottleneck":
            out1 = torch.matmul(h1, self.A.transpose(-1, -2))
            ones = torch.ones_like(out1[..., :1])
            h2 = torch.relu(affine(next(L), torch.cat([out1, ones], dim=-1)))
            h = h1 + h2
        else:
            h2 = torch.relu(affine(next(L), h1))
            h = h1 + h2 if self.arch == "3resnet" else h2
        out = affine(next(L), h)
        return out, taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs (E, B, k) for x of shape (B, d) or (E, B, d)."""
        return self.forward_taps(x)[0]

    def member(self, e: int) -> StackedNet:
        """A one-member StackedNet holding a copy of member ``e`` (parameters and buffers)."""
        if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < self.n_models:
            raise ValueError(f"StackedNet.member: e must be in [0, {self.n_models}), got {e!r}")
        return self.members(range(e, e + 1))

    def members(self, index) -> StackedNet:
        """A StackedNet holding copies of the members ``index`` (a range, slice or list of int)."""
        picked = list(range(self.n_models)[index] if isinstance(index, slice) else index)
        if not picked or any(
            isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < self.n_models
            for e in picked
        ):
            raise ValueError(
                f"StackedNet.members: index must select members in [0, {self.n_models}), "
                f"got {index!r}"
            )
        rows = torch.tensor(picked, device=self.A.device)
        return self._assembled(len(picked), lambda name: getattr(self, name)[rows])

    @staticmethod
    def stack(nets: list[StackedNet]) -> StackedNet:
        """One StackedNet whose members are copies of those of ``nets``, in order. The nets must
        agree in architecture, sizes, dtype and device."""
        first = nets[0]

        def sig(n):
            return (n.arch, n.in_features, n.width, n.out_features, n.block, n.A.dtype, n.A.device)

        if any(sig(n) != sig(first) for n in nets):
            raise ValueError("StackedNet.stack: the nets differ in architecture, size or dtype")
        return first._assembled(
            sum(n.n_models for n in nets), lambda name: torch.cat([getattr(n, name) for n in nets])
        )

    def _assembled(self, E: int, stacked) -> StackedNet:
        """A StackedNet of this one's kind with E members, each tensor ``stacked(name)``."""
        out = StackedNet(
            self.arch,
            self.in_features,
            self.width,
            self.out_features,
            n_models=E,
            block=self.block,
            dtype=self.A.dtype,
            device="meta",
        ).to_empty(device=self.A.device)
        with torch.no_grad():
            for name, t in list(out.named_parameters()) + list(out.named_buffers()):
                t.copy_(stacked(name))
        return out

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, d={self.in_features}, width={self.width}, "
            f"k={self.out_features}, n_models={self.n_models}, block={self.block!r}"
        )
