"""unseen_positions: placement on the canvas, the measured facts on tiny data, the transfer start, bad options."""

import jax
import numpy as np
import pytest

from equivar.errors import ConfigError
from equivar.experiment import read_result
from equivar.run import run_experiment
from equivar.transforms import shift_many

from support import TINY, compose_raw, validate_metrics

from equivar.experiments.unseen_positions import place, positions  # isort: skip

UNSEEN_TINY = TINY + ["dataset=synthetic", "dataset.n_train=384", "dataset.n_test=64", "dataset.size=12",
                      "dataset.noise=0.02", "unseen_positions.regions=[1,3]", "unseen_positions.position_step=2"]


@pytest.mark.parametrize("rank", [1, 2])
def test_a_pattern_at_any_position_is_the_canvas_at_zero_rolled_there(rank):
    # The test placements are rolls of the canvas holding the pattern at position 0: exact, since no position
    # lets the pattern wrap. Checked against placing it directly, for every position of the grid.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, *(5,) * rank, 2)).astype(np.float32)
    margin = 4
    grid = positions(margin, 1, rank)
    assert len(grid) == (margin + 1) ** rank and grid.max() == margin
    at_zero = place(x, np.zeros((3, rank), np.int32), margin, background=0.5)
    rolled = np.asarray(shift_many(jax.numpy.asarray(at_zero), jax.numpy.asarray(grid), "roll"))
    for i, p in enumerate(grid):
        np.testing.assert_array_equal(rolled[i], place(x, np.tile(p, (3, 1)), margin, background=0.5))
    assert positions(5, 2, 1)[:, 0].tolist() == [0, 2, 4, 5]  # the far edge is always tested


def test_tiny_run_exactly_invariant_net_generalises_everywhere_and_mlp_does_not(tmp_path):
    # cnn_gap (circular padding, stride 1, global max pool) is exactly invariant to circular shifts, and every
    # test placement is one: its accuracy is the same at every position, seen or not, for every seed. The MLP
    # trained at one position is measurably worse at the unseen ones.
    raw = compose_raw(["experiment=unseen_positions", "models=[mlp,cnn_gap]", *UNSEEN_TINY,
                       "train.epochs=15", "unseen_positions.transfer=false"])
    result = run_experiment(raw, tmp_path)
    assert read_result(tmp_path).model_dump_json() == result.model_dump_json()
    validate_metrics(tmp_path)
    assert set(result.models) == {"mlp_region1", "mlp_region3", "cnn_gap_region1", "cnn_gap_region3"}
    grid = np.asarray(result.positions)
    assert grid.shape == (len(range(0, 13, 2)), 1) and result.canvas_shape == [24]
    for k in (1, 3):
        gap = result.models[f"cnn_gap_region{k}"]
        assert np.ptp(gap.accuracy_by_position.mean) == 0 and np.ptp(gap.accuracy_by_position.std) == 0
        assert gap.seen_accuracy == gap.unseen_accuracy
        mlp = result.models[f"mlp_region{k}"]
        assert mlp.unseen_accuracy.mean < mlp.seen_accuracy.mean - 0.1
    summary = (tmp_path / "summary.md").read_text()
    assert "| cnn_gap | 1 |" in summary and "Transfer" not in summary
    assert {p.name for p in tmp_path.glob("*.png")} >= {"unseen_positions.png", "unseen_by_region.png"}


@pytest.mark.slow
def test_tiny_2d_run_with_transfer_draws_maps_and_starts_from_the_pretrained_seeds(tmp_path):
    raw = compose_raw(["experiment=unseen_positions", "models=[lenet,cnn_gap]", *UNSEEN_TINY,
                       "dataset.rank=2", "dataset.size=8", "unseen_positions.regions=[1,2]",
                       "train.batch_size=16"])
    result = run_experiment(raw, tmp_path)
    validate_metrics(tmp_path)
    stages = {k: r.stage for k, r in result.models.items()}
    assert stages["lenet_pretrain"] == "pretrain" and stages["cnn_gap_transfer"] == "transfer"
    assert result.models["lenet_pretrain"].classes == [0, 1] and result.models["lenet_transfer"].classes == [2, 3]
    assert result.models["lenet_pretrain"].unseen_accuracy is None  # trained everywhere: nothing unseen
    assert len(result.positions) == result.grid_shape[0] * result.grid_shape[1] == 25
    for name in ("lenet_transfer", "cnn_gap_scratch"):  # fine-tuning on the second half only
        assert result.models[name].training is not None
    assert {p.name for p in tmp_path.glob("*.png")} >= {"unseen_positions.png", "unseen_by_region.png",
                                                         "unseen_transfer.png"}
    # the fine-tuned checkpoint differs from a model trained from scratch on the same data
    from equivar.checkpoints import load

    transfer = load(tmp_path, "lenet_transfer", None, None, (16, 16, 1), 4)
    scratch = load(tmp_path, "lenet_scratch", None, None, (16, 16, 1), 4)
    leaves = zip(jax.tree.leaves(transfer.params), jax.tree.leaves(scratch.params))
    assert any(not np.allclose(a, b) for a, b in leaves)


def test_fine_tuning_starts_from_the_given_seeds(tmp_path):
    # obtain(start=...) continues every seed from the same seed of ``start`` with a fresh optimizer: with a
    # learning rate too small to move float32 weights, the result is ``start``'s parameters.
    from equivar.config import parse_config
    from equivar.data import load_dataset
    from equivar.experiment import obtain

    raw = compose_raw(["experiment=shift_test", "dataset=synthetic", "n_seeds=2", "train.epochs=1",
                       "train.batch_size=64", "train.min_steps=0", "zoo.lenet.channels=[2,2]",
                       "zoo.lenet.hidden=[8]", "train.tensorboard=false"])
    config = parse_config(raw)
    data = load_dataset(config.dataset)
    spec = next(s for s in config.models if s.name == "lenet")
    first = obtain(config, data, tmp_path, "first", spec.target, spec.options, config.plan())
    tiny_lr = parse_config(raw | {"train": raw["train"] | {"learning_rate": 1e-30}})
    again = obtain(tiny_lr, data, tmp_path, "again", spec.target, spec.options, config.plan(), start=first)
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    fresh = obtain(tiny_lr, data, tmp_path, "fresh", spec.target, spec.options, config.plan())
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first.params),
                                                         jax.tree.leaves(fresh.params)))


@pytest.mark.parametrize("override, message", [
    ("unseen_positions.regions=[1,30]", "a region of 30 positions from region_start=0 does not fit the 25 "
                                        "positions per axis (margin 24); use sizes <= 25"),
    ("unseen_positions.region_start=20", "a region of 15 positions from region_start=20 does not fit"),
])
def test_a_region_that_does_not_fit_is_one_line_before_any_training(override, message, tmp_path):
    raw = compose_raw(["experiment=unseen_positions", "dataset=synthetic", override])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_experiment(raw, tmp_path)
    assert not (tmp_path / "checkpoints").exists()
