"""Datasets by name: MNIST-1D generated locally, any TFDS image-classification dataset, and synthetic data.

Every loader returns a :class:`Dataset` of float32 arrays in channels-last layout, ``(N, L, C)`` or
``(N, H, W, C)``, with integer labels. Loaders never train anything and never touch the network unless the
config allows a download; missing data raises :class:`DataUnavailableError` with what to do about it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from equivar.errors import ConfigError, DataUnavailableError
from equivar.schema import Float, Int, NonNegativeInt, Options, PositiveInt, check
from equivar.targets import locate_class

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def rank(self) -> int:
        """Number of spatial axes (1 for sequences, 2 for images)."""
        return self.x_train.ndim - 2

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "rank": self.rank, "n_train": int(len(self.y_train)),
                "n_test": int(len(self.y_test)), "input_shape": list(self.input_shape),
                "n_classes": int(self.n_classes)}


def _subset(x: np.ndarray, y: np.ndarray, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random subset of size n (the whole set when n is None)."""
    if n is None or n >= len(y):
        return x, y
    if n < 1:
        raise ValueError(f"subset size must be >= 1, got {n}")
    idx = np.sort(np.random.default_rng(seed).permutation(len(y))[:n])
    return x[idx], y[idx]


def _generate_mnist1d(o: MNIST1D) -> Dataset:
    """MNIST-1D (Greydanus 2020), generated offline with ``mnist1d.data.make_dataset``.

    The package standardizes the signals (mean 0, std 1 over the whole set); we keep that scale, so a
    zero-filled shift fills with the data mean. ``max_translation`` must be >= 1; 1 gives untranslated,
    left-aligned digits.
    """
    max_translation, n_train, seed = o.max_translation, o.n_train, o.seed
    if int(max_translation) < 1:
        raise ValueError(f"mnist1d: max_translation must be >= 1 (1 = no translation), got {max_translation}")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for key, value in o.own_options().items():
        if key != "n_train":
            setattr(args, key, list(value) if isinstance(value, (list, tuple)) else value)
    # make_dataset reseeds numpy's and random's global generators; keep the caller's state intact.
    import random
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x_train = raw["x"].astype(np.float32)[..., None]
    x_test = raw["x_test"].astype(np.float32)[..., None]
    x_train, y_train = _subset(x_train, raw["y"].astype(np.int32), n_train, seed)
    return Dataset("mnist1d", x_train, y_train, x_test, raw["y_test"].astype(np.int32), n_classes=10)


def _read_tfds(o: TFDS) -> Dataset:
    """Any TFDS image-classification dataset by name, read with ``tfds.data_source`` (no TensorFlow needed
    once prepared). Images are scaled to [0, 1] float32, labels taken from the builder's supervised keys."""
    import tensorflow_datasets as tfds

    tfds_name, subset_seed = o.tfds_name, o.subset_seed
    data_dir = o.data_dir or os.environ.get("TFDS_DATA_DIR")
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
    except Exception as err:  # tfds raises several types for unknown names
        raise DataUnavailableError(
            f"TFDS has no dataset named {tfds_name!r} ({type(err).__name__}). Check the name against "
            "'tfds.list_builders()'."
        ) from None
    if not builder.is_prepared():
        _prepare(builder, tfds_name, data_dir, o.download, o.manual_dir)

    image_key, label_key = _supervised_keys(builder, tfds_name)
    image_feature = builder.info.features[image_key]
    shape = tuple(image_feature.shape)
    if any(d is None for d in shape):
        raise DataUnavailableError(
            f"TFDS dataset {tfds_name!r} has images of varying shape {shape}; equivar needs a fixed shape")
    n_classes = int(builder.info.features[label_key].num_classes)

    def read(split: str, n: int | None) -> tuple[np.ndarray, np.ndarray]:
        cached = _split_cache_file(Path(builder.data_dir), tfds_name, split, n, subset_seed)
        if cached is not None and (hit := _read_cache(cached)) is not None:
            return _to_unit_float(hit[0]), hit[1]
        source = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
        count = len(source)
        if n is not None and n < count:
            idx = np.sort(np.random.default_rng(subset_seed).permutation(count)[:n])
        else:
            idx = np.arange(count)
        records = source.__getitems__(idx.tolist())
        images = np.stack([np.asarray(r[image_key]) for r in records])
        labels = np.asarray([int(r[label_key]) for r in records], dtype=np.int32)
        if cached is not None:
            _write_cache(cached, images, labels)
        return _to_unit_float(images), labels

    def read_checked(split: str, n: int | None) -> tuple[np.ndarray, np.ndarray]:
        try:
            return read(split, n)
        except Exception as err:  # a truncated or corrupted record file fails deep inside array_record
            files = sorted(str(p) for p in Path(builder.data_dir).glob(f"{tfds_name}-{split}.*"))
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise DataUnavailableError(
                f"cannot read split {split!r} of TFDS dataset {tfds_name!r} from {', '.join(files) or builder.data_dir}"
                f" ({type(err).__name__}: {reason}). The file is truncated or corrupted: delete "
                f"{builder.data_dir} and prepare the dataset again.") from None

    x_train, y_train = read_checked(o.train_split, o.n_train)
    x_test, y_test = read_checked(o.test_split, o.n_test)
    if x_train.ndim == 3:  # (N, H, W) without a channel axis
        x_train, x_test = x_train[..., None], x_test[..., None]
    return Dataset(tfds_name, x_train, y_train, x_test, y_test, n_classes=n_classes)


