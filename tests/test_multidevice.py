"""Seeds spread over several devices, side by side (loop) or sharded (vmap), give the same models as one device
(CPU devices forced by XLA_FLAGS)."""

import os
import subprocess
import sys

import numpy as np
import pytest

WORKER = r"""
import sys
import jax, jax.numpy as jnp, numpy as np
from equivar.data import Synthetic
from equivar.models import build_model
from equivar.execution import plan_execution
from equivar.train import SeedTrainer, TrainOptions, init_states, make_optimizer, seed_keys

data = Synthetic(rank=2, size=10, n_classes=3, n_train=64, n_test=8, seed=2).load()
spec = TrainOptions(epochs=2, batch_size=16, learning_rate=3e-3)
tx = make_optimizer(spec)
keys = seed_keys(0, 4)
build = lambda r: build_model("equivar.models.LeNet", data.input_shape, 3, {"channels": [4, 8], "kernel": 3, "hidden": [16]}, r)
graphdef, states = init_states(build, tx, keys)
import dataclasses
plan = dataclasses.replace(plan_execution(sys.argv[2]), side_by_side_min_calls=1)  # short, but spread too
trainer = SeedTrainer(graphdef, tx, plan)
states, history = trainer.fit(states, jnp.asarray(data.x_train), jnp.asarray(data.y_train), keys, spec)
leaves = jax.tree.leaves(states.params)
np.savez(sys.argv[1], *[np.asarray(a) for a in leaves], loss=history.loss,
         n_devices=plan.n_devices, packing=plan.seed_packing,
         used=len(leaves[0].sharding.device_set), compiled=trainer.step._cache_size())
"""


def _run(tmp_path, name, n_devices, packing="auto"):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    out = tmp_path / f"{name}.npz"
    proc = subprocess.run([sys.executable, "-c", WORKER, str(out), packing], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out)


@pytest.mark.slow
def test_seeds_on_four_devices_match_one_device(tmp_path):
    one = _run(tmp_path, "one", 1)
    side_by_side = _run(tmp_path, "loop", 4)  # the CPU default: a loop, seed i on device i, steps interleaved
    sharded = _run(tmp_path, "vmap", 4, "vmap")
    assert int(one["n_devices"]) == 1 and str(one["packing"]) == "loop"
    assert int(side_by_side["n_devices"]) == 4 and str(side_by_side["packing"]) == "loop"
    assert int(side_by_side["used"]) == 1  # the seeds come back stacked on the first device
    assert int(side_by_side["compiled"]) == 4  # after training one seed on each of the four devices
    assert int(sharded["n_devices"]) == 4 and str(sharded["packing"]) == "vmap"
    assert int(sharded["used"]) == 4  # the trained parameters live on all four devices
    keys = [k for k in one.files if k.startswith("arr_")]
    assert keys
    for k in keys:
        np.testing.assert_array_equal(side_by_side[k], one[k])  # the same program on each device
        np.testing.assert_allclose(sharded[k], one[k], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(side_by_side["loss"], one["loss"])
    np.testing.assert_allclose(sharded["loss"], one["loss"], rtol=1e-4)
