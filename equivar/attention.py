"""The zoo's attention and token-mixing models, written the usual way: submodules as attributes, blocks in an
``nnx.List``, plain function calls (reshape, softmax, residual sums, ``jax.nn.gelu``, the mean over tokens)
between them. Like the rest of the zoo they follow the model contract ``Model(input_shape, n_classes, *,
rngs, **options)`` and are generic over the spatial rank: ``(L, C)`` sequences and ``(H, W, C)`` images go
through the same code, with kernel tuples taken from the data's rank.

* ``ViT`` (Dosovitskiy et al. 2021): patches embedded by a strided convolution, a learned absolute position
  embedding, pre-norm transformer blocks, mean (or class-token) pooling, a linear head. Nothing in it is
  shift-invariant: the patch grid is fixed and every position has its own embedding.
* ``CircularTransformer``: exactly invariant to integer circular shifts by construction. A circular
  convolution, then adaptive polyphase sampling (Chaman & Dokmanic 2021) anchors the patch grid to the
  content; no absolute position: the attention logits get a learned bias per circular offset between the two
  tokens (``(j - i) mod n`` per axis, per head), so a circular shift of the tokens permutes everything.
* ``AliasFreeViT`` (after Michaeli & Soudry 2025, "Alias-Free ViT: Fractional Shift Invariance via Linear
  Attention"): invariant to sub-sample (Fourier) shifts. Band-limited input, a circular convolution and an
  ideal low-pass downsampling instead of a strided patchify, cross-covariance attention (XCA, El-Nouby et al.
  2021: attention between channels, from sums over all tokens, so invariant to shifts, applied per token),
  a depthwise circular convolution between tokens, an RMS normalisation over all positions and channels
  instead of the per-token LayerNorm (which aliases), MLPs with a polynomial activation evaluated at twice the
  rate, a mean over tokens. ``activation="gelu"``, ``downsample_mode="subsample"`` and ``norm="layer"`` build
  its aliasing twin from the same class.
* ``Mixer`` (MLP-Mixer, Tolstikhin et al. 2021): patches, then blocks of a token-mixing MLP (across tokens,
  through transposes) and a channel-mixing MLP, each pre-normed and residual; mean over tokens, linear head.

Layers whose every output depends on every input position (attention, token mixing, Fourier resampling)
carry ``no_fixed_field``, the reason ``equivar.anatomy`` gives instead of a receptive field.

Default sizes are of LeNet's order on MNIST-1D (LeNet: 123,018 parameters on ``(40, 1)``); conf/model/*.yaml
give them with the accuracies measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from equivar import alias_free as af
from equivar.layers import PolyphaseDownsample
from equivar.schema import unknown

POOLS = ("mean", "cls")
XCA_ACTIVATIONS = ("poly", "gelu")
XCA_DOWNSAMPLE_MODES = ("ideal", "subsample")
XCA_NORMS = ("rms", "layer")


def _patch_grid(spatial: Sequence[int], patch: int, exact: bool) -> tuple[int, ...]:
    """The token grid of ``patch``-sized patches; ``exact``: every side must be a multiple of ``patch``."""
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        raise ValueError(f"patch must be an integer >= 1, got {patch!r}")
    if exact and any(n % patch for n in spatial):
        raise ValueError(f"patch {patch} must divide every spatial size, got {tuple(spatial)}")
    grid = tuple(n // patch for n in spatial)
    if min(grid) < 1:
        raise ValueError(f"patch {patch} is larger than the input's spatial size {tuple(spatial)}")
    return grid


def _check_heads(dim: int, heads: int) -> None:
    if heads < 1 or dim % heads:
        raise ValueError(f"dim {dim} must be a positive multiple of heads {heads}")


def _hidden(dim: int, ratio: float) -> int:
    hidden = int(round(dim * ratio))
    if hidden < 1:
        raise ValueError(f"mlp_ratio {ratio} leaves no hidden units (dim {dim})")
    return hidden


def _tokens(x: jax.Array) -> jax.Array:
    """``(N, *grid, C) -> (N, T, C)``: the tokens in row-major order of the grid."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


class FeedForward(nnx.Module):
    """The per-token MLP of a transformer block: Linear, GELU (or an alias-free polynomial), Linear."""

    def __init__(self, dim: int, hidden: int, *, poly: bool = False, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(dim, hidden, rngs=rngs)
        self.act = af.PolyActivation(hidden) if poly else None  # on (N, *grid, C): resamples the grid
        self.fc2 = nnx.Linear(hidden, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.fc1(x)
        h = jax.nn.gelu(h) if self.act is None else self.act(h)
        return self.fc2(h)


class SelfAttention(nnx.Module):
    """Multi-head self-attention over ``(N, T, C)`` tokens: softmax(q k^T / sqrt(d) + bias) v, per head."""

    no_fixed_field = "attends from every token to every token: every output depends on every input position"

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        _check_heads(dim, heads)
        self.heads = heads
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)

    def bias(self, n_tokens: int) -> jax.Array | None:
        """Added to the logits ``(heads, T, T)``; none here."""
        return None

    def __call__(self, x: jax.Array) -> jax.Array:
        n, t, c = x.shape
        q, k, v = jnp.moveaxis(self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads), 2, 0)
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(c // self.heads)
        bias = self.bias(t)
        if bias is not None:
            logits = logits + bias
        weights = jax.nn.softmax(logits, axis=-1)
        return self.proj(jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, t, c))


