"""The XLA:CPU speed flags equivar turns on (equivar.execution.XLA_CPU_FLAGS) must not change the numbers.

Two subprocesses compute the loss gradients of every zoo model but the MNIST-1D paper's (their dense and
strided conv layers are covered by the others), on a 1D and a 2D input, with the same
initialisation and batch: one with the flags (the default), one without (``EQUIVAR_XLA_CPU_FLAGS=off``).
A jaxlib upgrade that miscompiles under the flags fails here instead of in a user's results.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from support import ROOT, ZOO_NAMES

# Every zoo model but the MNIST-1D paper's, whose layers (dense, strided convs) the others already cover.
CHECKED = [n for n in ZOO_NAMES if not n.startswith("paper_")]

# Relative difference of each gradient array (Frobenius norms), and of the loss. The flags reorder float32
# sums; measured differences are about 1e-7, so 1e-4 leaves room for rounding and none for a miscompilation.
TOLERANCE = 1e-4

SCRIPT = r"""
import json, os, sys
import numpy as np
from equivar.execution import set_up_process
set_up_process()  # what every entry point does: sets the flags unless EQUIVAR_XLA_CPU_FLAGS=off
import jax, jax.numpy as jnp, optax
from flax import nnx
from omegaconf import OmegaConf
from equivar.models import build_model

out = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "grads": {}}
for name in sys.argv[2:]:
    entry = OmegaConf.to_container(OmegaConf.load(f"{sys.argv[1]}/{name}.yaml"))
    target = entry.pop("_target_")
    for shape in ((40, 1), (16, 16, 1)):
        model = build_model(target, shape, 10, entry, nnx.Rngs(0), where=name)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        x = jax.random.normal(jax.random.key(1), (8, *shape))
        y = jnp.arange(8) % 10

        def loss(p):
            logits = nnx.merge(graphdef, p, rest, copy=True)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        value, grads = jax.jit(jax.value_and_grad(loss))(params)
        out["grads"][f"{name}{len(shape) - 1}d"] = {"loss": float(value),
            "grads": [np.asarray(g).ravel().tolist() for g in jax.tree.leaves(grads)]}
print(json.dumps(out))
"""


def _start(flags_on: bool) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["EQUIVAR_XLA_CPU_FLAGS"] = "on" if flags_on else "off"
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(ROOT / "conf" / "model"), *CHECKED], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _result(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_speed_flags_leave_every_zoo_models_gradients_unchanged():
    from equivar.execution import XLA_CPU_FLAGS

    both = _start(True), _start(False)  # side by side: one process per core
    with_flags, without = _result(both[0]), _result(both[1])
    if not all(f in with_flags["xla_flags"] for f in XLA_CPU_FLAGS):
        pytest.skip("this jaxlib is not one equivar turns the flags on for (equivar.execution)")
    assert not any(f.split("=")[0] in without["xla_flags"] for f in XLA_CPU_FLAGS)
    assert with_flags["grads"].keys() == without["grads"].keys() and len(with_flags["grads"]) == 2 * len(CHECKED)
    worst = 0.0
    for case, a in with_flags["grads"].items():
        b = without["grads"][case]
        assert abs(a["loss"] - b["loss"]) <= TOLERANCE * abs(b["loss"]), case
        # A parameter whose exact gradient is zero (MLP-Mixer's token-mixing output bias: every later use of
        # the residual stream goes through a LayerNorm over channels, which removes a per-token constant)
        # holds rounding only; it is compared against the model's whole gradient instead of itself.
        whole = np.sqrt(sum(np.linalg.norm(np.asarray(g)) ** 2 for g in b["grads"]))
        for ga, gb in zip(a["grads"], b["grads"]):
            ga, gb = np.asarray(ga), np.asarray(gb)
            error = np.linalg.norm(ga - gb) / max(np.linalg.norm(gb), 1e-3 * whole, 1e-12)
            worst = max(worst, error)
            assert error <= TOLERANCE, f"{case}: relative gradient difference {error:.2e}"
    print(f"largest relative gradient difference with the flags: {worst:.2e}")
