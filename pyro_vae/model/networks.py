"""Encoder and decoder networks.

Protocol: a network is built as ``cls(in_shape, out_shape, **params)`` and maps
``(*batch, *in_shape)`` to ``(*batch, *out_shape)``, for any number of batch
dimensions (vectorized particles add one). The encoder's ``in_shape`` is the data
shape and its ``out_shape`` the posterior's ``(encoder_outputs,)``; the decoder's are
``(latent_dim,)`` and the likelihood's ``(outputs, *data_shape)``.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..errors import SpecError
from ..registry import Registry
from ..params import count

NETWORKS = Registry("network")
Width = count(16384)
Widths = Annotated[list[Width], Field(max_length=16)]
Activation = Literal["softplus", "relu", "tanh", "elu", "gelu", "silu", "leaky_relu"]
ACTIVATIONS = {
    "softplus": nn.Softplus,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}
Dropout = Annotated[float, Field(ge=0, lt=1)]


@NETWORKS.protocol
class Network(nn.Module):
    """Shapes in and out; see the module docstring for the protocol."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
        super().__init__()
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def flat_in(self, x: Tensor) -> Tensor:
        return x.reshape(*x.shape[: x.dim() - len(self.in_shape)], math.prod(self.in_shape))

    def shaped_out(self, y: Tensor, batch: torch.Size) -> Tensor:
        return y.reshape(*batch, *self.out_shape)


class _Stacked(Network):
    """Hidden layers made by ``layer(width_in, width_out)``, each followed by dropout when
    asked, then a linear map to the output."""

    def stack(self, hidden, dropout, layer) -> None:
        layers: list[nn.Module] = []
        width = math.prod(self.in_shape)
        for h in hidden:
            layers += layer(width, h)
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, math.prod(self.out_shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, x, beside: Optional[Tensor] = None):
        """The network of x; with ``beside`` (features b read beside a flat x, as the network
        would read [x, b]: M2's one-hot y), of [x, b] with the first map split,
        W [x; b] + c = (W_x x + c) + W_b b, each product on its own rows and the sum
        broadcast: under the enumeration of y's K classes the widest product runs on the
        batch of x, not on K copies of it (the same weights; the same numbers to float rounding)."""
        if beside is None:
            batch = x.shape[: x.dim() - len(self.in_shape)]
            return self.shaped_out(self.net(self.flat_in(x)), batch)
        first = self.net[0]
        linear = first.linear if isinstance(first, GatedLinear) else first
        split = x.shape[-1]
        if split + beside.shape[-1] != linear.in_features:
            raise ValueError(f"{split} + {beside.shape[-1]} features beside them, but the network reads "
                             f"{linear.in_features}")
        h = F.linear(x, linear.weight[:, :split], linear.bias) + F.linear(beside, linear.weight[:, split:])
        h = self.net[1:](first.gate(h) if isinstance(first, GatedLinear) else h)
        return self.shaped_out(h, h.shape[:-1])


@NETWORKS.register("mlp")
class MLP(_Stacked):
    """Fully connected layers of the given widths, each followed by the activation
    (and dropout), then a linear map to the output."""

    def __init__(
        self,
        in_shape,
        out_shape,
        *,
        hidden: Widths = [400],
        activation: Activation = "softplus",
        dropout: Dropout = 0.0,
    ):
        super().__init__(in_shape, out_shape)
        self.stack(hidden, dropout, lambda a, b: [nn.Linear(a, b), ACTIVATIONS[activation]()])


class GatedLinear(nn.Module):
    """h = (W x + b) * sigmoid(V x + c) (Dauphin et al., 2017; the VampPrior paper's layers)."""

    def __init__(self, width_in: int, width_out: int):
        super().__init__()
        self.linear = nn.Linear(width_in, 2 * width_out)

    def forward(self, x):
        return self.gate(self.linear(x))

    @staticmethod
    def gate(hg: Tensor) -> Tensor:
        """(W x + b) * sigmoid(V x + c) from the linear map's two halves [W x + b, V x + c]."""
        h, g = hg.chunk(2, -1)
        return h * torch.sigmoid(g)


@NETWORKS.register("gated_mlp")
class GatedMLP(_Stacked):
    """Gated dense layers h * sigmoid(g) of the given widths, then a linear map to the output."""

    def __init__(self, in_shape, out_shape, *, hidden: Widths = [300, 300], dropout: Dropout = 0.0):
        super().__init__(in_shape, out_shape)
        self.stack(hidden, dropout, lambda a, b: [GatedLinear(a, b)])


def image_shape(shape: tuple[int, ...]) -> Optional[tuple[int, int, int]]:
    """(channels, height, width) of a data shape: (C, H, W), (H, W), or a square (H*W,)."""
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0] and shape[0] > 1:
        side = math.isqrt(shape[0])
        return (1, side, side)
    return None


@NETWORKS.register("conv")
class ConvNet(Network):
    """Strided convolutions for images, sized from the data's shape.

    As an encoder (vector out): conv(3x3, stride 2) blocks with the given channels, then a
    linear map. As a decoder (image out): a linear map to the smallest feature map, then
    transposed conv(4x4, stride 2) blocks with the channels reversed, a 3x3 conv to the
    output channels, cropped to the image size. Flat square data (784,) is read as 28x28.
    """

    def __init__(
        self,
        in_shape,
        out_shape,
        *,
        channels: Annotated[list[count(1024)], Field(min_length=1, max_length=8)] = [32, 64],
        activation: Activation = "relu",
    ):
        super().__init__(in_shape, out_shape)
        act = ACTIVATIONS[activation]
        self.decoding = len(self.out_shape) > 1
        image_side = self.out_shape[1:] if self.decoding else self.in_shape
        image = image_shape(image_side)
        if image is None:
            raise SpecError(
                f"conv needs image data (C, H, W), (H, W) or square flat data, not shape {image_side}"
            )
        c, height, width = image
        steps = len(channels)
        self.small = (math.ceil(height / 2**steps), math.ceil(width / 2**steps))
        if self.decoding:
            outputs = self.out_shape[0] * c
            self.image = (outputs, height, width)
            rev = list(reversed(channels))
            self.stem = nn.Linear(math.prod(self.in_shape), rev[0] * math.prod(self.small))
            self.first = rev[0]
            blocks: list[nn.Module] = [act()]
            for a, b in zip(rev, rev[1:] + [rev[-1]]):
                blocks += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), act()]
            blocks.append(nn.Conv2d(rev[-1], outputs, 3, padding=1))
            self.body = nn.Sequential(*blocks)
        else:
            self.image = image
            blocks = []
            for a, b in zip([c] + channels[:-1], channels):
                blocks += [nn.Conv2d(a, b, 3, stride=2, padding=1), act()]
            self.body = nn.Sequential(*blocks, nn.Flatten())
            self.head = nn.Linear(channels[-1] * math.prod(self.small), math.prod(self.out_shape))

    def forward(self, x):
        batch = x.shape[: x.dim() - len(self.in_shape)]
        flat = x.reshape(-1, *self.in_shape)
        if self.decoding:
            h = self.stem(flat.reshape(len(flat), -1)).reshape(-1, self.first, *self.small)
            y = self.body(h)[..., : self.image[1], : self.image[2]]
        else:
            y = self.head(self.body(flat.reshape(-1, *self.image)))
        return self.shaped_out(y, batch)
