"""Typed experiment options: defaults live in the dataclasses (Hydra composes them), and every rule gives one
line naming the key as the user writes it, before any data is read."""

import dataclasses
import time

import pytest

from equivar.errors import ConfigError
from equivar.experiments import MODULES
from equivar.options import describe
from equivar.run import run_experiment

from conftest import compose_raw

CASES = [
    ("equivariance", ["+equivariance.max_shit=3"],
     "equivariance.max_shit is not an option of equivariance (did you mean equivariance.max_shift?)"),
    ("equivariance", ["equivariance.max_shift=0"], "equivariance.max_shift must be >= 1, got 0"),
    ("equivariance", ["equivariance.paddings=[VALID,REFLCT]"],
     "equivariance.paddings[1]='REFLCT' is not one of VALID, SAME, CIRCULAR"),
    ("equivariance", ["equivariance.modes=[]"], "equivariance.modes must not be empty"),
    ("padding_leak", ["padding_leak.background=inf"], "padding_leak.background must be finite"),
    ("padding_leak", ["padding_leak.paddings=[SAME,circular]"], "(did you mean 'CIRCULAR'?)"),
    ("pooling_invariance", ["pooling_invariance.sizes=[2,0]"], "pooling_invariance.sizes[1] must be >= 1, got 0"),
    ("anatomy", ["anatomy.input_shape=[28,0,1]"], "anatomy.input_shape[1] must be >= 1, got 0"),
    ("anatomy", ["anatomy.n_inputs=-4"], "anatomy.n_inputs must be >= 1, got -4"),
    ("conv_compare", ["conv_compare.w=[1,2,3,4,5,6,7,8]"], "conv_compare.w has 8 taps, more than the 7 values"),
]


@pytest.mark.parametrize("experiment,overrides,words", CASES, ids=[" ".join(c[1]) for c in CASES])
def test_a_bad_option_is_one_line_naming_the_key(experiment, overrides, words, tmp_path, monkeypatch):
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    raw = compose_raw([f"experiment={experiment}", "dataset=mnist", "dataset.data_dir=/nonexistent"] + overrides)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as caught:  # before the (missing) data would be read
        run_experiment(raw, tmp_path / "run")
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert time.perf_counter() - start < 20


@pytest.mark.parametrize("name", [n for n, m in MODULES.items() if hasattr(m, "Options")])
def test_composed_defaults_are_the_dataclass_defaults(name):
    composed = compose_raw([f"experiment={name}"])[name]
    assert composed == {o["name"]: o["default"] for o in describe(MODULES[name].Options)}
    for f in dataclasses.fields(MODULES[name].Options):
        assert f.metadata.get("help"), f"{name}.{f.name} has no help text"


def test_the_suggestion_is_the_name_fewest_edits_away():
    """difflib ranks cnn_gap and cnn_aps equally close to cnn_apz; one edit beats two."""
    from equivar.options import nearest

    zoo = ["cnn_aps", "cnn_gap", "group_pool", "lenet", "local", "mlp"]
    assert nearest("cnn_apz", zoo) == ["cnn_aps"] and nearest("cnn_gao", zoo) == ["cnn_gap"]
    assert nearest("circular", ["VALID", "SAME", "CIRCULAR"]) == ["CIRCULAR"] and nearest("resnet", ["mlp"]) == []
