"""The Quicksilver network: patch-wise prediction of the LDDMM initial momentum.

Architecture (Yang et al. 2017, layer order as in the original code,
rkwitt/quicksilver ``prediction_network.py``), ``F = features``:

* two encoders, one for the moving and one for the target patch, not
  sharing weights; each has two levels. A level ``(c_in -> c)`` is::

      conv3^3(c_in->c) PReLU drop, conv3^3(c->c) PReLU drop,
      conv3^3(c->c) PReLU drop, conv2^3 stride 2 pad 1 (c->c) PReLU

  (the strided convolution downsamples, 15 -> 8 -> 5 voxels); level 1 is
  ``1 -> F``, level 2 is ``F -> 2F``.
* the two encodings are concatenated (``4F`` channels at ``5^3``).
* three decoders, one per momentum component (``i, j, k``), each of two
  levels ``(c_in -> c_out)``::

      convT(c_in->c_in, stride 2) PReLU, conv3^3 PReLU drop, conv3^3 PReLU drop,
      conv3^3(c_in->c_out) [PReLU drop, except in the last level]

  level 1 is ``4F -> 2F`` (kernel 2, 5 -> 8 voxels), level 2 is ``2F -> 1``
  (kernel 3, 8 -> 15 voxels). The outputs are concatenated to ``(N, 3, p, p, p)``.

All PReLUs have a single slope. Weights are He-initialised for PReLU
(:meth:`QuicksilverNet.reset_parameters`), unlike the original code, which
kept torch's default; with the default the untrained net barely sees its input. Dropout (``drop``) is element-wise with
probability ``dropout``; with ``dropout = 0`` there is none (the original
deterministic network). Any odd patch size ``>= 5`` works (15 is the paper's).

Normalisation (the same at training and prediction):

* input ``x`` ``(N, 2, p, p, p)``: channel 0 the moving patch, 1 the target
  patch, intensities as produced by the pre-processing (per image in
  ``[0, 1]``), not rescaled here;
* output: the momentum times ``momentum_scale`` (stored in the model file's
  metadata; training sets it to ``1 / mean |m0|`` of the training patches),
  so ``m0 = net(x) / momentum_scale``. Components along voxel axes ``i, j, k``.

A second, CPU-sized architecture, :class:`DilatedNet` (``architecture:
dilated``), is not the paper's: early fusion of the two patches, five
full-resolution 3^3 convolutions with dilations 1, 1, 2, 4, 1 (receptive
field 19 voxels), no down-sampling. On the demo's CPU budget (a few thousand
Adam steps) it learns where the encoder-decoder does not
(``docs/learning.md``: validation L1 of the velocity 0.80 of the zero field's
after 3000 steps, against 1.00 for the encoder-decoder).
:class:`MatchDilatedNet` (``architecture: dilated-match``) is the same
network fed with :func:`match_features`: the two patches, their difference,
their gradients and the difference times each gradient (the direction of
LDDMM's first step), products that convolutions and PReLUs would otherwise
have to approximate over several layers; it learns faster per step.
:data:`ARCHITECTURES` maps the config's names to the classes; the model
file records the class's ``ARCHITECTURE`` string.

MC dropout: :func:`enable_mc_dropout` keeps dropout active in ``eval()``
mode, so repeated forward passes sample the predictive distribution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MCDropout(nn.Dropout):
    """Element-wise dropout that also acts in eval mode while ``mc`` is set."""

    def __init__(self, p: float):
        super().__init__(p)
        self.mc = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, self.training or self.mc, self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, mc={self.mc}"


def _drop(p: float) -> nn.Module:
    return MCDropout(p) if p > 0 else nn.Identity()


def _conv(c_in: int, c_out: int) -> nn.Conv3d:
    return nn.Conv3d(c_in, c_out, kernel_size=3, stride=1, padding=1)


class EncoderLevel(nn.Module):
    """Three 3^3 convolutions then a strided 2^3 convolution (halves the size, rounding up)."""

    def __init__(self, c_in: int, c_out: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            _conv(c_in, c_out), nn.PReLU(), _drop(dropout),
            _conv(c_out, c_out), nn.PReLU(), _drop(dropout),
            _conv(c_out, c_out), nn.PReLU(), _drop(dropout),
            nn.Conv3d(c_out, c_out, kernel_size=2, stride=2, padding=1), nn.PReLU(),
        )

    def forward(self, x):
        return self.body(x)


class DecoderLevel(nn.Module):
    """A stride-2 transposed convolution then three 3^3 convolutions."""

    def __init__(self, c_in: int, c_out: int, kernel: int, output_padding: int, dropout: float, last: bool):
        super().__init__()
        layers = [
            nn.ConvTranspose3d(c_in, c_in, kernel_size=kernel, stride=2, padding=1, output_padding=output_padding),
            nn.PReLU(),
            _conv(c_in, c_in), nn.PReLU(), _drop(dropout),
            _conv(c_in, c_in), nn.PReLU(), _drop(dropout),
            _conv(c_in, c_out),
        ]
        if not last:
            layers += [nn.PReLU(), _drop(dropout)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


def level_sizes(patch: int) -> tuple[int, int]:
    """Spatial sizes after the first and second encoder level (15 -> 8, 5)."""
    a = patch // 2 + 1
    return a, a // 2 + 1


def _check_settings(name: str, features: int, dropout: float, patch: int) -> None:
    if features < 1:
        raise ValueError(f"{name}: features must be >= 1, got {features}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout}")
    if patch < 5 or patch % 2 == 0:
        raise ValueError(f"{name}: patch must be odd and >= 5, got {patch}")


def _check_input(name: str, x: torch.Tensor, p: int) -> None:
    if x.ndim != 5 or x.shape[1] != 2 or tuple(x.shape[2:]) != (p, p, p):
        raise ValueError(f"{name}: input must be (N, 2, {p}, {p}, {p}), got {tuple(x.shape)}")


def _he_init(model: nn.Module) -> None:
    """He initialisation for PReLU (slope 0.25), biases 0.

    Keeps the signal variance roughly constant through deep stacks of
    convolutions; torch's default (uniform, variance 1/(3 fan_in)) shrinks it
    about five-fold per layer, leaving the untrained net almost blind to its
    input. For a transposed convolution the fan-in of an output voxel is
    ``c_in k^3 / stride^3`` on average.
    """
    gain = math.sqrt(2.0 / (1.0 + 0.25**2))
    for m in model.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            k = math.prod(m.kernel_size)
            if isinstance(m, nn.ConvTranspose3d):
                fan_in = m.in_channels * k / math.prod(m.stride)
            else:
                fan_in = m.in_channels * k
            nn.init.normal_(m.weight, 0.0, gain / math.sqrt(fan_in))
            nn.init.zeros_(m.bias)


class QuicksilverNet(nn.Module):
    """Two encoders (moving, target), three decoders (momentum components).

    ``forward(x)``: ``x`` ``(N, 2, p, p, p)`` -> scaled momentum ``(N, 3, p, p, p)``.
    """

    ARCHITECTURE = "quicksilver-2017"

    def __init__(self, features: int = 64, dropout: float = 0.2, patch: int = 15):
        super().__init__()
        _check_settings("QuicksilverNet", features, dropout, patch)
        self.features, self.dropout, self.patch = int(features), float(dropout), int(patch)
        a, b = level_sizes(patch)
        pad1 = a - (2 * b - 2)  # kernel 2: 2(b-1) - 2 + 2 (+ pad1) = a
        f = self.features
        self.encoder_moving = nn.Sequential(EncoderLevel(1, f, dropout), EncoderLevel(f, 2 * f, dropout))
        self.encoder_target = nn.Sequential(EncoderLevel(1, f, dropout), EncoderLevel(f, 2 * f, dropout))
        self.decoders = nn.ModuleList(
            nn.Sequential(
                DecoderLevel(4 * f, 2 * f, kernel=2, output_padding=pad1, dropout=dropout, last=False),
                DecoderLevel(2 * f, 1, kernel=3, output_padding=0, dropout=dropout, last=True),  # 2(a-1)-2+3 = p
            )
            for _ in range(3)
        )

        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation (:func:`_he_init`); unlike the original code, which kept torch's default."""
        _he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input("QuicksilverNet", x, self.patch)
        code = torch.cat((self.encoder_moving(x[:, :1]), self.encoder_target(x[:, 1:])), dim=1)
        return torch.cat([dec(code) for dec in self.decoders], dim=1)