def data_cache_dir() -> Path | None:
    """Where decoded TFDS splits are kept: ``$EQUIVAR_DATA_CACHE``, else ``~/.cache/equivar/data``; None when
    ``EQUIVAR_DATA_CACHE=off``."""
    value = os.environ.get("EQUIVAR_DATA_CACHE") or os.path.expanduser("~/.cache/equivar/data")
    return None if value.lower() in ("0", "off", "false", "no") else Path(value)


def _split_cache_file(data_dir: Path, name: str, split: str, n: int | None, subset_seed: int) -> Path | None:
    """The cache file of one decoded split, named by everything its content depends on: the prepared files
    (path, size and modification time: a re-prepared dataset is read afresh), the split and the subset."""
    root = data_cache_dir()
    if root is None:
        return None
    stamp = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns)
             for f in sorted(data_dir.glob(f"{name}-{split}.*"))]
    key = hashlib.sha256(json.dumps([stamp, split, n, subset_seed]).encode()).hexdigest()[:20]
    return root / name / f"{split}-{key}.npz"


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The images and labels kept in ``path``, or None when it is missing or unreadable (then read afresh)."""
    try:
        with np.load(path) as kept:
            return kept["images"], kept["labels"]
    except Exception:  # missing, truncated by a killed run, written by another numpy: decode again
        return None


def _write_cache(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Keeps a decoded split (as decoded: uint8 images stay uint8); written to a temporary file and renamed, so
    a reader never sees half a file. A cache that cannot be written (a read-only home) is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            np.savez(f, images=images, labels=labels)
        os.replace(f.name, path)
    except OSError as err:
        log.info("decoded data not cached in %s: %s", path.parent, err)


def _to_unit_float(images: np.ndarray) -> np.ndarray:
    if np.issubdtype(images.dtype, np.integer):
        top = np.iinfo(images.dtype).max
        return images.astype(np.float32) / np.float32(top)
    return images.astype(np.float32)


def _supervised_keys(builder: Any, name: str) -> tuple[str, str]:
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        features = list(builder.info.features.keys())
        if "image" in features and "label" in features:
            return "image", "label"
        raise DataUnavailableError(
            f"TFDS dataset {name!r} is not an (image, label) classification dataset: supervised keys "
            f"{keys}, features {features}")
    return keys[0], keys[1]


def _prepare(builder: Any, name: str, data_dir: str | None, download: bool, manual_dir: str | None) -> None:
    where = builder.data_dir
    hint = (
        f"TFDS dataset {name!r} is not prepared under {where}. Either point TFDS_DATA_DIR (or "
        f"dataset.data_dir=...) at a folder that holds {name}/<version>/, or give dataset.manual_dir=... "
        "with the original files (building needs 'pip install tensorflow-cpu'), or allow "
        "dataset.download=true on a machine with internet access."
    )
    if not download and manual_dir is None:
        raise DataUnavailableError(hint)
    if manual_dir is not None:
        verify_checksums(Path(manual_dir).expanduser())
    import tensorflow_datasets as tfds

    config = tfds.download.DownloadConfig(manual_dir=str(Path(manual_dir).expanduser()) if manual_dir else None)
    try:
        builder.download_and_prepare(download_config=config)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataUnavailableError(f"{hint} Preparing it failed: {type(err).__name__}: {reason[:300]}") from None


def verify_checksums(folder: Path) -> list[Path]:
    """Checks the files of ``folder`` against a ``SHA256SUMS`` list (``sha256  relative/path`` lines) found in
    the folder or its parent; raises DataUnavailableError naming the first file that is missing or differs.
    Returns the files checked (none when there is no list)."""
    import hashlib

    for base in (folder, folder.parent):
        sums = base / "SHA256SUMS"
        if sums.is_file():
            break
    else:
        return []
    checked = []
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        expected, name = line.split(maxsplit=1)
        path = (base / name.strip().lstrip("*")).resolve()
        if folder.resolve() not in path.parents:
            continue  # an entry for another dataset's files
        if not path.is_file():
            raise DataUnavailableError(f"{path} is listed in {sums} but missing")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected.lower():
            raise DataUnavailableError(f"{path} has sha256 {digest}, but {sums} says {expected}: the file is "
                                       "corrupted or a different version; fetch it again")
        checked.append(path)
    return checked


def _make_templates(rank: int, n_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random binary templates, no two alike even up to translation (compared on their bounding boxes)."""
    templates: list[np.ndarray] = []
    seen: set[tuple] = set()
    for _ in range(10_000):
        t = (rng.random((size,) * rank) > 0.5).astype(np.float32)
        nonzero = np.argwhere(t)
        if len(nonzero) < 2:
            continue
        lo, hi = nonzero.min(0), nonzero.max(0) + 1
        box = t[tuple(slice(a, b) for a, b in zip(lo, hi))]
        key = (box.shape, box.tobytes())
        if key not in seen:
            seen.add(key)
            templates.append(t)
        if len(templates) == n_classes:
            return np.stack(templates)
    raise ValueError(f"synthetic: cannot draw {n_classes} distinct templates of size {size}; use a larger "
                     "template_size")


