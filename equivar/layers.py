"""Rank-generic building blocks: pooling, flatten, activations and their geometry.

Every layer works on channels-last arrays ``(N, *spatial, C)`` with any number of spatial axes, so 1D
sequences and 2D images share one code path. Each layer also reports its geometry (kernel, stride, dilation,
padding per spatial axis), which the models use to size their dense layers and which receptive-field
analysis reads.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
from flax import nnx

from equivar.schema import unknown

Padding = Literal["VALID", "SAME", "CIRCULAR"]
PADDINGS: tuple[str, ...] = get_args(Padding)


class LayerStack(nnx.Module):
    """Runs named layers in order; ``layers()`` lists them (``equivar.introspect.layer_outputs`` reads every
    layer's output, of this and of any other module)."""

    layer_names: tuple[str, ...]

    def __call__(self, x: jax.Array) -> jax.Array:
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return x

    def layers(self) -> list[tuple[str, nnx.Module]]:
        return [(name, getattr(self, name)) for name in self.layer_names]
POOL_KINDS = ("max", "mean")


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How one layer maps input positions to output positions along each spatial axis.

    ``padding`` is a mode: ``VALID``, ``SAME`` (lax's split, zeros), ``CIRCULAR`` and ``REFLECT`` (flax's split,
    wrapped or mirrored values), ``CAUSAL`` (zeros before only), or ``EXPLICIT`` with ``pads`` giving the zeros
    ``(before, after)`` on each axis (a convolution's ``padding=((1, 1),)`` or ``padding=2``).
    """

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: str
    pads: tuple[tuple[int, int], ...] | None = None  # EXPLICIT only

    def span(self, axis: int) -> int:
        """Input positions one window covers along ``axis`` (holes of a dilated kernel included)."""
        return self.dilation[axis] * (self.kernel[axis] - 1) + 1

    def pad_pair(self, size: int, axis: int) -> tuple[int, int]:
        """Positions padded ``(before, after)`` the input along ``axis`` of length ``size``."""
        span, s = self.span(axis), self.stride[axis]
        if self.padding == "VALID":
            return 0, 0
        if self.padding in ("CIRCULAR", "REFLECT"):  # flax pads ((span-1)//2, span//2), then VALID
            return (span - 1) // 2, span // 2
        if self.padding == "CAUSAL":
            return span - 1, 0
        if self.padding == "EXPLICIT" and self.pads is not None:
            return self.pads[axis]
        total = max((math.ceil(size / s) - 1) * s + span - size, 0)  # lax's SAME
        return total // 2, total - total // 2

    @property
    def zero_padded(self) -> bool:
        """Padded positions hold zeros (constants), not input values."""
        return self.padding not in ("CIRCULAR", "REFLECT")

    def output_spatial(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Spatial output shape for a given spatial input shape (0 or less means the layer is impossible)."""
        out = []
        for axis, size in enumerate(spatial):
            before, after = self.pad_pair(size, axis)
            padded, span = size + before + after, self.span(axis)
            out.append((padded - span) // self.stride[axis] + 1 if padded >= span else 0)
        return tuple(out)


def as_tuple(value: int | Sequence[int], rank: int) -> tuple[int, ...]:
    """Broadcasts an int to a per-axis tuple, or checks a sequence has one entry per spatial axis."""
    if isinstance(value, bool) or isinstance(value, (str, float)):
        raise ValueError(f"expected an integer or one integer per spatial axis, got {value!r}")
    if isinstance(value, int):
        return (value,) * rank
    value = tuple(int(v) for v in value)
    if len(value) != rank:
        raise ValueError(f"expected {rank} values (one per spatial axis), got {value}")
    return value


def conv_geometry(conv: Any) -> Geometry:
    """The geometry of a convolution, Flax NNX's or Linen's (the same attribute names); ValueError saying why
    when it has none (input dilation, a padding flax does not document)."""
    rank = len(conv.kernel_size)
    if any(d != 1 for d in as_tuple(getattr(conv, "input_dilation", None) or 1, rank)):
        raise ValueError("it dilates its input (a fractionally strided convolution), which moves positions "
                         "between the input's samples")
    padding = conv.padding
    pads = None
    if isinstance(padding, str):
        mode = padding.upper()
        if mode not in ("VALID", "SAME", "CIRCULAR", "REFLECT", "CAUSAL"):
            raise ValueError(f"its padding {padding!r} is not one flax documents")
    elif isinstance(padding, int):
        mode, pads = "EXPLICIT", ((padding, padding),) * rank
    else:
        entries = list(padding)
        if len(entries) != rank:
            raise ValueError(f"its padding {padding!r} does not give one entry per spatial axis")
        pairs = [(e, e) if isinstance(e, int) else tuple(e) for e in entries]
        mode, pads = "EXPLICIT", tuple((int(b), int(a)) for b, a in pairs)
    return Geometry(kernel=tuple(int(k) for k in conv.kernel_size), stride=as_tuple(conv.strides or 1, rank),
                    dilation=as_tuple(conv.kernel_dilation or 1, rank), padding=mode, pads=pads)


def padding_before(geometry: Geometry, size: int, axis: int) -> int:
    """Positions padded before the first input position along ``axis`` (how flax/lax pad each mode)."""
    return geometry.pad_pair(size, axis)[0]


def is_convolution(layer: Any) -> bool:
    """A Flax convolution (NNX's, Linen's, or Linen's locally connected ``ConvLocal``)."""
    from flax import linen

    return isinstance(layer, (nnx.Conv, linen.Conv, linen.ConvLocal))


def layer_geometry(layer: Any) -> Geometry | None:
    """The geometry of a windowed layer (convolution, locally connected, pooling); None for the others and for
    convolutions whose geometry cannot be derived (``geometry_problem`` says why)."""
    if is_convolution(layer):
        try:
            return conv_geometry(layer)
        except ValueError:
            return None
    return getattr(layer, "geometry", None)


def geometry_problem(layer: Any) -> str | None:
    """Why a convolution has no geometry (None when it has one or is not a convolution)."""
    if not is_convolution(layer):
        return None
    try:
        conv_geometry(layer)
    except ValueError as err:
        return str(err)
    return None


def _pointwise_functions() -> tuple[Any, ...]:
    """jax's activation functions (``nnx.relu`` is ``jax.nn.relu``) and elementwise ``jax.numpy`` ones a
    ``nnx.Sequential`` may hold."""
    import jax.numpy as jnp

    names = ("relu", "relu6", "gelu", "silu", "swish", "sigmoid", "tanh", "elu", "celu", "selu", "leaky_relu",
             "softplus", "soft_sign", "log_sigmoid", "hard_tanh", "hard_sigmoid", "hard_silu", "hard_swish",
             "mish", "glu", "squareplus", "sparse_plus")
    found = [getattr(jax.nn, n) for n in names if hasattr(jax.nn, n)]
    return tuple(found + [jnp.tanh, jnp.abs, jnp.square, jnp.exp])


def activation_names() -> set[str]:
    """How tables name the pointwise functions (``relu``, ``tanh``): activations a figure may leave out."""
    return {getattr(f, "__name__", "") for f in _pointwise_functions()} - {""}


def is_pointwise_function(layer: Any) -> bool:
    """A plain function that acts on each position alone (an activation; ``functools.partial`` of one too)."""
    func = layer.func if isinstance(layer, functools.partial) else layer
    return any(func is f for f in _pointwise_functions())


def layer_type(layer: Any) -> str:
    """How tables name a layer's kind: its class, or a function's name (``relu``)."""
    if isinstance(layer, functools.partial):
        layer = layer.func
    if not isinstance(layer, nnx.Module) and callable(layer):
        return getattr(layer, "__name__", None) or type(layer).__name__
    return type(layer).__name__


def _pad_for_window(x: jax.Array, geometry: Geometry, fill: float) -> jax.Array:
    """Pads spatial axes as a 'SAME' (lax's split) or 'CIRCULAR' (flax's split) convolution would."""
    pads = [(0, 0)]
    for axis, (n, k, s, d) in enumerate(zip(x.shape[1:-1], geometry.kernel, geometry.stride, geometry.dilation)):
        before = padding_before(geometry, n, axis)
        total = d * (k - 1) + 1 - 1 if geometry.padding == "CIRCULAR" else \
            max((math.ceil(n / s) - 1) * s + d * (k - 1) + 1 - n, 0)
        pads.append((before, total - before))
    pads.append((0, 0))
    if geometry.padding == "CIRCULAR":
        return jnp.pad(x, pads, mode="wrap")
    return jnp.pad(x, pads, constant_values=fill)


def _window_taps(x: jax.Array, window: tuple[int, ...], stride: tuple[int, ...]) -> list[jax.Array]:
    """One strided slice of ``x`` ``(N, *spatial, C)`` per window tap, in row-major tap order: tap ``t`` of
    output position ``o`` is input position ``o * stride + t``."""
    out = [(n - w) // s + 1 for n, w, s in zip(x.shape[1:-1], window, stride)]
    return [x[(slice(None), *(slice(t, t + (o - 1) * s + 1, s) for t, o, s in zip(tap, out, stride)), slice(None))]
            for tap in itertools.product(*(range(w) for w in window))]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _sliced_max_pool(x: jax.Array, window: tuple[int, ...], stride: tuple[int, ...]) -> jax.Array:
    return functools.reduce(jnp.maximum, _window_taps(x, window, stride))


@_sliced_max_pool.defjvp
def _sliced_max_pool_jvp(window, stride, primals, tangents):
    """``reduce_window``'s rule: each window's tangent is its first maximal tap's (``jnp.maximum`` would share
    ties). Transposed for a gradient, an input's contributions then add up in the order select-and-scatter
    adds them: the same gradient bit for bit (a whole training step may still round differently where XLA
    fuses the ops around it differently)."""
    (x,), (dx,) = primals, tangents
    taps = _window_taps(x, window, stride)
    best = functools.reduce(jnp.maximum, taps)
    taken = jnp.zeros(best.shape, bool)
    out = None
    for tap, tangent in zip(taps, _window_taps(dx, window, stride)):
        pick = (tap == best) & ~taken
        taken = taken | pick
        chosen = jnp.where(pick, tangent, jnp.zeros((), tangent.dtype))
        out = chosen if out is None else out + chosen
    return best, out


_MAX_SLICED_TAPS = 16  # windows up to 4x4 as slices; larger ones (rare) stay one reduce_window


class Pool(nnx.Module):
    """Max or mean pooling over a window with a stride, on any number of spatial axes.

    The common case (window == stride, no padding) is written as crop + reshape + reduce: on CPU this is
    about twice as fast to differentiate as ``lax.reduce_window``, whose max backward pass dominates a
    LeNet step. Other windows of up to 16 taps are one strided slice per tap; larger ones ``lax.reduce_window``.
    """

    def __init__(self, kind: str, window: Sequence[int], stride: Sequence[int], padding: str = "VALID"):
        if kind not in POOL_KINDS:
            raise ValueError(unknown("pooling kind", kind, POOL_KINDS))
        if padding not in PADDINGS:
            raise ValueError(unknown("pooling padding", padding, PADDINGS))
        self.kind = kind
        self.window = tuple(window)
        self.stride = tuple(stride)
        self.padding = padding

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.window, self.stride, (1,) * len(self.window), self.padding)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.window == self.stride and self.padding == "VALID":
            return self._pool_by_reshape(x)
        fill = -jnp.inf if self.kind == "max" else 0.0
        if self.padding != "VALID":
            x = _pad_for_window(x, self.geometry, fill)
        if math.prod(self.window) <= _MAX_SLICED_TAPS:
            return self._pool_by_slices(x)
        dims = (1, *self.window, 1)
        strides = (1, *self.stride, 1)
        if self.kind == "max":
            return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, "VALID")
        total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, "VALID")
        return total / math.prod(self.window)

    def _pool_by_slices(self, x: jax.Array) -> jax.Array:
        """Overlapping windows (a stride-1 max before a blur or a polyphase pick) as an elementwise max or sum
        of one strided slice per window tap: the backward pass is elementwise selects that fuse, where
        ``reduce_window``'s is a select-and-scatter (4.6x slower LeNet-with-BlurPool training on CPU)."""
        if self.kind == "max":
            return _sliced_max_pool(x, self.window, self.stride)
        taps = _window_taps(x, self.window, self.stride)
        return functools.reduce(operator.add, taps) / math.prod(self.window)

    def _pool_by_reshape(self, x: jax.Array) -> jax.Array:
        spatial = x.shape[1:-1]
        kept = tuple((n // w) * w for n, w in zip(spatial, self.window))
        x = x[(slice(None), *(slice(0, k) for k in kept), slice(None))]
        split_shape = [x.shape[0]]
        for k, w in zip(kept, self.window):
            split_shape += [k // w, w]
        x = x.reshape(*split_shape, x.shape[-1])
        window_axes = tuple(2 + 2 * i for i in range(len(kept)))
        return x.max(axis=window_axes) if self.kind == "max" else x.mean(axis=window_axes)


class LocallyConnected(nnx.Module):
    """A convolution without weight sharing: every output position has its own kernel and bias.

    Same windows (kernel, stride, dilation, padding) as ``nnx.Conv``, so the same receptive fields; only the
    sharing is removed. Kernel shape ``(*out_spatial, prod(kernel) * in_features, out_features)``, where the
    patch axis is ordered (input channel, kernel offsets) as ``lax.conv_general_dilated_patches`` makes it.
    """

    def __init__(self, in_features: int, out_features: int, kernel: Sequence[int], in_spatial: Sequence[int],
                 *, stride: Sequence[int], dilation: Sequence[int], padding: str = "VALID",
                 use_bias: bool = True, rngs: nnx.Rngs):
        if padding not in PADDINGS:
            raise ValueError(unknown("padding", padding, PADDINGS))
        self.geometry = Geometry(tuple(kernel), tuple(stride), tuple(dilation), padding)
        out_spatial = self.geometry.output_spatial(in_spatial)
        rank = len(kernel)
        fan_in = math.prod(kernel) * in_features
        # lecun_normal over the patch axis only, like nnx.Conv's default (positions are a batch axis).
        init = nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=tuple(range(rank)))
        self.kernel = nnx.Param(init(rngs.params(), (*out_spatial, fan_in, out_features)))
        self.bias = nnx.Param(jnp.zeros((*out_spatial, out_features))) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        g = self.geometry
        if g.padding != "VALID":
            x = _pad_for_window(x, g, 0.0)  # zeros (SAME) or wrap-around (CIRCULAR), split as nnx.Conv does
        # Positions-major: one (batch x patch) @ (patch x out) product per output position. On the CPU this
        # trains about 1.3x faster than contracting channels-last patches with an einsum.
        patches = _patches(jnp.moveaxis(x, 0, -2), g)  # (*out, N, C * taps)
        out_spatial, (n, fan_in) = patches.shape[:-2], patches.shape[-2:]
        kernel = self.kernel[...]
        positions = math.prod(out_spatial)
        out = jnp.matmul(patches.reshape(positions, n, fan_in), kernel.reshape(positions, fan_in, -1))
        out = jnp.moveaxis(out.reshape(*out_spatial, n, -1), -2, 0)
        return out if self.bias is None else out + self.bias[...]


def binomial_filter(size: int) -> jnp.ndarray:
    """Normalised binomial taps (size 3: [1, 2, 1] / 4), the low-pass of Zhang (2019)."""
    taps = jnp.array([math.comb(size - 1, i) for i in range(size)], jnp.float32)
    return taps / taps.sum()


class Blur(nnx.Module):
    """Anti-aliasing: a fixed binomial low-pass on every channel, then subsampling by ``stride``.

    With a stride-1 max pool before it this is Zhang's (2019) BlurPool ("MaxBlurPool"): max, blur, subsample,
    instead of max-and-subsample at once, which aliases.
    """

    def __init__(self, size: int, stride: Sequence[int], padding: str = "SAME"):
        if padding not in PADDINGS:
            raise ValueError(unknown("blur padding", padding, PADDINGS))
        rank = len(stride)
        self.geometry = Geometry((size,) * rank, tuple(stride), (1,) * rank, padding)
        self.size = size

    def __call__(self, x: jax.Array) -> jax.Array:
        g = self.geometry
        if g.padding != "VALID":
            x = _pad_for_window(x, g, 0.0)
        taps = binomial_filter(self.size)
        # Separable: one 1D pass per spatial axis (each channel on its own), subsampling as it goes.
        for axis in range(1, x.ndim - 1):
            n_out = (x.shape[axis] - self.size) // g.stride[axis - 1] + 1
            windows = [jax.lax.slice_in_dim(x, t, t + (n_out - 1) * g.stride[axis - 1] + 1,
                                            stride=g.stride[axis - 1], axis=axis) for t in range(self.size)]
            x = functools.reduce(operator.add, (w * taps[t] for t, w in enumerate(windows)))
        return x


class PolyphaseDownsample(nnx.Module):
    """Adaptive polyphase sampling (Chaman & Dokmanic 2021): of the ``prod(stride)`` ways to subsample, keep,
    per example, the polyphase component with the largest l2 norm (over all channels).

    A circular shift of the input permutes the components (and shifts them), so the chosen one follows the
    content: after circular layers the output is shifted, not aliased, and a network built of circular
    convolutions, these downsamplers and global pooling is exactly invariant to circular shifts. Spatial axes
    are cropped to a multiple of the stride first. The choice is data-dependent: there is no fixed receptive
    field.
    """

    def __init__(self, stride: Sequence[int]):
        self.stride = tuple(stride)

    def __call__(self, x: jax.Array) -> jax.Array:
        n, *spatial, c = x.shape
        kept = [(size // s) * s for size, s in zip(spatial, self.stride)]
        x = x[(slice(None), *(slice(0, k) for k in kept), slice(None))]
        split = [n]
        for k, s in zip(kept, self.stride):
            split += [k // s, s]
        x = x.reshape(*split, c)
        rank = len(spatial)
        phase_axes = [2 + 2 * i for i in range(rank)]
        coarse_axes = [1 + 2 * i for i in range(rank)]
        x = jnp.transpose(x, (0, *phase_axes, *coarse_axes, x.ndim - 1))
        x = x.reshape(n, math.prod(self.stride), *(k // s for k, s in zip(kept, self.stride)), c)
        norms = jnp.sum(jnp.square(x), axis=tuple(range(2, x.ndim)))
        # Select by a one-hot contraction rather than take_along_axis: the same values exactly (one 1, zeros
        # elsewhere), and its gradient is a product instead of a scatter (1.25x faster cnn_aps training on CPU).
        pick = jax.lax.stop_gradient(jax.nn.one_hot(jnp.argmax(norms, axis=1), x.shape[1], dtype=x.dtype))
        return jnp.einsum("np...,np->n...", x, pick)


def _patches(x: jax.Array, g: Geometry) -> jax.Array:
    """Every window of an already padded, positions-major ``x`` ``(*spatial, N, C)`` as ``(*out, N,
    C * prod(kernel))``, channel-major like ``lax.conv_general_dilated_patches``, built from strided slices
    (one per kernel tap): on CPU this differentiates far faster than the patches convolution."""
    rank = len(g.kernel)
    spatial = x.shape[:rank]
    out = [(n - d * (k - 1) - 1) // s + 1 for n, k, s, d in zip(spatial, g.kernel, g.stride, g.dilation)]
    taps = []
    for tap in itertools.product(*(range(k) for k in g.kernel)):
        index = tuple(slice(t * d, t * d + (o - 1) * s + 1, s) for t, o, s, d in zip(tap, out, g.stride, g.dilation))
        taps.append(x[index])
    stacked = jnp.stack(taps, axis=-1)  # (*out, N, C, taps)
    return stacked.reshape(*stacked.shape[:-2], -1)


def group_copies(kernel: jax.Array, rank: int) -> list[jax.Array]:
    """The kernel transformed by every element of the symmetry group the lecture's cross-map pooling uses:
    rotations by 0/90/180/270 degrees in 2D, identity and reversal in 1D."""
    if rank == 2:
        return [jnp.rot90(kernel, r, axes=(0, 1)) for r in range(4)]
    if rank == 1:
        return [kernel, jnp.flip(kernel, axis=0)]
    raise ValueError(f"group convolutions are defined for 1 or 2 spatial axes, not {rank}")


class GroupConv(nnx.Module):
    """A convolution whose filters are tied to rotated copies of themselves (2D: 4 rotations; 1D: reversal),
    optionally followed by a max over the copies: the lecture's pooling across feature maps.

    Rotating the input rotates each copy's response and permutes the copies, so the max over copies is a
    feature map that rotates with the input (equivariant) and whose channels do not depend on the
    orientation. Kernels must be odd and padding symmetric (``SAME``) for the rotation to commute exactly.
    """

    def __init__(self, in_features: int, out_features: int, kernel: Sequence[int], *, dilation: Sequence[int],
                 pool_copies: bool = True, rngs: nnx.Rngs):
        if any(k % 2 == 0 for k in kernel):
            raise ValueError(f"group convolution kernels must be odd (symmetric padding), got {tuple(kernel)}")
        self.conv = nnx.Conv(in_features, out_features, tuple(kernel), kernel_dilation=tuple(dilation),
                             padding="SAME", rngs=rngs)
        self.geometry = conv_geometry(self.conv)
        self.pool_copies = pool_copies
        self.n_copies = len(group_copies(jnp.zeros((1,) * len(kernel)), len(kernel)))

    def __call__(self, x: jax.Array) -> jax.Array:
        rank = x.ndim - 2
        weights = jnp.concatenate(group_copies(self.conv.kernel[...], rank), axis=-1)
        spatial = "HW"[-rank:] if rank == 2 else "W"
        y = jax.lax.conv_general_dilated(x, weights, (1,) * rank, "SAME", rhs_dilation=self.geometry.dilation,
                                         dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
        y = y + jnp.tile(self.conv.bias[...], self.n_copies)  # type: ignore[index]  # built with a bias
        if not self.pool_copies:
            return y
        return y.reshape(*y.shape[:-1], self.n_copies, -1).max(axis=-2)


class GlobalPool(nnx.Module):
    """Pools every spatial position into one vector: ``(N, *spatial, C) -> (N, C)``."""

    def __init__(self, kind: str):
        if kind not in POOL_KINDS:
            raise ValueError(unknown("global pooling kind", kind, POOL_KINDS))
        self.kind = kind

    def __call__(self, x: jax.Array) -> jax.Array:
        axes = tuple(range(1, x.ndim - 1))
        return x.max(axis=axes) if self.kind == "max" else x.mean(axis=axes)


class Flatten(nnx.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], -1)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
}


class Activation(nnx.Module):
    def __init__(self, name: str):
        if name not in ACTIVATIONS:
            raise ValueError(unknown("activation", name, sorted(ACTIVATIONS)))
        self.name = name

    def __call__(self, x: jax.Array) -> jax.Array:
        return ACTIVATIONS[self.name](x)
