"""Surrogate networks: a registry of 2-D backbones (FNO, U-Net) behind one model class.

Conventions:

* Tensors are ``(batch, channel, y, x)``; the voxel maps are periodic (campaign
  cells are periodic), so the U-Net pads circularly and the FNO's Fourier basis
  is periodic by construction.
* A backbone maps ``(B, C_in, ny, nx)`` to hidden features ``(B, width, ny, nx)``;
  :class:`Surrogate` adds the normalisers, the regression head (16 channels:
  stress, strain, lattice rotation, total slip) and the slip-system head.
* Every statistic is a buffer, so it travels in ``state_dict``; every init
  argument is a plain type, stored in checkpoints as ``kwargs``.

Why our own FNO rather than the ``neuraloperator`` package: the layer is 40 lines
over ``torch.fft``, we need 2-D periodic maps only, and owning it keeps
checkpoints plain (``torch.load(weights_only=True)``) and the dependency set of a
training node small. The FNO applies to any grid (its spectral weights act on
the lowest ``modes`` frequencies, which every grid of at least ``2 modes`` voxels
per side has), so one model serves several resolutions.

References:
    Z. Li et al., Fourier neural operator for parametric PDEs, ICLR 2021.
    O. Ronneberger et al., U-Net, MICCAI 2015.
    J. R. Mianroodi, N. H. Siboni, D. Raabe, npj Comput. Mater. 7 (2021) 99.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from solver.errors import ConfigError

from . import features


class Normaliser(nn.Module):
    """Per-channel affine normalisation ``(x - mean) / std`` with statistics as buffers.

    Args:
        n: number of channels.
        channel_dim: the channel axis of the tensors it is applied to.
    """

    def __init__(self, n: int, channel_dim: int = 1):
        super().__init__()
        self.channel_dim = channel_dim
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))

    def set(self, mean, std) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=self.mean.dtype))
        self.std.copy_(torch.as_tensor(std, dtype=self.std.dtype))

    def _shape(self, x: torch.Tensor) -> list[int]:
        shape = [1] * x.dim()
        shape[self.channel_dim] = -1
        return shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.view(self._shape(x))) / self.std.view(self._shape(x))

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.view(self._shape(x)) + self.mean.view(self._shape(x))


# ------------------------------------------------------------------------ FNO

class SpectralConv2d(nn.Module):
    """Fourier layer: multiply the lowest ``modes`` frequencies by learned complex weights."""

    def __init__(self, channels: int, modes: int):
        super().__init__()
        self.modes = modes
        scale = 1.0 / channels
        # frequencies ky in [0, modes) and [-modes, 0); kx in [0, modes) (real FFT along x)
        self.weight_pos = nn.Parameter(scale * torch.randn(channels, channels, modes, modes, 2))
        self.weight_neg = nn.Parameter(scale * torch.randn(channels, channels, modes, modes, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, ny, nx = x.shape
        xf = torch.fft.rfft2(x.float(), norm="ortho")
        my = min(self.modes, ny // 2)
        mx = min(self.modes, nx // 2 + 1)
        out = torch.zeros_like(xf)
        wp = torch.view_as_complex(self.weight_pos[:, :, :my, :mx].contiguous())
        wn = torch.view_as_complex(self.weight_neg[:, :, :my, :mx].contiguous())
        out[:, :, :my, :mx] = torch.einsum("bixy,ioxy->boxy", xf[:, :, :my, :mx], wp)
        out[:, :, ny - my:, :mx] = torch.einsum("bixy,ioxy->boxy", xf[:, :, ny - my:, :mx], wn)
        return torch.fft.irfft2(out, s=(ny, nx), norm="ortho").to(x.dtype)


class FNO2d(nn.Module):
    """Fourier neural operator on periodic 2-D maps.

    Args:
        in_channels: input channels; width: hidden channels; modes: Fourier modes kept
            per direction; layers: Fourier layers.
    """

    def __init__(self, in_channels: int, width: int = 32, modes: int = 12, layers: int = 4):
        super().__init__()
        self.width = width
        self.lift = nn.Conv2d(in_channels, width, 1)
        self.spectral = nn.ModuleList(SpectralConv2d(width, modes) for _ in range(layers))
        self.local = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(layers))
        # depthwise: per-channel 3x3 stencils; the 1x1 "local" convolution mixes channels
        self.mix = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, padding_mode="circular", groups=width)
                                 for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # no position channels: a periodic cell has no preferred place, so the map is translation-equivariant
        h = self.lift(x)
        for spectral, local, mix in zip(self.spectral, self.local, self.mix):
            # the 3x3 (periodic, depthwise) convolution carries the sharp grain-boundary contrasts that a
            # truncated Fourier series smooths out; it acts on voxel neighbours at any resolution
            h = F.gelu(spectral(h) + local(h) + mix(h))
        return h


# ------------------------------------------------------------------------ U-Net

class _Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, padding_mode="circular"), nn.GroupNorm(min(8, cout), cout), nn.GELU(),
            nn.Conv2d(cout, cout, 3, padding=1, padding_mode="circular"), nn.GroupNorm(min(8, cout), cout), nn.GELU())

    def forward(self, x):
        return self.net(x)


class UNet2d(nn.Module):
    """U-Net with periodic padding.

    Args:
        in_channels: input channels; width: channels at the finest level (doubled per
            level); depth: number of 2x down-samplings (the map sides must divide by ``2**depth``).
    """

    def __init__(self, in_channels: int, width: int = 24, depth: int = 3):
        super().__init__()
        self.width = width
        self.depth = depth
        chans = [width * 2 ** k for k in range(depth + 1)]
        self.down = nn.ModuleList([_Block(in_channels, chans[0])] +
                                  [_Block(chans[k - 1], chans[k]) for k in range(1, depth + 1)])
        self.up = nn.ModuleList(nn.ConvTranspose2d(chans[k], chans[k - 1], 2, stride=2) for k in range(depth, 0, -1))
        self.merge = nn.ModuleList(_Block(2 * chans[k - 1], chans[k - 1]) for k in range(depth, 0, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = 2 ** self.depth
        if x.shape[-1] % n or x.shape[-2] % n:
            raise ConfigError(f"the U-Net of depth {self.depth} needs map sides divisible by {n}, "
                              f"got {tuple(x.shape[-2:])}; use the FNO for other grids")
        skips = []
        h = x
        for k, block in enumerate(self.down):
            h = block(h if k == 0 else F.avg_pool2d(h, 2))
            skips.append(h)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            h = merge(torch.cat([up(h), skip], dim=1))
        return h


BACKBONES: dict[str, type[nn.Module]] = {"fno": FNO2d, "unet": UNet2d}


# ------------------------------------------------------------------------ heads and the model

class SlipSystemHead(nn.Module):
    """Dominant-slip-system logits, equivariant under relabelling of the systems.

    The score of system ``s`` is one shared small network of the voxel's hidden
    features and that system's own Schmid factor magnitude ``|m_s|``, so the
    symmetric equivalents of an orientation (which permute the systems, and
    flip the signs of some Schmid factors, since a system's slip direction is
    defined up to sign) get the same answer, relabelled.
    """

    def __init__(self, width: int, hidden: int = 16):
        super().__init__()
        self.features = nn.Conv2d(width, hidden, 1)
        self.schmid = nn.Parameter(torch.randn(hidden, 2) * 0.5)  # acts on (|m|, m^2)
        self.out = nn.Parameter(torch.randn(hidden) / hidden ** 0.5)

    def forward(self, h: torch.Tensor, schmid: torch.Tensor) -> torch.Tensor:
        a = self.features(h)[:, None]  # (B, 1, K, y, x)
        m = torch.stack([schmid.abs(), schmid.square()], dim=2)  # (B, ns, 2, y, x); signs carry no meaning
        z = F.gelu(a + torch.einsum("kc,bscyx->bskyx", self.schmid, m))
        return torch.einsum("bskyx,k->bsyx", z, self.out)  # (B, ns, y, x)


class Surrogate(nn.Module):
    """Per-voxel response of a 2-D polycrystal map under a load.

    Args:
        backbone: a key of :data:`BACKBONES`.
        n_fields: per-voxel input channels (:func:`surrogate.features.n_field_channels`).
        n_condition: load-condition channels; n_slip: slip systems.
        backbone_kwargs: plain-type arguments of the backbone.
        slip_hidden: hidden width of the slip-system head.
        n_coarse: 0, or 16 for a low-resolution correction (:mod:`surrogate.correction`):
            the last 16 input channels are a coarse solve's targets on the fine
            grid (physical units) and the network predicts the correction to them.

    ``forward`` takes the *physical* inputs and returns normalised predictions
    (``values`` ``(B, 16, y, x)`` in target-normaliser units, ``slip_logits``
    ``(B, ns, y, x)``); :meth:`physical` maps ``values`` back to SI units.
    """

    def __init__(self, backbone: str = "fno", n_fields: int = 30, n_condition: int = features.N_CONDITION,
                 n_slip: int = 12, backbone_kwargs: dict | None = None, slip_hidden: int = 16, n_coarse: int = 0):
        super().__init__()
        if backbone not in BACKBONES:
            raise ConfigError(f"model '{backbone}' is unknown; known: {', '.join(BACKBONES)}")
        if n_coarse not in (0, features.N_TARGETS):
            raise ConfigError(f"n_coarse must be 0 or {features.N_TARGETS} (the target channels), got {n_coarse}")
        self.kwargs = {"backbone": backbone, "n_fields": n_fields, "n_condition": n_condition,
                       "n_slip": n_slip, "backbone_kwargs": dict(backbone_kwargs or {}), "slip_hidden": slip_hidden}
        if n_coarse:  # only when used: checkpoints of plain surrogates keep their kwargs
            self.kwargs["n_coarse"] = n_coarse
        self.n_coarse = n_coarse
        self.field_norm = Normaliser(n_fields)
        self.condition_norm = Normaliser(n_condition, channel_dim=1)
        self.target_norm = Normaliser(features.N_TARGETS)
        try:
            self.backbone = BACKBONES[backbone](n_fields + n_condition, **self.kwargs["backbone_kwargs"])
        except TypeError as exc:
            raise ConfigError(f"model '{backbone}': bad arguments {self.kwargs['backbone_kwargs']} ({exc})") from None
        width = self.backbone.width
        self.head = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.GELU(), nn.Conv2d(2 * width, features.N_TARGETS, 1))
        if n_coarse:  # a correction starts as the plain (upsampled) coarse solve and learns from there
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)
        self.slip_head = SlipSystemHead(width, slip_hidden)

    def set_statistics(self, stats: dict) -> None:
        """Load normaliser statistics (see :func:`surrogate.data.channel_statistics`)."""
        self.field_norm.set(stats["fields_mean"], stats["fields_std"])
        self.condition_norm.set(stats["condition_mean"], stats["condition_std"])
        self.target_norm.set(stats["target_mean"], stats["target_std"])

    def forward(self, fields: torch.Tensor, condition: torch.Tensor, schmid: torch.Tensor):
        c = self.condition_norm(condition)[:, :, None, None].expand(-1, -1, *fields.shape[-2:])
        h = self.backbone(torch.cat([self.field_norm(fields), c], dim=1))
        values = self.head(h)
        if self.n_coarse:  # a low-resolution correction: learn fine minus (upsampled) coarse
            values = values + self.target_norm(fields[:, -self.n_coarse:])
        return {"values": values, "slip_logits": self.slip_head(h, schmid)}

    def physical(self, values: torch.Tensor) -> torch.Tensor:
        """Normalised ``values`` -> SI units (Pa, 1, rad, 1)."""
        return self.target_norm.inverse(values)


def build_model(kwargs: dict) -> Surrogate:
    """A :class:`Surrogate` from its plain-type ``kwargs`` (as stored in checkpoints)."""
    return Surrogate(**kwargs)