def _draw_synthetic(o: Synthetic) -> Dataset:
    """Random binary templates, one per class, pasted at random positions on a noisy background.

    Tiny and fast: for tests and smoke runs. ``max_offset`` limits where templates land (0 = always at the
    origin, the analogue of untranslated digits).
    """
    rank, size, n_classes, template_size, max_offset, noise = (o.rank, o.size, o.n_classes, o.template_size,
                                                               o.max_offset, o.noise)
    if template_size > size:
        raise ValueError(f"synthetic: template_size {template_size} exceeds size {size}")
    rng = np.random.default_rng(o.seed)
    templates = _make_templates(rank, n_classes, template_size, rng)
    limit = size - template_size if max_offset is None else min(int(max_offset), size - template_size)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, n_classes, n).astype(np.int32)
        x = noise * rng.standard_normal((n,) + (size,) * rank).astype(np.float32)
        offsets = rng.integers(0, limit + 1, (n, rank))
        for i in range(n):
            where = tuple(slice(o, o + template_size) for o in offsets[i])
            x[(i, *where)] += templates[y[i]]  # type: ignore[arg-type]  # numpy's stubs: an int and slices index
        return x[..., None], y

    x_train, y_train = draw(o.n_train)
    x_test, y_test = draw(o.n_test)
    return Dataset(f"synthetic{rank}d", x_train, y_train, x_test, y_test, n_classes=n_classes)


class DatasetOptions(Options):
    """``dataset.*``: which data, and the recipe ``train.*``, ``shift.max`` and ``eval.shift_subset`` follow unless
    overridden. A dataset is a subclass: its own fields are its options, :meth:`load` reads the data and
    :meth:`shape` tells the input shape and classes without reading them (when it can). Configs name it by
    Hydra's ``_target_`` (conf/dataset/*.yaml), as models are named."""

    target: str = Field("", alias="_target_", description="the dataset class, e.g. equivar.data.MNIST1D")
    epochs: PositiveInt = Field(10, description="training epochs (train.epochs follows it)")
    batch_size: PositiveInt = Field(128, description="training batch (train.batch_size follows it)")
    learning_rate: Float = Field(1e-3, gt=0, description="optimizer step size (train.learning_rate follows it)")
    shift_max: Float = Field(4, ge=0, description="evaluate shifts -max..max per axis (shift.max follows it)")
    shift_subset: PositiveInt | None = Field(None, description="test examples in the shift grid (null: all; "
                                                               "eval.shift_subset follows it)")

    def load(self) -> Dataset:
        raise NotImplementedError(f"{type(self).__name__} does not say how to load its data (define load())")

    def shape(self) -> tuple[tuple[int, ...], int] | None:
        """``(input_shape, n_classes)`` from the options alone, without reading data; None: unknown."""
        return None

    def own_options(self) -> dict[str, Any]:
        """This dataset's own options (the recipe left out)."""
        recipe = set(DatasetOptions.model_fields)
        return {k: v for k, v in self.model_dump().items() if k not in recipe}


