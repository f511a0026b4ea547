"""Every row of the bad-input table in docs/reliability.md: a one-line error naming what is wrong, before data or compiling.

In-process rows check the exception a CLI run prints as ``equivar: error: <message>`` (exit 2; the CLI path
itself is tested in test_experiments.py); Hydra-level rows run the CLI.
"""

import hashlib
import re
import shutil

import pytest

from equivar.data import TFDS, verify_checksums
from equivar.errors import ConfigError, DataUnavailableError, UserError
from equivar.run import run_experiment

from support import TINY, cli, compose_raw, mnist_dir, requires_mnist

# Errors found after the config is valid: against the data's real size, or by the data loader. (Every option's
# rule and the other config mistakes are generated into docs/reliability.md and tested in test_reference_docs.py.)
ROWS = [  # (overrides, error class, words the one-line message must contain)
    (["dataset=mnist", "dataset.data_dir=/nonexistent", "shift.max=1"], DataUnavailableError,
     "TFDS dataset 'mnist' is not prepared under /nonexistent"),
    (["train.batch_size=100000"], ConfigError, "train.batch_size=100000 exceeds the 4000 training examples"),
    (["dataset=tfds", "dataset.tfds_name=nosuchset"], DataUnavailableError, "TFDS has no dataset named 'nosuchset'"),
    (["dataset=mnist", "dataset.data_dir=/nonexistent"], DataUnavailableError,
     "TFDS dataset 'mnist' is not prepared under /nonexistent"),
]


@pytest.mark.parametrize("overrides,error,words", ROWS, ids=[" ".join(r[0]) for r in ROWS])
def test_bad_input_fails_early_with_one_clear_line(overrides, error, words, tmp_path, monkeypatch):
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    raw = compose_raw(["experiment=shift_test"] + overrides)
    started = []
    monkeypatch.setattr("equivar.experiment.init_states", lambda *a, **k: started.append(1))
    with pytest.raises(error) as caught:
        run_experiment(raw, tmp_path / "run")
    message = str(caught.value)
    assert words in message and "\n" not in message
    assert not started and not (tmp_path / "run" / "metrics.json").exists()  # fails before any training


@pytest.mark.slow
def test_a_folder_that_holds_a_run_is_never_overwritten(tmp_path):
    raw = compose_raw(["experiment=conv_compare"])
    run_experiment(raw, tmp_path)
    before = (tmp_path / "metrics.json").read_bytes()
    assert run_experiment(raw, tmp_path).experiment == "conv_compare"  # the same config: skipped
    with pytest.raises(ConfigError, match="already holds a run .* another config.* pass overwrite=true"):
        run_experiment(compose_raw(["experiment=conv_compare", "conv_compare.random_trials=2"]), tmp_path)
    assert (tmp_path / "metrics.json").read_bytes() == before
    run_experiment(compose_raw(["experiment=conv_compare", "overwrite=true"]), tmp_path)  # only when asked