class CircularSelfAttention(SelfAttention):
    """Self-attention on a token grid whose logits get a learned bias per circular offset between query ``i``
    and key ``j`` (``(j - i) mod n`` on each axis) and head: no absolute position, so a circular shift of the
    tokens permutes queries, keys and outputs alike."""

    def __init__(self, dim: int, heads: int, grid: Sequence[int], *, rngs: nnx.Rngs):
        super().__init__(dim, heads, rngs=rngs)
        self.grid = tuple(int(n) for n in grid)
        self.offset_bias = nnx.Param(jnp.zeros((heads, *self.grid), jnp.float32))

    def bias(self, n_tokens: int) -> jax.Array:
        coords = np.unravel_index(np.arange(n_tokens), self.grid)  # each token's position, per axis
        offsets = tuple((c[None, :] - c[:, None]) % n for c, n in zip(coords, self.grid))  # (T, T) each
        return self.offset_bias[...][(slice(None), *offsets)]


class CrossCovarianceAttention(nnx.Module):
    """XCA (El-Nouby et al. 2021) on a token grid ``(N, *grid, C)``: per head, the queries and keys are
    normalised over the tokens, ``A = softmax(tau q^T k)`` (``d x d``, between channels) is a sum over every
    token, and each token's output is ``A`` applied to its value. Sums over all tokens do not change when a
    band-limited signal is shifted (Parseval), so ``A`` is shift-invariant and the output shift-equivariant."""

    no_fixed_field = "mixes channels by weights summed over every token: every output depends on every position"

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        _check_heads(dim, heads)
        self.heads = heads
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.temperature = nnx.Param(jnp.ones((heads,), jnp.float32))
        self.proj = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        t = _tokens(x)
        n, n_tokens, c = t.shape
        q, k, v = jnp.moveaxis(self.qkv(t).reshape(n, n_tokens, 3, self.heads, c // self.heads), 2, 0)
        q = q * jax.lax.rsqrt(jnp.sum(q * q, axis=1, keepdims=True) + 1e-12)  # unit norm over the tokens
        k = k * jax.lax.rsqrt(jnp.sum(k * k, axis=1, keepdims=True) + 1e-12)
        logits = jnp.einsum("nthc,nthe->nhce", q, k) * self.temperature[...][:, None, None]
        weights = jax.nn.softmax(logits, axis=-1)  # (N, heads, d, d)
        out = jnp.einsum("nhce,nthe->nthc", weights, v).reshape(n, n_tokens, c)
        return self.proj(out).reshape(x.shape)


class TokenMixing(nnx.Module):
    """MLP-Mixer's token-mixing MLP: the same MLP across the tokens of every channel (``(N, T, C)``)."""

    no_fixed_field = "mixes every token with every token: every output depends on every input position"

    def __init__(self, n_tokens: int, hidden: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(n_tokens, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, n_tokens, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.swapaxes(x, 1, 2)  # (N, C, T)
        y = self.fc2(jax.nn.gelu(self.fc1(y)))
        return jnp.swapaxes(y, 1, 2)


class PositionEmbedding(nnx.Module):
    """A learned vector per token position added to the tokens ``(N, T, C)``."""

    def __init__(self, n_tokens: int, dim: int, *, rngs: nnx.Rngs):
        self.embedding = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1, n_tokens, dim)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.embedding[...]


class ClassToken(nnx.Module):
    """Prepends a learned class token to the tokens ``(N, T, C) -> (N, T + 1, C)``."""

    def __init__(self, dim: int):
        self.token = nnx.Param(jnp.zeros((1, 1, dim), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([jnp.broadcast_to(self.token[...], (x.shape[0], 1, x.shape[-1])), x], axis=1)


class TransformerBlock(nnx.Module):
    """Pre-norm: ``x + attention(LayerNorm(x))``, then ``x + MLP(LayerNorm(x))``, on tokens ``(N, T, C)``."""

    def __init__(self, dim: int, attention: SelfAttention, hidden: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = attention
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp = FeedForward(dim, hidden, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nnx.Module):
    """Vision transformer: strided-conv patch embedding, learned absolute positions, ``depth`` pre-norm blocks,
    a final LayerNorm, the mean over tokens (``pool="cls"``: a class token's output instead), a linear head.
    1D MNIST-1D (length 40) with patch 4: 10 tokens; 28x28 MNIST: 49."""

    def __init__(self, input_shape: Sequence[int], n_classes: int, *, patch: int = 4, dim: int = 64,
                 depth: int = 3, heads: int = 4, mlp_ratio: float = 2.0, pool: str = "mean", rngs: nnx.Rngs):
        if pool not in POOLS:
            raise ValueError(unknown("pool", pool, POOLS))
        *spatial, channels = input_shape
        rank = len(spatial)
        n_tokens = math.prod(_patch_grid(spatial, patch, exact=False))
        self.pool = pool
        self.patch_embed = nnx.Conv(channels, dim, (patch,) * rank, strides=(patch,) * rank, padding="VALID",
                                    rngs=rngs)
        self.cls_token = ClassToken(dim) if pool == "cls" else None
        self.pos_embed = PositionEmbedding(n_tokens + (pool == "cls"), dim, rngs=rngs)
        hidden = _hidden(dim, mlp_ratio)
        self.blocks = nnx.List([TransformerBlock(dim, SelfAttention(dim, heads, rngs=rngs), hidden, rngs=rngs)
                                for _ in range(depth)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, n_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _tokens(self.patch_embed(x))
        if self.cls_token is not None:
            x = self.cls_token(x)
        x = self.pos_embed(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(x[:, 0] if self.pool == "cls" else x.mean(axis=1))


class CircularTransformer(nnx.Module):
    """A transformer exactly invariant to integer circular shifts: a circular convolution (``kernel`` wide),
    GELU, adaptive polyphase sampling by ``patch`` (each example keeps the phase of largest norm, so the patch
    grid follows the content), ``depth`` pre-norm blocks whose attention has a learned bias per circular
    offset and head (no absolute position), LayerNorm, the mean over tokens, a linear head.

    A circular shift of the input shifts the convolution's output, the polyphase choice turns it into a
    circular shift of the tokens, and every later layer commutes with that permutation: the logits do not
    change (every spatial size must be a multiple of ``patch``)."""

    def __init__(self, input_shape: Sequence[int], n_classes: int, *, patch: int = 2, kernel: int = 5,
                 dim: int = 64, depth: int = 3, heads: int = 4, mlp_ratio: float = 2.0, rngs: nnx.Rngs):
        *spatial, channels = input_shape
        rank = len(spatial)
        grid = _patch_grid(spatial, patch, exact=True)
        self.stem = nnx.Conv(channels, dim, (kernel,) * rank, padding="CIRCULAR", rngs=rngs)
        self.downsample = PolyphaseDownsample((patch,) * rank)
        hidden = _hidden(dim, mlp_ratio)
        self.blocks = nnx.List([
            TransformerBlock(dim, CircularSelfAttention(dim, heads, grid, rngs=rngs), hidden, rngs=rngs)
            for _ in range(depth)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, n_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _tokens(self.downsample(jax.nn.gelu(self.stem(x))))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(axis=1))


class AliasFreeBlock(nnx.Module):
    """XCiT's block on a token grid ``(N, *grid, C)``: ``x + XCA(norm(x))``, ``x + local(norm(x))`` (a depthwise
    circular convolution between neighbouring tokens), ``x + MLP(norm(x))``."""

    def __init__(self, dim: int, heads: int, hidden: int, rank: int, *, local_kernel: int, poly: bool,
                 norm: str, rngs: nnx.Rngs):
        def make_norm() -> nnx.Module:
            return af.RMSNorm(dim) if norm == "rms" else nnx.LayerNorm(dim, rngs=rngs)

        self.norm1 = make_norm()
        self.attn = CrossCovarianceAttention(dim, heads, rngs=rngs)
        self.norm_local = make_norm() if local_kernel else None
        self.local = nnx.Conv(dim, dim, (local_kernel,) * rank, feature_group_count=dim, padding="CIRCULAR",
                              rngs=rngs) if local_kernel else None
        self.norm2 = make_norm()
        self.mlp = FeedForward(dim, hidden, poly=poly, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        if self.local is not None and self.norm_local is not None:
            x = x + self.local(self.norm_local(x))
        return x + self.mlp(self.norm2(x))


class AliasFreeViT(nnx.Module):
    """A vision transformer invariant to sub-sample (Fourier) shifts, after Michaeli & Soudry (2025).

    The input is band-limited strictly below Nyquist; the patch embedding is a circular convolution (``kernel``
    wide), an RMS normalisation, a polynomial activation at twice the rate and an ideal low-pass downsampling
    by ``patch``, instead of a strided patchify; ``depth`` XCiT blocks (cross-covariance attention, a depthwise
    circular convolution of ``local_kernel`` taps, an MLP with the polynomial activation), each pre-normed by
    an RMS normalisation over all positions and channels (shift-invariant) and residual; a final RMS
    normalisation, the mean over tokens (the DC coefficient), a linear head. No absolute position. Every map
    keeps the signal band-limited and commutes with every circular Fourier shift, so the logits are invariant
    to shifts by any real offset up to float rounding (every spatial size must be a multiple of ``patch``).

    ``activation="gelu"``, ``downsample_mode="subsample"`` and ``norm="layer"`` (per-token LayerNorm) build the
    same net from aliasing parts: its twin, which moves under fractional shifts.
    """

    def __init__(self, input_shape: Sequence[int], n_classes: int, *, patch: int = 2, kernel: int = 5,
                 dim: int = 64, depth: int = 3, heads: int = 4, mlp_ratio: float = 2.0, local_kernel: int = 3,
                 activation: str = "poly", downsample_mode: str = "ideal", norm: str = "rms", rngs: nnx.Rngs):
        if activation not in XCA_ACTIVATIONS:
            raise ValueError(unknown("activation", activation, XCA_ACTIVATIONS))
        if downsample_mode not in XCA_DOWNSAMPLE_MODES:
            raise ValueError(unknown("downsample_mode", downsample_mode, XCA_DOWNSAMPLE_MODES))
        if norm not in XCA_NORMS:
            raise ValueError(unknown("norm", norm, XCA_NORMS))
        if isinstance(local_kernel, bool) or not isinstance(local_kernel, int) or local_kernel < 0:
            raise ValueError(f"local_kernel must be an integer >= 0 (0: no local mixing), got {local_kernel!r}")
        *spatial, channels = input_shape
        rank = len(spatial)
        _patch_grid(spatial, patch, exact=True)
        poly = activation == "poly"
        self.band_limit = af.BandLimit()
        self.stem = nnx.Conv(channels, dim, (kernel,) * rank, padding="CIRCULAR", rngs=rngs)
        self.stem_norm = af.RMSNorm(dim) if norm == "rms" else nnx.LayerNorm(dim, rngs=rngs)
        self.stem_act = af.PolyActivation(dim) if poly else None
        self.downsample = af.FourierDownsample(patch) if downsample_mode == "ideal" else af.Subsample(patch)
        hidden = _hidden(dim, mlp_ratio)
        self.blocks = nnx.List([AliasFreeBlock(dim, heads, hidden, rank, local_kernel=local_kernel, poly=poly,
                                               norm=norm, rngs=rngs) for _ in range(depth)])
        self.norm = af.RMSNorm(dim) if norm == "rms" else nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, n_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.stem_norm(self.stem(self.band_limit(x)))
        x = jax.nn.gelu(x) if self.stem_act is None else self.stem_act(x)
        x = self.downsample(x)  # (N, *grid, dim): the token grid, kept as a grid for the Fourier layers
        for block in self.blocks:
            x = block(x)
        return self.head(_tokens(self.norm(x)).mean(axis=1))


class MixerBlock(nnx.Module):
    """``x + TokenMixing(LayerNorm(x))``, then ``x + ChannelMLP(LayerNorm(x))``, on tokens ``(N, T, C)``."""

    def __init__(self, n_tokens: int, dim: int, token_mlp: int, channel_mlp: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.token_mixing = TokenMixing(n_tokens, token_mlp, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.channel_mixing = FeedForward(dim, channel_mlp, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.token_mixing(self.norm1(x))
        return x + self.channel_mixing(self.norm2(x))


class Mixer(nnx.Module):
    """MLP-Mixer (Tolstikhin et al. 2021): strided-conv patch embedding, ``depth`` mixer blocks (token mixing
    with ``token_mlp`` hidden units, channel mixing with ``channel_mlp``), LayerNorm, the mean over tokens, a
    linear head. The token-mixing weights are tied to absolute token positions."""

    def __init__(self, input_shape: Sequence[int], n_classes: int, *, patch: int = 2, dim: int = 64,
                 depth: int = 4, token_mlp: int = 32, channel_mlp: int = 128, rngs: nnx.Rngs):
        *spatial, channels = input_shape
        rank = len(spatial)
        n_tokens = math.prod(_patch_grid(spatial, patch, exact=False))
        self.patch_embed = nnx.Conv(channels, dim, (patch,) * rank, strides=(patch,) * rank, padding="VALID",
                                    rngs=rngs)
        self.blocks = nnx.List([MixerBlock(n_tokens, dim, token_mlp, channel_mlp, rngs=rngs)
                                for _ in range(depth)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, n_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _tokens(self.patch_embed(x))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(axis=1))


__all__ = ["ViT", "CircularTransformer", "AliasFreeViT", "Mixer", "SelfAttention", "CircularSelfAttention",
           "CrossCovarianceAttention", "TokenMixing"]
