"""The attention and token-mixing zoo (equivar/attention.py): every model builds from its conf YAML in 1D and 2D;
the circular transformer's logits are unchanged by every integer circular shift; the alias-free ViT's logits
are unchanged by half- and quarter-sample Fourier shifts, untrained and after Adam steps, while its aliasing
twin's move; the plain ViT moves (the tests can fail).

Tolerances: 1e-5 (absolute for the circular transformer's logits, whose order of summation is all a roll
changes; relative to the largest logit for the alias-free ViT, whose FFTs, sums and products round at 1.2e-7
each: measured 4e-7 to 4e-6). The aliasing twin moves by 0.3 to 0.9 relative.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from equivar import alias_free as af
from equivar import attention
from equivar.errors import ConfigError
from equivar.models import build_model, check_model
from equivar.transforms import fourier_shift, shift, shift_grid

from support import target, zoo_options

NAMES = ["vit", "circular_transformer", "alias_free_vit", "mixer"]
SHAPES = {"1d": (40, 1), "2d": (12, 12, 1)}
TINY = {"dim": 8, "depth": 1, "heads": 2}  # the zoo's structure (patch, kernel, pooling) at an eighth of the width
TINY_MIXER = {"dim": 8, "depth": 1, "token_mlp": 8, "channel_mlp": 16}
TWIN = {"activation": "gelu", "downsample_mode": "subsample", "norm": "layer"}
TOL = 1e-5


def _tiny(name: str) -> dict:
    return TINY_MIXER if name == "mixer" else TINY


def _build(name: str, shape, seed: int = 0, **changes) -> nnx.Module:
    return build_model(target(name), shape, 10, zoo_options(name, **changes), nnx.Rngs(seed), where=f"zoo.{name}")


def _logits(model: nnx.Module):
    return jax.jit(lambda x: model(x))


def _relative(a: jax.Array, b: jax.Array) -> float:
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


def _fourier(x: jax.Array, s: float) -> jax.Array:
    return fourier_shift(x, (s,) * (x.ndim - 2))


def _randomise(model: nnx.Module, key: jax.Array, scale: float = 0.5) -> nnx.Module:
    """Every parameter moved by a random normal step: the zero-initialised ones (biases, the circular offset
    bias) get values, so an invariance cannot hold by their being zero."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit  # one dispatch: eager, the per-leaf random draws take seconds
    def moved(params):
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(key, len(leaves))
        return jax.tree.unflatten(treedef, [p + scale * jax.random.normal(k, p.shape, p.dtype)
                                            for p, k in zip(leaves, keys)])

    return nnx.merge(graphdef, moved(params), rest)