def test_interrupted_run_leaves_a_clear_status(tmp_path, monkeypatch):
    from equivar.experiments import conv_compare

    def interrupted(config, out_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(conv_compare, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(compose_raw(["experiment=conv_compare"]), tmp_path)
    status = __import__("json").loads((tmp_path / "status.json").read_text())
    assert status["status"] == "interrupted" and not (tmp_path / "metrics.json").exists()


def test_wrong_checksum_names_the_file(tmp_path):
    folder = tmp_path / "raw" / "mnist"
    folder.mkdir(parents=True)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"not the real file")
    good = hashlib.sha256(b"the real file").hexdigest()
    (tmp_path / "raw" / "SHA256SUMS").write_text(f"{good}  mnist/train-images-idx3-ubyte.gz\n")
    with pytest.raises(DataUnavailableError, match="train-images-idx3-ubyte.gz has sha256 .* corrupted"):
        verify_checksums(folder)
    (tmp_path / "raw" / "SHA256SUMS").write_text(
        f"{hashlib.sha256(b'not the real file').hexdigest()}  mnist/train-images-idx3-ubyte.gz\n")
    assert verify_checksums(folder) == [(folder / "train-images-idx3-ubyte.gz").resolve()]


@requires_mnist
def test_truncated_array_record_file_names_the_file(tmp_path):
    copy = tmp_path / "tfds"
    shutil.copytree(mnist_dir() / "mnist", copy / "mnist")
    shard = sorted((copy / "mnist" / "3.0.1").glob("mnist-test.array_record*"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    with pytest.raises(DataUnavailableError, match="mnist-test.array_record.*truncated or corrupted"):
        TFDS(tfds_name="mnist", data_dir=str(copy), n_train=10).load()


@pytest.mark.parametrize("args,words", [
    pytest.param(["experiment=nosuch"], "experiment=nosuch is not one of anatomy, antialiased_shift_test,",
                 marks=pytest.mark.slow),
    pytest.param([], "no experiment chosen: add experiment=NAME", marks=pytest.mark.slow),
    pytest.param(["experiment=shift_test", "zoo.lenet.width=3"],
                 "zoo.lenet (LeNet) has no option 'width'; valid options: channels", marks=pytest.mark.slow),
    pytest.param(["experiment=shift_test", "+n_seed=2"], "n_seed is not an option (did you mean n_seeds?)",
                 marks=pytest.mark.slow),
    (["-m", "experiment=shift_test", "n_seeds=1,0"], "n_seeds must be >= 1, got 0"),  # a sweep's bad job
    pytest.param(["experiment=equivariance", "equivariance.n_examples=abc"],
                 "equivariance.n_examples must be an integer, got 'abc'", marks=pytest.mark.slow),
])
def test_cli_level_errors_are_one_line_with_exit_code_2(args, words, tmp_path):
    proc = cli(args, tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("equivar: error: "), proc.stderr
    assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not list(tmp_path.rglob("status.json"))  # nothing started, not even the first job of the sweep


@pytest.mark.slow
def test_a_run_folder_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "run").write_text("a file where the run folder would go")
    proc = cli(["experiment=conv_compare"], tmp_path)  # hydra.run.dir=<tmp_path>/run
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"equivar: error: the run folder {tmp_path / 'run'} cannot be created: "
                                   f"{tmp_path / 'run'} is a file, not a folder; choose another hydra.run.dir=...")
    inside = cli(["experiment=conv_compare", f"hydra.run.dir={tmp_path}/run/inner/${{now:%H}}"], tmp_path)
    assert inside.returncode == 2 and f"{tmp_path / 'run'} is a file, not a folder" in inside.stderr


@pytest.mark.slow
def test_a_damaged_checkpoint_is_one_line_naming_the_model_and_the_files(tiny_run, tmp_path):
    import equivar

    small = ["dataset=synthetic", "models=[mlp]", *TINY]
    shutil.copytree(tiny_run, tmp_path / "trained")
    chunks = sorted((tmp_path / "trained" / "checkpoints" / "mlp").rglob("d/*"))
    assert chunks
    for chunk in chunks:  # every stored chunk cut short, as a full disk or an interrupted copy leaves them
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 3])
    with pytest.raises(ConfigError) as caught:  # asked for by name: an error, not a model left out
        equivar.load_models(tmp_path / "trained", ["mlp"])
    message = str(caught.value)
    assert message.startswith(f"the checkpoint of model 'mlp' cannot be read from {tmp_path / 'trained' / 'checkpoints' / 'mlp'}")
    assert re.match(r"the checkpoint of model 'mlp' cannot be read from \S+ \(array params\.\w+\.\w+\): ", message), message
    assert "damaged or incomplete" in message and "\n" not in message
    proc = cli(["experiment=shift_test", *small, f"load_from={tmp_path / 'trained'}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("equivar: error: the checkpoint of model 'mlp' cannot be read from")


@pytest.mark.slow
def test_a_run_folder_record_can_only_name_a_model_class(tmp_path):
    """load_from builds what a run folder's record names: only Flax module classes, never another callable."""
    import equivar

    marker = tmp_path / "ran"
    run = tmp_path / "theirs"
    (run / "checkpoints" / "evil").mkdir(parents=True)
    record = {"name": "evil", "target": "subprocess.Popen", "options": {"args": ["touch", str(marker)]},
              "input_shape": [24, 1], "n_classes": 4, "seeds": [0], "status": ["ok"], "dataset": {}}
    (run / "checkpoints" / "evil.json").write_text(__import__("json").dumps(record))
    with pytest.raises(ConfigError, match=r"zoo.evil._target_='subprocess.Popen' is the class Popen, not a model class "
                                          r"\(a flax.nnx.Module or flax.linen.Module subclass\)"):
        equivar.load_models(run)
    proc = cli(["experiment=shift_test", "dataset=synthetic", "models=[evil]", f"load_from={run}"], tmp_path)
    assert proc.returncode == 2 and "is the class Popen, not a model class" in proc.stderr, proc.stderr
    assert not marker.exists()


def test_user_errors_are_one_class():
    assert issubclass(ConfigError, UserError) and issubclass(DataUnavailableError, UserError)


@pytest.mark.slow
def test_load_models_returns_what_it_can_and_names_what_it_cannot(tmp_path):
    import json

    import equivar

    small = ["dataset=synthetic", "n_seeds=1", "train.epochs=1", "models=[mlp,lenet]", "zoo.mlp.hidden=[8]",
             "shift.max=1"]
    equivar.measure("shift_test", small, out_dir=tmp_path / "trained")
    record_path = tmp_path / "trained" / "checkpoints" / "lenet.json"
    record = json.loads(record_path.read_text())
    record["target"] = "gone_since.nets.LeNet"  # the class's module no longer importable
    record_path.write_text(json.dumps(record))
    with pytest.warns(UserWarning, match=r"1 of its 2 saved models cannot be loaded and are left out \(lenet\)"):
        loaded = equivar.load_models(tmp_path / "trained")
    assert list(loaded) == ["mlp"] and loaded["mlp"].seeds == [0]
    assert list(loaded.unloadable) == ["lenet"] and "gone_since" in loaded.unloadable["lenet"]
    with pytest.raises(ConfigError, match="gone_since"):  # asked for by name: an error
        equivar.load_models(tmp_path / "trained", ["lenet"])
    with pytest.raises(ConfigError, match=r"holds no checkpoint of model 'cnn'; it holds lenet, mlp"):
        equivar.load_models(tmp_path / "trained", ["cnn"])
    with pytest.raises(ConfigError, match="holds no trained models"):
        equivar.load_models(tmp_path)


def test_the_unreadable_array_is_named_from_either_wording():
    from equivar.checkpoints import _unreadable

    assert _unreadable(ValueError('Error opening "zarr" driver: Error reading "params.logits.bias/.zarray" in OCDBT '
                                  'database at local file "/run/checkpoints/mlp/"')) == " (array params.logits.bias)"
    assert _unreadable(ValueError("{'driver': 'zarr', 'path': 'model_state.bn.mean/'}")) == " (array model_state.bn.mean)"
    assert _unreadable(ValueError("OUT_OF_RANGE: nothing named")) == ""
