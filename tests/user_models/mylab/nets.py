"""Models written the way users write them: NNX containers, Flax Linen, explicit padding.

``tests/test_user_models.py`` copies this package into a temporary folder and runs equivar there, as a user
whose own code sits in ``./mylab`` would.
"""

import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from equivar.layers import GlobalPool


def _spatial_mean(x):
    return x.mean(axis=tuple(range(1, x.ndim - 1)))


class SeqNet(nnx.Module):
    """Features in an nnx.Sequential (functions between the convolutions), a functional mean, a head."""

    def __init__(self, input_shape, n_classes, *, width=8, rngs: nnx.Rngs):
        rank, c = len(input_shape) - 1, input_shape[-1]
        self.features = nnx.Sequential(
            nnx.Conv(c, width, (5,) * rank, padding="CIRCULAR", rngs=rngs), nnx.relu,
            nnx.Conv(width, width, (3,) * rank, strides=2, padding="CIRCULAR", rngs=rngs), nnx.relu)
        self.head = nnx.Linear(width, n_classes, rngs=rngs)

    def __call__(self, x):
        return self.head(_spatial_mean(self.features(x)))


class ChainNet(nnx.Module):
    """Every operation a layer of one nnx.Sequential: its leaves form an exact chain."""

    def __init__(self, input_shape, n_classes, *, width=8, rngs: nnx.Rngs):
        rank, c = len(input_shape) - 1, input_shape[-1]
        self.net = nnx.Sequential(
            nnx.Conv(c, width, (5,) * rank, padding="CIRCULAR", rngs=rngs), nnx.relu,
            nnx.Conv(width, width, (3,) * rank, strides=2, padding=((1, 1),) * rank, rngs=rngs), nnx.relu,
            GlobalPool("mean"), nnx.Linear(width, n_classes, rngs=rngs))

    def __call__(self, x):
        return self.net(x)


class Block(nnx.Module):
    """Convolution, LayerNorm and a functional ReLU: not a chain inside, so measured as one layer."""

    def __init__(self, cin, cout, rank, rngs):
        self.conv = nnx.Conv(cin, cout, (3,) * rank, padding="SAME", rngs=rngs)
        self.norm = nnx.LayerNorm(cout, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.norm(self.conv(x)))


class ListNet(nnx.Module):
    """Blocks in an nnx.List, the head in an nnx.Dict."""

    def __init__(self, input_shape, n_classes, *, width=8, depth=2, rngs: nnx.Rngs):
        rank = len(input_shape) - 1
        chans = [input_shape[-1]] + [width] * depth
        self.blocks = nnx.List([Block(a, b, rank, rngs) for a, b in zip(chans, chans[1:])])
        self.by_name = nnx.Dict({"out": nnx.Linear(width, n_classes, rngs=rngs)})

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return self.by_name["out"](x.max(axis=tuple(range(1, x.ndim - 1))))


class PadNet(nnx.Module):
    """Explicit per-side padding, a dilated grouped convolution, a strided one."""

    def __init__(self, input_shape, n_classes, *, width=8, rngs: nnx.Rngs):
        rank = len(input_shape) - 1
        self.net = nnx.Sequential(
            nnx.Conv(input_shape[-1], width, (3,) * rank, padding=((1, 1),) * rank, rngs=rngs), nnx.relu,
            nnx.Conv(width, width, (3,) * rank, padding=((2, 0),) * rank, kernel_dilation=2,
                     feature_group_count=2, rngs=rngs), nnx.relu,
            nnx.Conv(width, width, (3,) * rank, strides=2, padding=2, rngs=rngs), nnx.relu,
            GlobalPool("max"), nnx.Linear(width, n_classes, rngs=rngs))

    def __call__(self, x):
        return self.net(x)


class LinenCNN(nn.Module):
    """A Linen CNN as the Flax examples write one."""

    num_classes: int
    width: int = 8

    @nn.compact
    def __call__(self, x):
        rank = x.ndim - 2
        x = nn.relu(nn.Conv(self.width, (5,) * rank, padding="CIRCULAR")(x))
        x = nn.relu(nn.Conv(self.width, (3,) * rank, padding="CIRCULAR")(x))
        return nn.Dense(self.num_classes)(_spatial_mean(x))


