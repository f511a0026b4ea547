"""``equivar.load_data``: the data a run uses, by the same names and options as the command line."""

import numpy as np
import pytest

import equivar
from equivar.data import dataset_options, load_dataset
from equivar.errors import ConfigError

from support import compose_raw, mnist_dir


def test_load_data_gives_what_a_run_trains_on():
    data = equivar.load_data("synthetic", ["dataset.rank=2", "dataset.n_train=40"])
    same = load_dataset(dataset_options(compose_raw(["experiment=shift_test", "dataset=synthetic", "dataset.rank=2",
                                                     "dataset.n_train=40"])["dataset"]))
    assert data.x_train.shape == (40, *data.input_shape) and data.x_train.ndim == 4
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(data, key), getattr(same, key))


def test_a_wrong_dataset_name_is_one_line_with_the_tfds_route():
    with pytest.raises(ConfigError, match=r"fashion_mnist is a TFDS dataset: dataset=tfds "
                                          r"dataset.tfds_name=fashion_mnist"):
        equivar.load_data("fashion_mnist")


@pytest.mark.skipif(mnist_dir() is None, reason="prepared TFDS MNIST not found")
def test_load_data_reads_mnist(monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(mnist_dir()))
    data = equivar.load_data("mnist", ["dataset.n_train=100", "dataset.n_test=50"])
    assert data.x_train.shape == (100, 28, 28, 1) and data.x_test.shape == (50, 28, 28, 1)
    assert data.n_classes == 10 and 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
