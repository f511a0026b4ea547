import numpy as np
import pytest

from equivar.data import load_dataset, load_mnist1d, load_synthetic, load_tfds
from equivar.errors import ConfigError, DataUnavailableError

from conftest import mnist_dir, requires_mnist


def test_mnist1d_generated_offline():
    ds = load_mnist1d(num_samples=200)
    assert ds.x_train.shape == (160, 40, 1) and ds.x_test.shape == (40, 40, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.rank == 1 and ds.n_classes == 10
    assert set(np.unique(ds.y_train)) <= set(range(10))


def test_mnist1d_leaves_global_rng_alone():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    load_mnist1d(num_samples=50)
    assert np.random.rand() == expected


def test_mnist1d_rejects_zero_translation():
    with pytest.raises(ValueError, match="max_translation"):
        load_mnist1d(num_samples=50, max_translation=0)


@pytest.mark.parametrize("rank", [1, 2])
def test_synthetic(rank):
    ds = load_synthetic(rank=rank, size=10, n_train=20, n_test=8)
    assert ds.x_train.shape == (20,) + (10,) * rank + (1,)
    assert ds.rank == rank


def test_unknown_loader_and_option():
    with pytest.raises(ConfigError, match="dataset.loader='imagenet22k' is not one of mnist1d, tfds, synthetic"):
        load_dataset("imagenet22k", {})
    with pytest.raises(ConfigError, match="dataset.colour is not an option of dataset"):
        load_dataset("synthetic", {"colour": True})
    with pytest.raises(ConfigError, match="dataset.n_train must be >= 1, got 0"):
        load_dataset("synthetic", {"n_train": 0})


def test_missing_tfds_data_says_what_to_do(tmp_path):
    with pytest.raises(DataUnavailableError, match="TFDS_DATA_DIR") as err:
        load_tfds(tfds_name="mnist", data_dir=str(tmp_path))
    assert "not prepared" in str(err.value)


def test_unknown_tfds_name(tmp_path):
    with pytest.raises(DataUnavailableError, match="no dataset named"):
        load_tfds(tfds_name="definitely_not_a_dataset", data_dir=str(tmp_path))


@requires_mnist
def test_real_mnist_subset():
    ds = load_tfds(tfds_name="mnist", data_dir=str(mnist_dir()), n_train=300, n_test=100)
    assert ds.x_train.shape == (300, 28, 28, 1) and ds.x_test.shape == (100, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ds.x_train.max() == 1.0 and ds.n_classes == 10 and ds.rank == 2
    assert len(np.unique(ds.y_train)) == 10