class LinenBNDrop(nn.Module):
    """A Linen net with BatchNorm and Dropout switched by a ``train`` argument."""

    n_classes: int
    width: int = 8
    rate: float = 0.2

    @nn.compact
    def __call__(self, x, train: bool = False):
        rank = x.ndim - 2
        x = nn.Conv(self.width, (3,) * rank, padding="SAME")(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.Dropout(self.rate, deterministic=not train)(nn.relu(x))
        return nn.Dense(self.n_classes)(x.max(axis=tuple(range(1, x.ndim - 1))))


class FixedNet(nnx.Module):
    """No variables at all: logits are the input's largest values, tiled. Nothing to train, nothing per seed."""

    def __init__(self, input_shape, n_classes, *, rngs: nnx.Rngs):
        self.n_classes = n_classes

    def __call__(self, x):
        peak = x.max(axis=tuple(range(1, x.ndim - 1)))
        return jnp.tile(peak, (1, self.n_classes))[:, :self.n_classes]


class ListSeqNet(nnx.Module):
    """Blocks in an nnx.List, a functional global max between them and an nnx.Sequential head."""

    def __init__(self, input_shape, n_classes, *, width=8, depth=2, rngs: nnx.Rngs):
        rank = len(input_shape) - 1
        chans = [input_shape[-1]] + [width] * depth
        self.blocks = nnx.List([Block(a, b, rank, rngs) for a, b in zip(chans, chans[1:])])
        self.head = nnx.Sequential(nnx.Linear(width, width, rngs=rngs), nnx.relu,
                                   nnx.Linear(width, n_classes, rngs=rngs))

    def __call__(self, x):
        for block in self.blocks:
            x = block(x) + x if x.shape[-1] == block.conv.out_features else block(x)  # a residual sum
        return self.head(x.max(axis=tuple(range(1, x.ndim - 1))))


class LinenSeq(nn.Module):
    """A Linen nn.Sequential built in setup: a convolution, nn.relu and a reshaping lambda between layers."""

    num_classes: int
    width: int = 8

    def setup(self):
        self.net = nn.Sequential([nn.Conv(self.width, (3,), padding="CIRCULAR"), nn.relu,
                                  lambda x: x.reshape(x.shape[0], -1), nn.Dense(16), nn.relu,
                                  nn.Dense(self.num_classes)])

    def __call__(self, x):
        return self.net(x)


class LinenViT(nn.Module):
    """A Linen vision transformer as people write one: strided nn.Conv patches, a learned position embedding
    (self.param), blocks of nn.LayerNorm, nn.MultiHeadDotProductAttention and a GELU MLP with residual sums,
    a mean over tokens, nn.Dense."""

    num_classes: int
    dim: int = 16
    depth: int = 2
    heads: int = 2
    patch: int = 2

    @nn.compact
    def __call__(self, x):
        rank = x.ndim - 2
        x = nn.Conv(self.dim, (self.patch,) * rank, strides=(self.patch,) * rank)(x)
        x = x.reshape(x.shape[0], -1, self.dim)
        x = x + self.param("pos", nn.initializers.normal(0.02), (1, x.shape[1], self.dim))
        for _ in range(self.depth):
            h = nn.LayerNorm()(x)
            x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(h, h)
            h = nn.LayerNorm()(x)
            x = x + nn.Dense(self.dim)(nn.gelu(nn.Dense(2 * self.dim)(h)))
        return nn.Dense(self.num_classes)(nn.LayerNorm()(x).mean(axis=1))


class LinenDropDet(nn.Module):
    """Dropout switched by a ``deterministic`` argument (True in inference), on the input's first values."""

    num_classes: int
    rate: float = 0.5

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        h = x.reshape(x.shape[0], -1)[:, :self.num_classes] * self.param("scale", nn.initializers.ones, ())
        return nn.Dropout(self.rate, deterministic=deterministic)(h)


class LinenBNRunning(nn.Module):
    """BatchNorm switched by a ``use_running_average`` argument (True in inference), on the input's first values."""

    num_classes: int
    momentum: float = 0.5

    @nn.compact
    def __call__(self, x, use_running_average: bool = True):
        h = nn.BatchNorm(use_running_average=use_running_average, momentum=self.momentum)(x)
        return h.reshape(h.shape[0], -1)[:, :self.num_classes]