class DilatedNet(nn.Module):
    """Early fusion, five full-resolution dilated 3^3 convolutions (CPU-sized; not the paper's).

    ``conv(C->F) PReLU drop, conv(F->F) PReLU drop, conv dil 2 PReLU drop,
    conv dil 4 PReLU drop, conv(F->3)``, ``F = features``, padding keeps the
    patch size; ``C`` = 2, the two patches. ``forward(x)``: ``x``
    ``(N, 2, p, p, p)`` (moving, target) -> the scaled field
    ``(N, 3, p, p, p)``, the same contract as :class:`QuicksilverNet`.
    """

    ARCHITECTURE = "dilated-cnn"
    DILATIONS = (1, 1, 2, 4)
    IN_CHANNELS = 2

    def __init__(self, features: int = 16, dropout: float = 0.2, patch: int = 15):
        super().__init__()
        _check_settings(type(self).__name__, features, dropout, patch)
        self.features, self.dropout, self.patch = int(features), float(dropout), int(patch)
        f, layers, c_in = self.features, [], self.IN_CHANNELS
        for d in self.DILATIONS:
            layers += [nn.Conv3d(c_in, f, kernel_size=3, padding=d, dilation=d), nn.PReLU(), _drop(self.dropout)]
            c_in = f
        layers.append(nn.Conv3d(f, 3, kernel_size=3, padding=1))
        self.body = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation (:func:`_he_init`)."""
        _he_init(self)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The first convolution's input channels: the two patches as they are."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(type(self).__name__, x, self.patch)
        return self.body(self.inputs(x))


def image_gradient(x: torch.Tensor) -> torch.Tensor:
    """Central-difference gradient of ``(N, 1, I, J, K)`` images: ``(N, 3, I, J, K)``, intensity per voxel.

    Components along the voxel axes ``i, j, k``; the border is replicated
    (one-sided halves there), so the output keeps the patch size.
    """
    xp = F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate")
    return 0.5 * torch.cat([xp[:, :, 2:, 1:-1, 1:-1] - xp[:, :, :-2, 1:-1, 1:-1],
                            xp[:, :, 1:-1, 2:, 1:-1] - xp[:, :, 1:-1, :-2, 1:-1],
                            xp[:, :, 1:-1, 1:-1, 2:] - xp[:, :, 1:-1, 1:-1, :-2]], dim=1)


def match_features(x: torch.Tensor) -> torch.Tensor:
    """The two patches ``(N, 2, p, p, p)`` and the image-match terms of LDDMM's first step: ``(N, 15, p, p, p)``.

    Channels: moving ``I0``, target ``I1``, ``d = I1 - I0``, ``grad I0``,
    ``grad I1`` (:func:`image_gradient`, per voxel), ``d grad I0``,
    ``d grad I1``. ``d grad I`` is the direction of the SSD data term's
    gradient (the momentum of LDDMM's first step is proportional to it); a
    network of convolutions and PReLUs can only approximate such products
    over several layers, which a CPU budget cannot afford.
    """
    mov, tgt = x[:, :1], x[:, 1:2]
    d = tgt - mov
    g_mov, g_tgt = image_gradient(mov), image_gradient(tgt)
    return torch.cat([x, d, g_mov, g_tgt, d * g_mov, d * g_tgt], dim=1)


class MatchDilatedNet(DilatedNet):
    """:class:`DilatedNet` fed with :func:`match_features` (15 channels) instead of the two patches alone.

    The same contract (``(N, 2, p, p, p)`` in, ``(N, 3, p, p, p)`` out) and
    layers; only the first convolution sees the 15 channels. On the demo it
    learns faster per Adam step (``docs/learning.md``).
    """

    ARCHITECTURE = "dilated-match-cnn"
    IN_CHANNELS = 15

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return match_features(x)


#: config / CLI name -> network class (its ``ARCHITECTURE`` string goes into the model file)
ARCHITECTURES = {"quicksilver": QuicksilverNet, "dilated": DilatedNet, "dilated-match": MatchDilatedNet}


def network_class(name: str) -> type[nn.Module]:
    """The class of a config name (``quicksilver``, ``dilated``) or of a model file's ``architecture`` string."""
    for key, cls in ARCHITECTURES.items():
        if name in (key, cls.ARCHITECTURE):
            return cls
    names = ", ".join(f"{k} ({c.ARCHITECTURE})" for k, c in ARCHITECTURES.items())
    raise ValueError(f"unknown network architecture {name!r}; known: {names}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def has_mc_dropout(model: nn.Module) -> bool:
    """Whether the model has dropout layers (trained with ``dropout > 0``), i.e. can be MC-dropout sampled."""
    return any(isinstance(m, MCDropout) for m in model.modules())


def enable_mc_dropout(model: nn.Module, enabled: bool = True) -> int:
    """Switch MC dropout on (or off) in every dropout layer; returns their number.

    With MC dropout on, dropout acts even in ``eval()`` mode, so each forward
    pass is one sample. Raises ``ValueError`` for a model without dropout
    (trained with ``dropout = 0``): its samples would all be equal.
    """
    layers = [m for m in model.modules() if isinstance(m, MCDropout)]
    if enabled and not layers:
        raise ValueError("enable_mc_dropout: the model has no dropout layers (trained with dropout 0); "
                         "MC-dropout sampling needs a model trained with dropout > 0")
    for m in layers:
        m.mc = bool(enabled)
    return len(layers)
