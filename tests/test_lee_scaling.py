"""lee_scaling tiny: every (family, size, augmentation) trained and measured; the rank correlations are the
definition's, recomputed here from the per-seed points; the shares of each variant add up to one."""

import numpy as np
import pytest
from scipy import stats

from equivar.errors import ConfigError
from equivar.run import run_experiment

from support import TINY, compose_raw, validate_metrics

SMALL = ["experiment=lee_scaling", "dataset=synthetic", *TINY, "train.epochs=1", "models=[lenet,vit]", "shift.max=2",
        "lee_scaling.sizes={lenet:[{channels:[2,4],hidden:[8]},{channels:[4,4],hidden:[8]}],"
        "vit:[{dim:8,depth:1,heads:2}]}"]


@pytest.mark.slow
def test_lee_scaling_tiny(tmp_path, figures):
    result = run_experiment(compose_raw(SMALL), tmp_path)
    # mixer's default sizes stay in the config: models=[lenet,vit] trains those two families only
    assert list(result.models) == ["lenet_s0", "lenet_s0_aug2", "lenet_s1", "lenet_s1_aug2", "vit_s0", "vit_s0_aug2"]
    assert [m.augmentation for m in result.models.values()] == [0, 2] * 3
    assert result.models["lenet_s0"].n_params < result.models["lenet_s1"].n_params
    for v in result.models.values():
        assert v.layer_sum_residual < 1e-4  # the rows add up to the model's derivative
        for shares in v.per_seed.shares:
            assert sum(shares.values()) == pytest.approx(1.0)
        assert v.lee.mean == pytest.approx(np.mean(v.per_seed.lee))
    assert "attention" in result.models["vit_s0"].shares and "attention" not in result.models["lenet_s0"].shares
    acc = [a for v in result.models.values() for a in v.per_seed.clean_accuracy]
    lee = [np.log10(e) for v in result.models.values() for e in v.per_seed.lee]
    assert result.accuracy_vs_lee["all"].n == 12
    if result.accuracy_vs_lee["all"].rho is not None:
        assert result.accuracy_vs_lee["all"].rho == pytest.approx(stats.spearmanr(acc, lee).statistic)
    assert validate_metrics(tmp_path)["experiment"] == "lee_scaling"
    assert {"lee_vs_accuracy.png", "lee_shares.png"} <= set(figures)
    points = sum(len(c.get_offsets()) for c in figures["lee_vs_accuracy.png"].axes[0].collections)
    assert points == 12  # one point per trained seed (the legend's entries are empty)


def test_sizes_for_a_model_not_in_the_zoo_are_refused(tmp_path):
    raw = compose_raw(SMALL[:-1] + ["+lee_scaling.sizes.vitt=[{dim:8}]"])
    with pytest.raises(ConfigError, match=r"lee_scaling.sizes names vitt, not a zoo model; zoo models: "):
        run_experiment(raw, tmp_path)
    assert not list(tmp_path.glob("*.json"))  # refused before anything was trained