class MNIST1D(DatasetOptions):
    """MNIST-1D (Greydanus 2020), generated offline with ``mnist1d.data.make_dataset``; every generator
    argument is an option."""

    num_samples: Int = Field(5000, ge=10, description="examples generated (train and test)")
    train_split: Float = Field(0.8, gt=0, lt=1, description="share of the examples used for training")
    template_len: PositiveInt = Field(12, description="length of the ten digit templates")
    padding: list[NonNegativeInt] = Field([36, 60], min_length=2, max_length=2,
                                          description="[low, high): random padding added around the template")
    scale_coeff: Float = Field(0.4, ge=0, description="random scaling of the signal")
    max_translation: PositiveInt = Field(48, description="random circular translation; 1 = untranslated, "
                                                         "left-aligned")
    corr_noise_scale: Float = Field(0.25, ge=0, description="correlated (smooth) noise")
    iid_noise_scale: Float = Field(2e-2, ge=0, description="independent noise per position")
    shear_scale: Float = Field(0.75, ge=0, description="random shear")
    shuffle_seq: bool = Field(False, description="shuffle the positions (destroys locality)")
    final_seq_length: PositiveInt = Field(40, description="length of each sequence")
    seed: NonNegativeInt = Field(42, description="the generator's seed")
    n_train: PositiveInt | None = Field(None, description="a fixed random subset of the training set (null: all)")

    def load(self) -> Dataset:
        return _generate_mnist1d(self)

    def shape(self) -> tuple[tuple[int, ...], int]:
        return (self.final_seq_length, 1), 10


class TFDS(DatasetOptions):
    """Any TFDS image-classification dataset by name, read with ``tfds.data_source`` (no TensorFlow)."""

    tfds_name: str = Field(description="any TFDS image-classification dataset, e.g. mnist, fashion_mnist")
    data_dir: str | None = Field(None, description="TFDS data folder; null: $TFDS_DATA_DIR, else TFDS's default")
    train_split: str = Field("train", description="TFDS split to train on")
    test_split: str = Field("test", description="TFDS split to test on")
    download: bool = Field(False, description="try TFDS's download_and_prepare when the data are not prepared")
    manual_dir: str | None = Field(None, description="folder with the original files, to prepare offline "
                                                     "(needs tensorflow-cpu)")
    n_train: PositiveInt | None = Field(None, description="a fixed random subset of the training split "
                                                          "(null: all)")
    n_test: PositiveInt | None = Field(None, description="a fixed random subset of the test split (null: all)")
    subset_seed: NonNegativeInt = Field(0, description="seed of those subsets")

    def load(self) -> Dataset:
        return _read_tfds(self)

    def shape(self) -> tuple[tuple[int, ...], int]:
        return _tfds_shape(tfds_name=self.tfds_name, data_dir=self.data_dir)


class Synthetic(DatasetOptions):
    """Random binary templates at random positions: tiny, for tests and smoke runs."""

    rank: PositiveInt = Field(1, lt=3, description="1: sequences, 2: images")
    size: PositiveInt = Field(24, description="length (or side) of each input")
    n_classes: Int = Field(4, ge=2, description="classes, one random template each")
    n_train: PositiveInt = Field(256, description="training examples")
    n_test: PositiveInt = Field(128, description="test examples")
    template_size: PositiveInt = Field(5, description="length (or side) of the templates")
    max_offset: NonNegativeInt | None = Field(None, description="how far templates land from the origin; null: "
                                                                "anywhere")
    noise: Float = Field(0.05, ge=0, description="background noise scale")
    seed: NonNegativeInt = Field(0, description="data seed")

    def load(self) -> Dataset:
        return _draw_synthetic(self)

    def shape(self) -> tuple[tuple[int, ...], int]:
        return (self.size,) * self.rank + (1,), self.n_classes


def _tfds_shape(*, tfds_name: str, data_dir: str | None = None) -> tuple[tuple[int, ...], int]:
    """Input shape and classes from a prepared TFDS dataset's metadata, without reading any records."""
    import tensorflow_datasets as tfds

    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
    except Exception as err:
        raise DataUnavailableError(f"TFDS has no dataset named {tfds_name!r} ({type(err).__name__}). Check the "
                                   "name against 'tfds.list_builders()'.") from None
    image_key, label_key = _supervised_keys(builder, tfds_name)
    shape = tuple(builder.info.features[image_key].shape)
    if len(shape) == 2:
        shape = shape + (1,)
    return shape, int(builder.info.features[label_key].num_classes)



def dataset_options(node: dict[str, Any]) -> DatasetOptions:
    """The ``dataset.*`` node checked against the class its ``_target_`` names (a subclass of
    :class:`DatasetOptions`): a bad key or value is a one-line ConfigError naming ``dataset.<key>``."""
    target = node.get("_target_")
    if not target:
        raise ConfigError("dataset._target_ is not set: choose a dataset with dataset=mnist1d|mnist|tfds|synthetic, "
                          "or name your own class with dataset._target_=package.module.Class")
    cls = locate_class(target, "dataset._target_", DatasetOptions, "a dataset class (a subclass of "
                       "equivar.data.DatasetOptions)")
    return check(cls, node, "dataset")


def load_dataset(options: DatasetOptions) -> Dataset:
    """Loads the configured dataset; values the rules cannot see (sizes that do not fit together) become one
    line naming the dataset."""
    try:
        return options.load()
    except (ValueError, TypeError) as err:
        raise ConfigError(f"dataset._target_={options.target}: {err}") from None
