"""Typed experiment options: defaults live in the dataclasses (Hydra composes them), and every rule gives one
line naming the key as the user writes it, before any data is read."""


import pytest

from equivar.config import builtin_experiments
from equivar.errors import ConfigError
from equivar.run import run_experiment
from equivar.schema import defaults, nearest

from support import compose_raw

CASES = [
    ("equivariance", ["+equivariance.n_example=3"],
     "equivariance.n_example is not an option of equivariance (did you mean equivariance.n_examples?)"),
    ("equivariance", ["equivariance.n_examples=0"], "equivariance.n_examples must be >= 1, got 0"),
    ("equivariance", ["equivariance.paddings=[VALID,REFLCT]"],
     "equivariance.paddings[1]='REFLCT' is not one of VALID, SAME, CIRCULAR"),
    ("equivariance", ["equivariance.paddings=[]"], "equivariance.paddings must not be empty"),
    ("equivariance", ["shift.mode=[]"], "shift.mode must not be an empty list"),
    ("equivariance", ["shift.max=28"],
     "shift.max=28 must be smaller than the input's spatial size (28, 28); use shift.max <= 27"),
    ("lie_derivative", ["shift.max=30"], "shift.max=30 must be smaller than the input's spatial size (28, 28)"),
    ("pooling_invariance", ["shift.mode=zero"], "shift.mode=zero: pooling_invariance takes roll or fourier"),
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
    monkeypatch.setattr("equivar.experiment.init_states", _no_training)
    # a ConfigError, not the missing data's DataUnavailableError: the option is checked before data are read
    with pytest.raises(ConfigError) as caught:
        run_experiment(raw, tmp_path / "run")
    assert words in str(caught.value) and "\n" not in str(caught.value)


def _no_training(*args, **kwargs):
    raise AssertionError("training started")


@pytest.mark.parametrize("name", [n for n, m in builtin_experiments().items() if hasattr(m, "Options")])
def test_composed_defaults_are_the_options_defaults(name):
    options = builtin_experiments()[name].Options
    composed = compose_raw([f"experiment={name}"])[name]
    assert composed == defaults(options)
    for key, field in options.model_fields.items():
        assert field.description, f"{name}.{key} has no help text"


def test_the_suggestion_is_the_name_fewest_edits_away():
    """difflib ranks cnn_gap and cnn_aps equally close to cnn_apz; one edit beats two."""
    zoo = ["cnn_aps", "cnn_gap", "group_pool", "lenet", "local", "mlp"]
    assert nearest("cnn_apz", zoo) == ["cnn_aps"] and nearest("cnn_gao", zoo) == ["cnn_gap"]
    assert nearest("circular", ["VALID", "SAME", "CIRCULAR"]) == ["CIRCULAR"] and nearest("resnet", ["mlp"]) == []
