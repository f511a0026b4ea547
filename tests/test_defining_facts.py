"""The facts each experiment exists to show, checked on tiny runs (not only that its files exist), and the
zoo's receptive fields and parameter totals pinned to their closed forms."""

import numpy as np
import pytest
from flax import nnx

from equivar.anatomy import anatomy
from equivar.models import build_model
from equivar.run import run_experiment

from support import TINY, compose_raw, target, zoo_options


@pytest.mark.slow
def test_pooling_invariance_global_pooling_and_aligned_aps_are_exact(tmp_path):
    """Global max pooling of circular feature maps is exactly invariant to every circular shift; global mean
    up to float32 summation order; APS is exactly the same after undoing the shift; strided max is not."""
    metrics = run_experiment(compose_raw(["experiment=pooling_invariance", "dataset=synthetic"]
                                         + TINY), tmp_path).model_dump(mode="json")
    pools = metrics["models"]
    assert pools["global_max"]["error"]["mean"] == [0.0] * len(metrics["shifts"])
    assert max(pools["global_mean"]["error"]["mean"]) < 1e-6
    for name in ("aps2", "aps4"):
        assert pools[name]["shift_aligned_error"]["mean"] == [0.0] * len(metrics["shifts"])
    assert pools["max2"]["error"]["mean"][0] == 0.0 and min(pools["max2"]["error"]["mean"][1:]) > 0.01


@pytest.mark.slow
@pytest.mark.parametrize("rank", [2])  # 1D (reversal) runs in test_seed_policy.py
def test_feature_pooling_over_transformed_copies_is_exactly_invariant(rank, tmp_path):
    """Pooled over the group's copies: the same prediction under every transform (reversal in 1D, the four
    rotations in 2D) for every test input, logits unchanged up to rounding; without the pooling, not."""
    metrics = run_experiment(compose_raw(["experiment=feature_pooling", "dataset=synthetic", f"dataset.rank={rank}",
                                          "dataset.size=12"] + TINY), tmp_path).model_dump()
    pooled, unpooled = metrics["models"]["pooled"], metrics["models"]["unpooled"]
    assert pooled["same_prediction_under_all"]["mean"] == 1.0
    assert max(v["mean"] for v in pooled["logit_change"].values()) < 1e-5
    accuracies = [v["mean"] for v in pooled["accuracy"].values()]
    assert max(accuracies) == min(accuracies)  # equal on every transformed copy of the test set
    assert max(v["mean"] for v in unpooled["logit_change"].values()) > 1e-3


@pytest.mark.slow
def test_antialiased_shift_test_compares_lenets_that_differ_only_in_pooling(tmp_path):
    default = compose_raw(["experiment=antialiased_shift_test"])
    assert [default["zoo"][m]["pool"] for m in default["models"]] == ["max", "blurmax", "aps"]
    for variant in ("lenet_blur", "lenet_aps"):
        assert {k: v for k, v in default["zoo"][variant].items() if k != "pool"} == \
            {k: v for k, v in default["zoo"]["lenet"].items() if k != "pool"}
    raw = compose_raw(["experiment=antialiased_shift_test", "dataset=synthetic", "dataset.size=14"]
                      + TINY)
    metrics = run_experiment(raw, tmp_path).model_dump()
    params = {m: metrics["models"][m]["n_params"] for m in raw["models"]}
    # Blurring adds no parameters and keeps the sizes; APS's stride-1 max loses a position per pooling
    # (pool_padding=VALID), so its dense layer is smaller.
    assert params["lenet_blur"] == params["lenet"] and params["lenet_aps"] < params["lenet"], params
    for m in raw["models"]:
        record = metrics["models"][m]
        assert record["consistency"]["mean"] == pytest.approx(np.mean(record["per_seed"]["consistency"]))


def _rows(kind, shape):
    result = anatomy(build_model(target(kind), shape, 10, zoo_options(kind), nnx.Rngs(0)), shape)
    return result, {r["layer"]: r for r in result["layers"]}


@pytest.mark.slow
def test_cnn_gap_field_is_27_before_the_global_pool():
    """Dilations 1, 3, 9 with 3-wide kernels: 1 + 2 * (1 + 3 + 9) = 27 positions, along every axis."""
    for shape in ((40, 1), (28, 28, 1)):
        _, rows = _rows("cnn_gap", shape)
        assert [rows[f"conv{i}"]["rf_forward"] for i in (1, 2, 3)] == \
            [[3] * (len(shape) - 1), [9] * (len(shape) - 1), [27] * (len(shape) - 1)]


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(40, 1), (28, 28, 1)])
def test_zoo_parameter_totals(shape):
    """Closed forms from the default options (conf/model/*.yaml), 10 classes."""
    rank = len(shape) - 1
    n_in = int(np.prod(shape))
    k3, k5 = 3 ** rank, 5 ** rank
    cnn_gap = (k3 * 1 * 8 + 8) + (k3 * 8 * 16 + 16) + (k3 * 16 * 32 + 32) + (32 * 10 + 10)
    mlp = (n_in * 512 + 512) + (512 * 512 + 512) + (512 * 10 + 10)
    # LeNet: VALID 5-wide convs and 2x2 pools: 40 -> 36 -> 18 -> 14 -> 7 (1D); 28 -> 24 -> 12 -> 8 -> 4 (2D)
    side = 7 if rank == 1 else 4
    flat = side ** rank * 32
    lenet = (k5 * 1 * 16 + 16) + (k5 * 16 * 32 + 32) + (flat * 512 + 512) + (512 * 10 + 10)
    positions1, positions2 = (36, 14) if rank == 1 else (24 ** 2, 8 ** 2)
    local = positions1 * (k5 * 16 + 16) + positions2 * (k5 * 16 * 32 + 32) + (flat * 512 + 512) + (512 * 10 + 10)
    # cnn_aps: 3-wide circular convs 16, 32, 64, 64; the polyphase downsamplers have no parameters
    cnn_aps = (k3 * 1 * 16 + 16) + (k3 * 16 * 32 + 32) + (k3 * 32 * 64 + 64) + (k3 * 64 * 64 + 64) + (64 * 10 + 10)
    for kind, expected in (("cnn_gap", cnn_gap), ("cnn_aps", cnn_aps), ("mlp", mlp), ("lenet", lenet),
                           ("local", local)):
        result, _ = _rows(kind, shape)
        assert result["total_params"] == result["model_param_total"] == expected, kind
