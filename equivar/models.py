"""The model zoo: Flax NNX classifiers that are generic over the input's spatial rank.

Models know nothing of training. Each is an ordered stack of named layers, so that the output of every layer
can be read by name (``equivar.introspect.layer_outputs``) and its geometry inspected. Input layout is channels-last:
``(N, L, C)`` for sequences, ``(N, H, W, C)`` for images; kernel sizes are broadcast to the data's rank.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import linen, nnx

from equivar.errors import ConfigError
from equivar.introspect import capture, to_inference
from equivar.layers import (
    PADDINGS,
    Activation,
    Blur,
    Flatten,
    Geometry,
    GlobalPool,
    GroupConv,
    LayerStack,
    LocallyConnected,
    PolyphaseDownsample,
    Pool,
    as_tuple,
    conv_geometry,
)
from equivar.linen import build_linen, is_linen_class, linen_options
from equivar.schema import check_keywords, nearest, unknown
from equivar.targets import locate_class


class _Builder:
    """Adds layers to a stack while tracking the activation shape, so dense layers are sized exactly and
    impossible shapes are reported with the layer's name and numbers."""

    def __init__(self, model: LayerStack, input_shape: Sequence[int], rngs: nnx.Rngs):
        self.model = model
        self.spatial = tuple(input_shape[:-1])
        self.channels = int(input_shape[-1])
        self.flat: int | None = None
        self.rngs = rngs
        self.names: list[str] = []

    @property
    def rank(self) -> int:
        return len(self.spatial)

    @staticmethod
    def _positive(name: str, **sizes: Any) -> None:
        """Every size of a layer must be >= 1 (integers, or one per axis): a one-line error naming the layer."""
        for what, value in sizes.items():
            values = value if isinstance(value, (tuple, list)) else (value,)
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"layer {name!r}: {what} must be integers >= 1, got {value!r}")

    def _add(self, name: str, layer: nnx.Module) -> None:
        setattr(self.model, name, layer)
        self.names.append(name)

    def _advance(self, name: str, geometry: Geometry) -> None:
        out = geometry.output_spatial(self.spatial)
        if min(out) < 1:
            raise ValueError(
                f"layer {name!r} (kernel {geometry.kernel}, stride {geometry.stride}, dilation "
                f"{geometry.dilation}, padding {geometry.padding}) gets spatial input {self.spatial} and "
                f"would produce {out}: make the kernel or pooling smaller, pad, or use a larger input"
            )
        self.spatial = out

    def conv(self, name: str, features: int, kernel: int | Sequence[int], *, stride=1, dilation=1,
             padding: str = "VALID", use_bias: bool = True) -> None:
        if padding not in PADDINGS:
            raise ValueError(f"layer {name!r}: " + unknown("padding", padding, PADDINGS))
        self._positive(name, features=features, kernel=as_tuple(kernel, self.rank),
                       stride=as_tuple(stride, self.rank), dilation=as_tuple(dilation, self.rank))
        conv = nnx.Conv(
            self.channels, features, as_tuple(kernel, self.rank), strides=as_tuple(stride, self.rank),
            kernel_dilation=as_tuple(dilation, self.rank), padding=padding, use_bias=use_bias,
            rngs=self.rngs,
        )
        self._advance(name, conv_geometry(conv))
        self._add(name, conv)
        self.channels = features

    def padded_conv(self, name: str, features: int, kernel: int, *, stride: int = 1, pad: int = 0) -> None:
        """A convolution with ``pad`` zeros on each side of every axis (PyTorch's ``padding=pad``)."""
        self._positive(name, features=features, kernel=kernel, stride=stride)
        conv = nnx.Conv(self.channels, features, (kernel,) * self.rank, strides=(stride,) * self.rank,
                        padding=((pad, pad),) * self.rank, rngs=self.rngs)
        self.spatial = tuple((n + 2 * pad - kernel) // stride + 1 for n in self.spatial)
        if min(self.spatial) < 1:
            raise ValueError(f"layer {name!r} (kernel {kernel}, stride {stride}, pad {pad}) leaves no positions")
        self._add(name, conv)
        self.channels = features

    def local(self, name: str, features: int, kernel: int | Sequence[int], *, stride=1, dilation=1,
              padding: str = "VALID", use_bias: bool = True) -> None:
        if padding not in PADDINGS:
            raise ValueError(f"layer {name!r}: " + unknown("padding", padding, PADDINGS))
        self._positive(name, features=features, kernel=as_tuple(kernel, self.rank),
                       stride=as_tuple(stride, self.rank), dilation=as_tuple(dilation, self.rank))
        geometry = Geometry(as_tuple(kernel, self.rank), as_tuple(stride, self.rank),
                            as_tuple(dilation, self.rank), padding)
        in_spatial = self.spatial
        self._advance(name, geometry)
        self._add(name, LocallyConnected(self.channels, features, geometry.kernel, in_spatial,
                                         stride=geometry.stride, dilation=geometry.dilation, padding=padding,
                                         use_bias=use_bias, rngs=self.rngs))
        self.channels = features

    def pool(self, name: str, kind: str, window: int | Sequence[int], stride: int | Sequence[int] | None = None,
             padding: str = "VALID") -> None:
        window = as_tuple(window, self.rank)
        stride = window if stride is None else as_tuple(stride, self.rank)
        self._positive(name, window=window, stride=stride)
        pool = Pool(kind, window, stride, padding)
        self._advance(name, pool.geometry)
        self._add(name, pool)

    def group_conv(self, name: str, features: int, kernel: int | Sequence[int], *, dilation=1,
                   pool_copies: bool = True) -> None:
        self._positive(name, features=features, kernel=as_tuple(kernel, self.rank),
                       dilation=as_tuple(dilation, self.rank))
        layer = GroupConv(self.channels, features, as_tuple(kernel, self.rank),
                          dilation=as_tuple(dilation, self.rank), pool_copies=pool_copies, rngs=self.rngs)
        self._advance(name, layer.geometry)
        self._add(name, layer)
        self.channels = features if pool_copies else features * layer.n_copies

    def blur(self, name: str, size: int = 3, stride: int | Sequence[int] = 2, padding: str = "SAME") -> None:
        self._positive(name, size=size, stride=as_tuple(stride, self.rank))
        layer = Blur(int(size), as_tuple(stride, self.rank), padding)
        self._advance(name, layer.geometry)
        self._add(name, layer)

    def polyphase(self, name: str, stride: int | Sequence[int] = 2) -> None:
        stride = as_tuple(stride, self.rank)
        self._positive(name, stride=stride)
        out = tuple(n // s for n, s in zip(self.spatial, stride))
        if min(out) < 1:
            raise ValueError(f"layer {name!r} (polyphase stride {stride}) gets spatial input {self.spatial} and "
                             f"would produce {out}")
        self._add(name, PolyphaseDownsample(stride))
        self.spatial = out

    def global_pool(self, name: str, kind: str) -> None:
        self._add(name, GlobalPool(kind))
        self.flat = self.channels

    def flatten(self, name: str = "flatten") -> None:
        self._add(name, Flatten())
        self.flat = self.channels * _prod(self.spatial)

    def dense(self, name: str, features: int) -> None:
        self._positive(name, features=features)
        in_features = self.flat if self.flat is not None else None
        if in_features is None:
            raise RuntimeError("dense layers follow flatten or global pooling")
        self._add(name, nnx.Linear(in_features, features, rngs=self.rngs))
        self.flat = features

    def activation(self, name: str, fn: str) -> None:
        self._add(name, Activation(fn))

    def finish(self) -> None:
        self.model.layer_names = tuple(self.names)


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


class MLP(LayerStack):
    """Fully connected: flatten, hidden ReLU layers, linear classifier. Sees every position separately."""

    def __init__(self, input_shape: Sequence[int], n_classes: int, *, hidden: Sequence[int] = (512, 512),
                 activation: str = "relu", rngs: nnx.Rngs):
        b = _Builder(self, input_shape, rngs)
        b.flatten()
        for i, width in enumerate(hidden, start=1):
            b.dense(f"fc{i}", int(width))
            b.activation(f"act_fc{i}", activation)
        b.dense("logits", n_classes)
        b.finish()


class AliasFreeCNN(LayerStack):
    """An alias-free convnet (Michaeli, Michaeli & Soudry 2023): invariant to sub-pixel (Fourier) shifts of the
    input, not only to integer ones (``equivar.alias_free`` explains each ingredient).

    The input is band-limited strictly below Nyquist; each block is a circular convolution, an optional
    per-example RMS normalisation, a quadratic activation evaluated at twice the sampling rate, and optionally
    an ideal low-pass downsampling by 2; then the mean over positions and a linear classifier. Every map stays
    band-limited, so the logits are invariant to every circular Fourier shift up to float rounding.

    ``activation="relu"`` and ``downsample_mode="subsample"`` build the same net from aliasing parts (ReLU, plain
    subsampling): the counter-example, exactly invariant to nothing but the shifts its strides divide.
    ``activation="poly_direct"`` evaluates the polynomial on the samples themselves (it aliases too).
    """

    def __init__(self, input_shape: Sequence[int], n_classes: int, *, channels: Sequence[int] = (32, 64, 64),
                 kernel: int = 5, downsample: Sequence[bool] = (True, True, False), activation: str = "poly",
                 downsample_mode: str = "ideal", norm: bool = True, rngs: nnx.Rngs):
        from equivar import alias_free as af

        if activation not in ALIAS_FREE_ACTIVATIONS:
            raise ValueError(unknown("activation", activation, ALIAS_FREE_ACTIVATIONS))
        if downsample_mode not in ("ideal", "subsample"):
            raise ValueError(unknown("downsample_mode", downsample_mode, ("ideal", "subsample")))
        if len(downsample) != len(channels):
            raise ValueError(f"downsample needs one entry per block ({len(channels)}), got {list(downsample)}")
        af.check_even_path(input_shape[:-1], downsample)
        b = _Builder(self, input_shape, rngs)
        b._add("band_limit", af.BandLimit())
        for i, (width, down) in enumerate(zip(channels, downsample), start=1):
            b.conv(f"conv{i}", int(width), kernel, padding="CIRCULAR")
            if norm:
                b._add(f"norm{i}", af.RMSNorm(int(width)))
            if activation == "relu":
                b.activation(f"act{i}", "relu")
            else:
                b._add(f"act{i}", af.PolyActivation(int(width), up=activation == "poly"))
            if down:
                layer = af.FourierDownsample(2) if downsample_mode == "ideal" else af.Subsample(2)
                b._add(f"down{i}", layer)
                b.spatial = tuple(n // 2 for n in b.spatial)
        b.global_pool("global_pool", "mean")
        b.dense("logits", n_classes)
        b.finish()


ALIAS_FREE_ACTIVATIONS = ("poly", "poly_direct", "relu")
DOWNSAMPLE_MODES = ("aps", "blur", "fourier", "subsample")


POOLINGS = ("max", "mean", "blurmax", "aps")


def _lenet_layers(b: _Builder, windowed: Callable[..., None], n_classes: int, channels: Sequence[int],
                  kernel: int | Sequence[int], padding: str, pool: str, pool_size: int, pool_stride: int | None,
                  hidden: Sequence[int], activation: str, pool_padding: str = "VALID",
                  blur_size: int = 3) -> None:
    if pool not in POOLINGS:
        raise ValueError(unknown("pool", pool, POOLINGS))
    stride = pool_size if pool_stride is None else pool_stride
    for i, width in enumerate(channels, start=1):
        windowed(f"conv{i}", int(width), kernel, padding=padding)
        b.activation(f"act{i}", activation)
        if pool in ("max", "mean"):
            b.pool(f"pool{i}", pool, pool_size, stride, padding=pool_padding)
        else:  # anti-aliased: max over the window densely, then blur or polyphase-select while subsampling
            b.pool(f"pool{i}", "max", pool_size, 1, padding=pool_padding)
            if pool == "blurmax":
                b.blur(f"blur{i}", blur_size, stride, "CIRCULAR" if pool_padding == "CIRCULAR" else "SAME")
            else:
                b.polyphase(f"aps{i}", stride)
    b.flatten()
    for i, width in enumerate(hidden, start=1):
        b.dense(f"fc{i}", int(width))
        b.activation(f"act_fc{i}", activation)
    b.dense("logits", n_classes)
    b.finish()


class LeNet(LayerStack):
    """The lecture's model: [conv k, activation, pool] blocks, flatten, dense hidden layers, classifier.

    Defaults are the lecture's problem 1: 5x5 convs with 16 and 32 channels, no padding, ReLU, 2x2 max-pool
    with stride 2, then dense 512 and the classes.
    """

    windowed_layer = "conv"  # the _Builder method each block's windowed layer comes from

    def __init__(self, input_shape: Sequence[int], n_classes: int, *, channels: Sequence[int] = (16, 32),
                 kernel: int | Sequence[int] = 5, padding: str = "VALID", pool: str = "max",
                 pool_size: int = 2, pool_stride: int | None = None, hidden: Sequence[int] = (512,),
                 activation: str = "relu", pool_padding: str = "VALID", blur_size: int = 3, rngs: nnx.Rngs):
        b = _Builder(self, input_shape, rngs)
        _lenet_layers(b, getattr(b, self.windowed_layer), n_classes, channels, kernel, padding, pool, pool_size,
                      pool_stride, hidden, activation, pool_padding, blur_size)


class LocalNet(LeNet):
    """LeNet with every convolution replaced by a locally connected layer: the same windows, so the same
    receptive fields and locality, but no weight sharing (each position learns its own kernel). Options as
    LeNet's.

    Set beside ``lenet`` and ``mlp`` it separates the lecture's two ingredients: locality (kept here) and
    sharing (removed), and so which of them buys robustness to shifts.
    """

    windowed_layer = "local"


class CNNGap(LayerStack):
    """Fully convolutional, circular padding, global pooling, linear classifier.

    Every layer commutes with circular shifts and global pooling forgets position, so the logits are exactly
    invariant to every circular shift of the input. By default every layer has stride 1 and dilations grow the
    receptive field to cover the object without any subsampling (a fixed stride would break exact invariance).
    ``downsample`` subsamples after a layer's activation by adaptive polyphase sampling (Chaman & Dokmanic
    2021) instead: the kept phase follows the content, so invariance stays exact while the later layers run
    at a fraction of the resolution (``cnn_aps`` in the zoo). ``downsample_mode`` swaps that ingredient to see
    its share: ``blur`` (a binomial low-pass, then subsampling: Zhang 2019), ``fourier`` (an ideal low-pass, then
    subsampling) or ``subsample`` (neither). Global max pooling is the default: global mean pooling underfits at
    affordable widths (conf/model/cnn_gap.yaml has the measurements).
    """

    def __init__(self, input_shape: Sequence[int], n_classes: int, *,
                 channels: Sequence[int] = (8, 16, 32), kernel: int | Sequence[int] = 3,
                 dilations: Sequence[int] = (1, 3, 9), padding: str = "CIRCULAR",
                 global_pool: str = "max", activation: str = "relu", downsample: Sequence[int] | None = None,
                 downsample_mode: str = "aps", rngs: nnx.Rngs):
        if downsample_mode not in DOWNSAMPLE_MODES:
            raise ValueError(unknown("downsample_mode", downsample_mode, DOWNSAMPLE_MODES))
        if len(channels) != len(dilations):
            raise ValueError(f"channels {list(channels)} and dilations {list(dilations)} "
                             "must have the same length (one per conv layer)")
        downsample = [1] * len(channels) if downsample is None else list(downsample)
        if len(downsample) != len(channels):
            raise ValueError(f"downsample {downsample} must give one stride per conv layer, {len(channels)} here "
                             "(as many as channels; a stride of 1 keeps the resolution)")
        b = _Builder(self, input_shape, rngs)
        for i, (width, dilation, stride) in enumerate(zip(channels, dilations, downsample), start=1):
            b.conv(f"conv{i}", int(width), kernel, dilation=int(dilation), padding=padding)
            b.activation(f"act{i}", activation)
            if stride != 1:
                if downsample_mode == "aps":
                    b.polyphase(f"aps{i}", stride)
                elif downsample_mode == "blur":  # Zhang (2019): a binomial low-pass, then subsampling
                    b.blur(f"blur{i}", 3, stride, "CIRCULAR")
                else:  # an ideal low-pass (Fourier) or nothing before subsampling
                    from equivar import alias_free as af

                    layer = af.FourierDownsample(stride) if downsample_mode == "fourier" else af.Subsample(stride)
                    if downsample_mode == "fourier" and any(n % stride for n in b.spatial):
                        raise ValueError(f"layer conv{i}: ideal downsampling by {stride} needs sizes divisible by "
                                         f"{stride}, got {b.spatial}")
                    b._add(f"down{i}", layer)
                    b.spatial = tuple(-(-n // stride) for n in b.spatial)
        b.global_pool("global_pool", global_pool)
        b.dense("logits", n_classes)
        b.finish()


class Stack(LayerStack):
    """Any stack of layers written in config, for anatomy and ablations: a list of layer dicts, each with a
    ``type`` (conv, local, pool, blur, polyphase, activation, flatten, global_pool, dense), an optional
    ``name`` and the layer's arguments, e.g. ``{type: conv, features: 8, kernel: 3, stride: 2, dilation: 1,
    padding: SAME}``, ``{type: pool, kind: max, window: 2}``, ``{type: activation, fn: relu}`` (none: a linear
    classifier). A flatten is added before the classifier when the stack has none.
    """

    def __init__(self, input_shape: Sequence[int], n_classes: int, *, layers: Sequence[dict[str, Any]] = (),
                 rngs: nnx.Rngs):
        b = _Builder(self, input_shape, rngs)
        methods: dict[str, Callable[..., None]] = {
                   "conv": b.conv, "local": b.local, "pool": b.pool, "blur": b.blur, "polyphase": b.polyphase,
                   "activation": b.activation, "flatten": b.flatten, "global_pool": b.global_pool,
                   "dense": b.dense}
        for i, spec in enumerate(layers, start=1):
            spec = dict(spec)
            kind = spec.pop("type", None)
            if kind not in methods:
                raise ValueError(f"layer {i}: " + unknown("type", kind, sorted(methods)))
            name = str(spec.pop("name", f"{kind}{i}"))
            check_keywords(methods[kind], spec, f"layer {i} ({kind})", skip=("name",))
            try:
                methods[kind](name, **spec)
            except TypeError as err:
                raise ValueError(f"layer {i} ({kind}): {err}") from None
        if b.flat is None:
            b.flatten()
        b.dense("logits", n_classes)
        b.finish()


class GroupPoolNet(LayerStack):
    """Pooling across feature maps (the lecture): every convolution's filters are tied to their rotated copies
    (2D: 0/90/180/270 degrees; 1D: reversal) and, with ``pool_copies``, a max over the copies follows; then
    global pooling and a linear classifier. With pooling over copies the logits are exactly invariant to
    rotating (1D: reversing) a square input; ``pool_copies=false`` is the same net without the cross-map pool
    (its channels keep the orientation).
    """

    def __init__(self, input_shape: Sequence[int], n_classes: int, *, channels: Sequence[int] = (8, 16, 32),
                 kernel: int | Sequence[int] = 3, dilations: Sequence[int] = (1, 2, 4), pool_copies: bool = True,
                 global_pool: str = "max", activation: str = "relu", rngs: nnx.Rngs):
        if len(channels) != len(dilations):
            raise ValueError(f"group_pool: channels {list(channels)} and dilations {list(dilations)} must have "
                             "the same length")
        b = _Builder(self, input_shape, rngs)
        for i, (width, dilation) in enumerate(zip(channels, dilations), start=1):
            b.group_conv(f"conv{i}", int(width), kernel, dilation=int(dilation), pool_copies=bool(pool_copies))
            b.activation(f"act{i}", activation)
        b.global_pool("global_pool", global_pool)
        b.dense("logits", n_classes)
        b.finish()


# The constructor contract every model follows, the zoo's and a user's alike (conf/model/*.yaml name them by
# Hydra's ``_target_``): ``Model(input_shape, n_classes, *, rngs, **options)`` with ``input_shape`` the
# channels-last shape of one example (``(L, C)`` or ``(H, W, C)``), returning an ``nnx.Module`` whose
# ``__call__(x)`` maps a batch ``(N, *input_shape)`` to logits ``(N, n_classes)``.
CONTRACT_ARGS = ("input_shape", "n_classes", "rngs")


def resolve_target(target: str | type, where: str = "model") -> type:
    """The model class a ``_target_`` names (``package.module.Class``), imported as Hydra does; a one-line
    ConfigError when it cannot be imported or is not a Flax module class (a config, or a run folder's record
    read by ``load_from``, cannot make equivar build any other kind of object)."""
    return locate_class(target, f"{where}._target_", (nnx.Module, linen.Module),
                        "a model class (a flax.nnx.Module or flax.linen.Module subclass)")


def model_options(cls: type) -> tuple[list[str], bool]:
    """The keyword options a model class accepts beyond the contract, and whether it takes ``**kwargs`` (a
    Linen class: its dataclass fields but the ones equivar fills in)."""
    if is_linen_class(cls):
        return linen_options(cls), False
    params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]  # the class's own constructor
    names = [p for p in params if p != "self" and p not in CONTRACT_ARGS
             and params[p].kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
    open_ended = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    missing = [a for a in CONTRACT_ARGS if a not in params and not open_ended]
    if missing:
        raise ConfigError(f"{cls.__module__}.{cls.__qualname__} does not follow the model contract "
                          f"Model(input_shape, n_classes, *, rngs, **options): no {', '.join(missing)} argument")
    return names, open_ended


def build_model(target: str | type, input_shape: Sequence[int], n_classes: int, options: dict[str, Any],
                rngs: nnx.Rngs, where: str = "model") -> nnx.Module:
    """Builds ``target(input_shape, n_classes, rngs=rngs, **options)``; bad options, impossible shapes and
    models that break the contract give one-line ConfigErrors that name ``where`` (e.g. ``zoo.lenet``)."""
    cls = resolve_target(target, where)
    accepted, open_ended = model_options(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown and not open_ended:
        hints = [f"{u!r}" + (f" (did you mean {close[0]!r}?)" if (close := nearest(u, accepted)) else "")
                 for u in unknown]
        raise ConfigError(f"{where} ({cls.__name__}) has no option {', '.join(hints)}; valid options: "
                          f"{', '.join(accepted) or 'none'}")
    try:
        if is_linen_class(cls):
            model = build_linen(cls, input_shape, n_classes, options, rngs)
        else:
            model = cls(tuple(int(n) for n in input_shape), int(n_classes), rngs=rngs, **options)
    except (ValueError, TypeError, RuntimeError) as err:  # bad option values and impossible shapes
        raise ConfigError(f"{where} ({cls.__name__}) on input {tuple(input_shape)}: {construction_message(err)}"
                          ) from err
    if not isinstance(model, nnx.Module):
        raise ConfigError(f"{where}: {cls.__name__}(...) built a {type(model).__name__}, not a flax.nnx.Module")
    return model


_STATIC_DATA = re.compile(r"Found data on value of type '<class '(\w+)'>' assigned to static attribute '(\w+)'")
_CONTAINERS = {"list": "nnx.List([...])", "tuple": "nnx.List([...])", "dict": "nnx.Dict({...})"}


def construction_message(err: BaseException) -> str:
    """One line for an error a model's constructor raised, with the fix where flax's message puts it on later
    lines (flax refuses modules kept in a plain list or dict, and lists its options below the first line)."""
    text = str(err).strip()
    if match := _STATIC_DATA.search(text):
        kind, attribute = match.groups()
        wrap = _CONTAINERS.get(kind, "nnx.data(...)")
        return (f"attribute {attribute!r} holds modules or arrays in a plain {kind}, which flax.nnx does not track; "
                f"wrap it on assignment: self.{attribute} = {wrap}")
    first, _, rest = text.partition("\n")
    if "following options" in first and rest.strip():  # a flax error whose fixes follow: keep the first one
        option = next((line.strip() for line in rest.splitlines() if line.strip()), "")
        return f"{first} {option}"
    return first


def check_kernel_ranks(calls: Sequence[Any], where: str) -> None:
    """Every convolution's kernel has as many axes as its input has spatial axes. flax's ``Conv`` treats the
    extra leading axes of its input as batch axes, so a 1D kernel on images trains without a word while
    never mixing the rows: refused here, before training."""
    for call in calls:
        kernel = getattr(call.module, "kernel_size", None)
        x = call.input
        if not isinstance(kernel, (tuple, list)) or not hasattr(x, "ndim") or x.ndim - 2 <= len(kernel):
            continue
        spatial = tuple(x.shape[1:-1])
        raise ConfigError(
            f"{where}: layer {call.name!r} ({type(call.module).__name__}) has a {len(kernel)}D kernel "
            f"{tuple(kernel)} but gets {len(spatial)}D input {spatial} (channels last); flax would treat the "
            f"extra axes as batch axes and never mix them; give it {len(spatial)} kernel sizes, e.g. "
            f"kernel_size=(k,) * (len(input_shape) - 1)")


def check_model(target: str | type, input_shape: Sequence[int], n_classes: int, options: dict[str, Any],
                where: str = "model") -> None:
    """Builds the model abstractly (no arrays allocated) and checks it maps ``(2, *input_shape)`` to logits
    ``(2, n_classes)``: every option and shape problem surfaces before any data is read or trained on. Each
    distinct check runs once per process (a sweep or a run that builds a model again reuses the answer)."""
    name = target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"
    signature = json.dumps([name, [int(n) for n in input_shape], int(n_classes), options, where], sort_keys=True,
                           default=repr)
    if signature in _CHECKED:
        return

    n_variables = 0

    def shapes():
        nonlocal n_variables
        model = build_model(target, input_shape, n_classes, options, nnx.Rngs(0), where)
        n_variables = len(jax.tree.leaves(nnx.state(model)))
        out, calls, _ = capture(to_inference(model), jax.numpy.zeros((2, *input_shape), jax.numpy.float32))
        check_kernel_ranks(calls, where)
        return out

    try:
        out = nnx.eval_shape(shapes)
    except ConfigError as err:  # raised inside a JAX trace, which appends a note on its frames: one line only
        raise ConfigError(str(err).split("\n")[0]) from None
    except Exception as err:  # the forward pass itself fails: name the model and the input it got
        raise ConfigError(f"{where} on input {tuple(input_shape)}: its forward pass fails: "
                          f"{type(err).__name__}: {str(err).strip().splitlines()[0]}") from err
    if getattr(out, "shape", None) != (2, n_classes):
        raise ConfigError(f"{where} maps a batch of shape {(2, *input_shape)} to {getattr(out, 'shape', out)}; "
                          f"a classifier must return logits of shape (batch, {n_classes})")
    if n_variables == 0:  # every seed would be the same function, and the seed axis of its variables is empty
        raise ConfigError(f"{where} holds no variables (no nnx.Param, no state): there is nothing to train and "
                          "nothing that differs between seeds; give it at least one parameter")
    _CHECKED.add(signature)


_CHECKED: set[str] = set()  # the checks passed in this process (json of target, shape, classes, options, where)



class PaperLinear(nnx.Module):
    """The MNIST-1D paper's logistic regression (``LinearBase``): flatten, one linear layer."""

    def __init__(self, input_shape: Sequence[int], n_classes: int, *, rngs: nnx.Rngs):
        self.flatten = Flatten()
        self.logits = nnx.Linear(_prod(input_shape), n_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.logits(self.flatten(x))


class PaperMLP(nnx.Module):
    """The MNIST-1D paper's MLP (``MLPBase``): ``h = relu(W1 x); h = h + relu(W2 h); logits = W3 h``."""

    def __init__(self, input_shape: Sequence[int], n_classes: int, *, hidden: int = 100, rngs: nnx.Rngs):
        self.flatten = Flatten()
        self.fc1 = nnx.Linear(_prod(input_shape), hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.logits = nnx.Linear(hidden, n_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.fc1(self.flatten(x)))
        h = h + jax.nn.relu(self.fc2(h))
        return self.logits(h)


class PaperCNN(LayerStack):
    """The MNIST-1D paper's CNN (``ConvBase``): three stride-2 convolutions (kernels 5, 3, 3; one position
    of zero padding on each side; 25 channels), ReLU after each, flatten, linear. On length 40: 19, 10, 5."""

    def __init__(self, input_shape: Sequence[int], n_classes: int, *, channels: int = 25, rngs: nnx.Rngs):
        b = _Builder(self, input_shape, rngs)
        for i, kernel in enumerate((5, 3, 3), start=1):
            b.padded_conv(f"conv{i}", int(channels), kernel, stride=2, pad=1)
            b.activation(f"act{i}", "relu")
        b.flatten()
        b.dense("logits", n_classes)
        b.finish()
