import numpy as np
import pytest

from equivar.data import MNIST1D, TFDS, Synthetic, dataset_options, load_dataset
from equivar.errors import ConfigError, DataUnavailableError

from support import mnist_dir, requires_mnist


def test_mnist1d_generated_offline():
    ds = MNIST1D(num_samples=200).load()
    assert ds.x_train.shape == (160, 40, 1) and ds.x_test.shape == (40, 40, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.rank == 1 and ds.n_classes == 10
    assert set(np.unique(ds.y_train)) <= set(range(10))


def test_mnist1d_leaves_global_rng_alone():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    MNIST1D(num_samples=50).load()
    assert np.random.rand() == expected


def test_mnist1d_rejects_zero_translation():
    with pytest.raises(ValueError, match="max_translation"):
        MNIST1D(num_samples=50, max_translation=0).load()


@pytest.mark.parametrize("rank", [1, 2])
def test_synthetic(rank):
    ds = Synthetic(rank=rank, size=10, n_train=20, n_test=8).load()
    assert ds.x_train.shape == (20,) + (10,) * rank + (1,)
    assert ds.rank == rank


def test_unknown_dataset_class_and_option():
    with pytest.raises(ConfigError, match="dataset._target_='equivar.data.ImageNet22k' cannot be imported: "
                                          "equivar.data has no attribute 'ImageNet22k'"):
        dataset_options({"_target_": "equivar.data.ImageNet22k"})
    with pytest.raises(ConfigError, match="dataset._target_='equivar.data.Dataset' is the class Dataset, not a "
                                          "dataset class"):
        dataset_options({"_target_": "equivar.data.Dataset"})
    with pytest.raises(ConfigError, match=r"dataset.colour is not an option of dataset \(did you mean "
                                          r"dataset.noise\?\)|dataset.colour is not an option of dataset"):
        dataset_options({"_target_": "equivar.data.Synthetic", "colour": True})
    with pytest.raises(ConfigError, match="dataset.n_train must be >= 1, got 0"):
        dataset_options({"_target_": "equivar.data.Synthetic", "n_train": 0})
    with pytest.raises(ConfigError, match="dataset._target_ is not set"):
        dataset_options({"epochs": 3})


def test_a_dataset_of_your_own_is_one_class(tmp_path, monkeypatch):
    """A new dataset is a DatasetOptions subclass with its options as fields and a load(); configs name it by
    _target_, and its options are checked like equivar's own."""
    (tmp_path / "mydata.py").write_text(
        "import numpy as np\n"
        "from pydantic import Field\n"
        "from equivar.data import Dataset, DatasetOptions\n"
        "from equivar.schema import PositiveInt\n\n"
        "class Ramps(DatasetOptions):\n"
        "    length: PositiveInt = Field(12, description='positions')\n\n"
        "    def load(self):\n"
        "        x = np.tile(np.linspace(0, 1, self.length, dtype=np.float32), (8, 1))[..., None]\n"
        "        y = np.arange(8, dtype=np.int32) % 2\n"
        "        return Dataset('ramps', x, y, x, y, n_classes=2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    options = dataset_options({"_target_": "mydata.Ramps", "length": 6})
    assert load_dataset(options).x_train.shape == (8, 6, 1) and options.shape() is None
    with pytest.raises(ConfigError, match="dataset.length must be >= 1, got 0"):
        dataset_options({"_target_": "mydata.Ramps", "length": 0})


def test_missing_tfds_data_says_what_to_do(tmp_path):
    with pytest.raises(DataUnavailableError, match="TFDS_DATA_DIR") as err:
        TFDS(tfds_name="mnist", data_dir=str(tmp_path)).load()
    assert "not prepared" in str(err.value)


def test_unknown_tfds_name(tmp_path):
    with pytest.raises(DataUnavailableError, match="no dataset named"):
        TFDS(tfds_name="definitely_not_a_dataset", data_dir=str(tmp_path)).load()


@requires_mnist
def test_real_mnist_subset():
    ds = TFDS(tfds_name="mnist", data_dir=str(mnist_dir()), n_train=300, n_test=100).load()
    assert ds.x_train.shape == (300, 28, 28, 1) and ds.x_test.shape == (100, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ds.x_train.max() == 1.0 and ds.n_classes == 10 and ds.rank == 2
    assert len(np.unique(ds.y_train)) == 10


@requires_mnist
def test_decoded_splits_are_cached_by_content_and_read_back_identically(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("EQUIVAR_DATA_CACHE", str(cache))
    options = TFDS(tfds_name="mnist", data_dir=str(mnist_dir()), n_train=300, n_test=100)
    first = options.load()
    files = sorted((cache / "mnist").glob("*.npz"))
    assert [f.name.split("-")[0] for f in files] == ["test", "train"]
    second = options.load()
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field))
    # the file is what a second load reads: altered labels there come back
    train = files[1]
    with np.load(train) as kept:
        images, labels = kept["images"], kept["labels"]
    np.savez(train, images=images, labels=(labels + 1) % 10)
    np.testing.assert_array_equal(options.load().y_train, (first.y_train + 1) % 10)
    # a truncated file (a killed run) is read afresh and rewritten
    train.write_bytes(train.read_bytes()[:100])
    np.testing.assert_array_equal(options.load().y_train, first.y_train)
    # another subset is another file
    TFDS(tfds_name="mnist", data_dir=str(mnist_dir()), n_train=200, n_test=100).load()
    assert len(list((cache / "mnist").glob("*.npz"))) == 3


@requires_mnist
def test_the_data_cache_has_a_switch_off(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUIVAR_DATA_CACHE", "off")
    monkeypatch.setenv("HOME", str(tmp_path))
    TFDS(tfds_name="mnist", data_dir=str(mnist_dir()), n_train=50, n_test=50).load()
    assert not list(tmp_path.rglob("*.npz"))