def _adam_steps(model: nnx.Module, x: jax.Array, y: jax.Array, steps: int = 6,
                learning_rate: float = 1e-2) -> tuple[nnx.Module, float, float]:
    """``steps`` Adam steps on ``(x, y)``: the trained model, its loss before and after."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(learning_rate)

    def loss(p):
        logits = nnx.merge(graphdef, p, rest)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, state):
        value, grads = jax.value_and_grad(loss)(p)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state, value

    state = tx.init(params)
    first = None
    for _ in range(steps):
        params, state, value = step(params, state)
        first = float(value) if first is None else first
    return nnx.merge(graphdef, params, rest), first, float(jax.jit(loss)(params))


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("name", NAMES)
def test_every_model_builds_from_its_yaml_and_maps_a_batch_to_logits(name, shape):
    """The defaults are built abstractly (build_model under nnx.eval_shape: no arrays) and checked to map
    ``(2, *shape)`` to ``(2, 10)``; the same structure at a tiny width runs."""
    assert target(name).startswith("equivar.attention.")
    check_model(target(name), shape, 10, zoo_options(name), where=f"zoo.{name}")
    tiny = _build(name, shape, **_tiny(name))
    y = _logits(tiny)(jax.random.normal(jax.random.key(1), (3, *shape)))
    assert y.shape == (3, 10) and bool(jnp.isfinite(y).all())


def test_the_defaults_are_of_lenets_size_on_mnist1d():
    """LeNet has 123,018 parameters on (40, 1): every default is within a factor of two."""
    def count(name):  # built abstractly: shapes only
        model = nnx.eval_shape(lambda: build_model(target(name), (40, 1), 10, zoo_options(name), nnx.Rngs(0)))
        return sum(math.prod(a.shape) for a in jax.tree.leaves(nnx.state(model, nnx.Param)))

    lenet = count("lenet")
    assert lenet == 123_018
    for name in NAMES:
        assert lenet / 2 < count(name) < lenet, (name, count(name), lenet)


def test_global_layers_say_why_they_have_no_fixed_receptive_field():
    for layer in (attention.SelfAttention, attention.CircularSelfAttention, attention.CrossCovarianceAttention,
                  attention.TokenMixing, af.BandLimit, af.FourierDownsample, af.PolyActivation):
        assert "every" in layer.no_fixed_field, layer


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_circular_transformer_predicts_the_same_under_every_integer_circular_shift(shape):
    """Untrained, every parameter randomised (the offset bias too): argmax and logits (1e-5) unchanged by all
    40 rolls in 1D and all 144 in 2D, while the tokens themselves do move (the roll is not trivial)."""
    model = _randomise(_build("circular_transformer", shape, **TINY), jax.random.key(7))
    x = jax.random.normal(jax.random.key(3), (4, *shape))
    grid = jnp.asarray(shift_grid(shape[0] // 2, len(shape) - 1))
    grid = grid[jnp.all(grid < shape[0] // 2, axis=1)]  # -n/2 .. n/2 - 1: every circular shift once
    assert len(grid) == np.prod(shape[:-1])
    ref = _logits(model)(x)
    shifted = jax.jit(jax.vmap(lambda o: model(shift(x, o))))(grid)
    assert bool((shifted.argmax(-1) == ref.argmax(-1)[None]).all())
    np.testing.assert_allclose(shifted, jnp.broadcast_to(ref, shifted.shape), atol=TOL, rtol=0)
    tokens = jax.jit(lambda x: model.downsample(jax.nn.gelu(model.stem(x))))
    assert float(jnp.abs(tokens(shift(x, (1,) * (len(shape) - 1))) - tokens(x)).max()) > 1e-2


def test_circular_transformer_needs_sides_divisible_by_its_patch():
    with pytest.raises(ConfigError, match="patch 4 must divide every spatial size"):
        build_model(target("circular_transformer"), (42, 1), 10, zoo_options("circular_transformer", patch=4),
                    nnx.Rngs(0), where="zoo.circular_transformer")


@pytest.mark.parametrize("shape", [SHAPES["1d"], (16, 16, 1)], ids=["1d", "2d"])
def test_alias_free_vit_is_invariant_to_fractional_shifts_and_its_aliasing_twin_is_not(shape):
    x = jax.random.normal(jax.random.key(1), (8, *shape))
    model, twin = _build("alias_free_vit", shape, **TINY), _build("alias_free_vit", shape, **TINY, **TWIN)
    f, g = _logits(model), _logits(twin)
    y, y_twin = f(x), g(x)
    assert max(_relative(f(_fourier(x, s)), y) for s in (0.5, 0.25)) < TOL
    assert max(_relative(g(_fourier(x, s)), y_twin) for s in (0.5, 0.25)) > 1e-2  # the counter-test


@pytest.mark.slow
@pytest.mark.parametrize("part", [{"activation": "gelu"}, {"downsample_mode": "subsample"}, {"norm": "layer"}],
                         ids=["gelu", "subsample", "layernorm"])
def test_each_aliasing_part_alone_breaks_the_fractional_invariance(part):
    """GELU on the samples, plain subsampling and a per-token LayerNorm each alias: any one of them in the
    alias-free ViT moves its logits by more than 1e-2 under a half-sample shift."""
    x = jax.random.normal(jax.random.key(1), (8, 40, 1))
    f = _logits(_build("alias_free_vit", (40, 1), **TINY, **part))
    assert _relative(f(_fourier(x, 0.5)), f(x)) > 1e-2


@pytest.mark.parametrize("twin", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["alias_free", "twin"])
@pytest.mark.parametrize("shape", [SHAPES["1d"], pytest.param((16, 16, 1), marks=pytest.mark.slow)],
                         ids=["1d", "2d"])
def test_alias_free_vit_stays_invariant_after_training_steps(shape, twin):
    """After six Adam steps at 1e-2 on random data (the loss falls: the weights have moved), predictions and
    logits still do not move under half- and quarter-sample shifts; the twin trained alike does."""
    x = jax.random.normal(jax.random.key(2), (16, *shape))
    y = jax.random.randint(jax.random.key(3), (16,), 0, 10)
    model, before, after = _adam_steps(_build("alias_free_vit", shape, **TINY, **(TWIN if twin else {})), x, y)
    assert after < before
    f = _logits(model)
    ref = f(x)
    worst = max(_relative(f(_fourier(x, s)), ref) for s in (0.5, 0.25))
    if twin:
        assert worst > 1e-2
    else:
        assert worst < TOL
        assert all(bool((f(_fourier(x, s)).argmax(-1) == ref.argmax(-1)).all()) for s in (0.5, 0.25))


def test_alias_free_vit_rejects_unknown_parts():
    with pytest.raises(ConfigError, match="unknown activation 'relu'"):
        _build("alias_free_vit", (40, 1), activation="relu")
    with pytest.raises(ConfigError, match="patch 3 must divide"):
        _build("alias_free_vit", (40, 1), patch=3)


@pytest.mark.parametrize("name", ["vit", "mixer"])
def test_vit_and_mixer_are_not_shift_invariant(name):
    """The invariance tests above can fail: absolute positions and a fixed patch grid move the logits under a
    one-position roll and a half-sample shift."""
    for shape in SHAPES.values():
        model = _build(name, shape, **_tiny(name))
        f = _logits(model)
        x = jax.random.normal(jax.random.key(3), (4, *shape))
        ref = f(x)
        assert _relative(f(shift(x, (1,) * (len(shape) - 1))), ref) > 1e-2
        assert _relative(f(_fourier(x, 0.5)), ref) > 1e-2


def test_vit_class_token_pooling():
    model = _build("vit", (40, 1), pool="cls", **TINY)
    assert model.cls_token is not None and model.pos_embed.embedding[...].shape == (1, 11, 8)
    assert _logits(model)(jnp.ones((2, 40, 1))).shape == (2, 10)
    with pytest.raises(ConfigError, match="unknown pool 'max'"):
        _build("vit", (40, 1), pool="max")


@pytest.mark.slow
def test_every_instrument_takes_the_attention_family(tmp_path):
    """Trained once (tiny), reloaded by the layer-wise instruments: every model gets its per-layer Lie split,
    summing to its derivative, with the attention between its projections as a row; the exactly invariant ones
    stay exactly consistent."""
    from equivar.run import run_experiment

    from support import compose_raw

    small = [f"zoo.{m}.{k}={v}" for m in NAMES for k, v in (("dim", 8), ("depth", 1))]
    common = ["dataset=synthetic", f"models=[{','.join(NAMES)}]", *small]
    trained = run_experiment(compose_raw(["experiment=shift_test", "n_seeds=1", "train.epochs=1", *common]),
                             tmp_path / "train")
    assert trained.models["circular_transformer"].consistency.mean == 1.0
    assert trained.models["alias_free_vit"].consistency.mean == 1.0
    load = [*common, f"load_from={tmp_path / 'train'}"]
    lie = run_experiment(compose_raw(["experiment=lie_derivative", *load, "lie_derivative.n_examples=8",
                                      "lie_derivative.sawtooth_inputs=0"]), tmp_path / "lie")
    for name, m in lie.models.items():
        assert m.per_layer_unavailable is None and m.layer_sum_residual < 1e-4, name
        rows = list(m.layers["translate_x"].probs)
        assert any("softmax" in r or "TokenMixing" in r for r in rows), (name, rows)
    assert lie.models["alias_free_vit"].lee["translate_x"].probs.mse.mean < 1e-8  # invariant to Fourier shifts
    eq = run_experiment(compose_raw(["experiment=equivariance", *load, "equivariance.n_examples=8", "shift.max=2"]),
                        tmp_path / "eq")
    assert set(eq.models) == set(NAMES)
