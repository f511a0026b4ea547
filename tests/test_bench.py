"""The benchmark's own bookkeeping (not its timings): FLOP counts, the study rows and their table."""

import pytest
from flax import nnx

from equivar.tools.bench import _builder, format_table, forward_flops, run, study, xla_forward_flops, zoo_entries

from support import TINY


@pytest.mark.slow
def test_locally_connected_flops_count_one_multiply_add_per_weight():
    """local on 28x28: conv1 24*24 positions x 25 taps x 16, conv2 8*8 x 400 x 32, then the dense layers."""
    model = _builder("zoo.local")(nnx.Rngs(0))
    expected = 2 * (24 * 24 * 25 * 16 + 8 * 8 * 400 * 32 + 512 * 512 + 512 * 10)
    assert forward_flops(model, (28, 28, 1)) == expected


@pytest.mark.slow
def test_study_rows_split_the_run_per_model_and_print_as_a_table():
    command = ("experiment=shift_test", "dataset=synthetic", "shift.max=1", *TINY, "models=[mlp,cnn_aps]",
               "n_seeds=1")
    record = study(command)
    assert "error" not in record, record
    assert record["command"] == "python -m equivar.run " + " ".join(command)
    assert set(record["models"]) == {"mlp", "cnn_aps"} and record["n_seeds"] == 1
    assert record["seconds"] > sum(m["train_seconds"] + m["eval_seconds"] for m in record["models"].values()) > 0
    assert record["models"]["cnn_aps"]["consistency"] == 1.0
    table = format_table({"backend": "cpu", "devices": ["cpu:0"], "jax": "x", "matmul_peak_gflops": 1.0,
                          "batch_size": 128, "repeat": 1, "cases": {}, "notes": [],
                          "study": {"mnist_shift_test": record}})
    assert "| study.mnist_shift_test.cnn_aps | " in table and "1.0000 ± 0.0000" in table


@pytest.mark.slow
def test_a_study_that_cannot_run_is_a_note_not_a_crash():
    record = study(("experiment=shift_test", "dataset=tfds", "dataset.tfds_name=no_such_dataset"))
    assert "no_such_dataset" in record["error"]


def test_the_zoo_section_covers_every_model_experiments_train_and_counts_flops_as_xla_does():
    entries = zoo_entries()
    # the techniques experiments add are rows too, with the options their experiment gives them
    assert entries["lenet_blur"] == (entries["lenet"][0], {**entries["lenet"][1], "pool": "blurmax"})
    assert entries["gap_mean"][1]["global_pool"] == "mean" and "stack" not in entries
    assert {"mlp", "lenet", "local", "cnn_aps", "alias_free", "vit", "mixer", "lenet_aps"} <= set(entries)
    # XLA's count of LeNet's forward pass: the convolutions' and dense layers' multiply-adds, plus the few
    # element-wise operations between them (under 3 % more)
    layers = forward_flops(_builder("zoo.lenet")(nnx.Rngs(0)), (28, 28, 1))
    assert layers <= xla_forward_flops("zoo.lenet") <= 1.03 * layers


def test_a_zoo_name_the_zoo_lacks_stops_the_bench_before_any_timing():
    with pytest.raises(SystemExit, match="no zoo model named lenet_blurr; known: .*lenet_blur"):
        run(quick=True, sections=("zoo",), zoo=("lenet_blurr",))
