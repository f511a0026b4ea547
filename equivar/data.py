"""Datasets by name: MNIST-1D generated locally, any TFDS image-classification dataset, and synthetic data.

Every loader returns a :class:`Dataset` of float32 arrays in channels-last layout, ``(N, L, C)`` or
``(N, H, W, C)``, with integer labels. Loaders never train anything and never touch the network unless the
config allows a download; missing data raises :class:`DataUnavailableError` with what to do about it.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from equivar.errors import ConfigError, DataUnavailableError
from equivar.options import MISSING, check, nearest, option, schema_of


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


def load_mnist1d(*, num_samples: int = 5000, train_split: float = 0.8, template_len: int = 12,
                 padding: tuple[int, int] = (36, 60), scale_coeff: float = 0.4, max_translation: int = 48,
                 corr_noise_scale: float = 0.25, iid_noise_scale: float = 2e-2, shear_scale: float = 0.75,
                 shuffle_seq: bool = False, final_seq_length: int = 40, seed: int = 42,
                 n_train: int | None = None) -> Dataset:
    """MNIST-1D (Greydanus 2020), generated offline with ``mnist1d.data.make_dataset``.

    The package standardizes the signals (mean 0, std 1 over the whole set); we keep that scale, so a
    zero-filled shift fills with the data mean. ``max_translation`` must be >= 1; 1 gives untranslated,
    left-aligned digits.
    """
    if int(max_translation) < 1:
        raise ValueError(f"mnist1d: max_translation must be >= 1 (1 = no translation), got {max_translation}")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for key, value in dict(num_samples=num_samples, train_split=train_split, template_len=template_len,
                           padding=list(padding), scale_coeff=scale_coeff, max_translation=max_translation,
                           corr_noise_scale=corr_noise_scale, iid_noise_scale=iid_noise_scale,
                           shear_scale=shear_scale, shuffle_seq=shuffle_seq,
                           final_seq_length=final_seq_length, seed=seed).items():
        setattr(args, key, value)
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


def load_tfds(*, tfds_name: str, data_dir: str | None = None, train_split: str = "train",
              test_split: str = "test", download: bool = False, manual_dir: str | None = None,
              n_train: int | None = None, n_test: int | None = None, subset_seed: int = 0) -> Dataset:
    """Any TFDS image-classification dataset by name, read with ``tfds.data_source`` (no TensorFlow needed
    once prepared). Images are scaled to [0, 1] float32, labels taken from the builder's supervised keys."""
    import tensorflow_datasets as tfds

    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
    except Exception as err:  # tfds raises several types for unknown names
        raise DataUnavailableError(
            f"TFDS has no dataset named {tfds_name!r} ({type(err).__name__}). Check the name against "
            "'tfds.list_builders()'."
        ) from None
    if not builder.is_prepared():
        _prepare(builder, tfds_name, data_dir, download, manual_dir)

    image_key, label_key = _supervised_keys(builder, tfds_name)
    image_feature = builder.info.features[image_key]
    shape = tuple(image_feature.shape)
    if any(d is None for d in shape):
        raise DataUnavailableError(
            f"TFDS dataset {tfds_name!r} has images of varying shape {shape}; equivar needs a fixed shape")
    n_classes = int(builder.info.features[label_key].num_classes)

    def read(split: str, n: int | None) -> tuple[np.ndarray, np.ndarray]:
        source = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
        count = len(source)
        if n is not None and n < count:
            idx = np.sort(np.random.default_rng(subset_seed).permutation(count)[:n])
        else:
            idx = np.arange(count)
        records = source.__getitems__(idx.tolist())
        images = np.stack([np.asarray(r[image_key]) for r in records])
        labels = np.asarray([int(r[label_key]) for r in records], dtype=np.int32)
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

    x_train, y_train = read_checked(train_split, n_train)
    x_test, y_test = read_checked(test_split, n_test)
    if x_train.ndim == 3:  # (N, H, W) without a channel axis
        x_train, x_test = x_train[..., None], x_test[..., None]
    return Dataset(tfds_name, x_train, y_train, x_test, y_test, n_classes=n_classes)


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


def load_synthetic(*, rank: int = 1, size: int = 24, n_classes: int = 4, n_train: int = 256,
                   n_test: int = 128, template_size: int = 5, max_offset: int | None = None,
                   noise: float = 0.05, seed: int = 0) -> Dataset:
    """Random binary templates, one per class, pasted at random positions on a noisy background.

    Tiny and fast: for tests and smoke runs. ``max_offset`` limits where templates land (0 = always at the
    origin, the analogue of untranslated digits).
    """
    if template_size > size:
        raise ValueError(f"synthetic: template_size {template_size} exceeds size {size}")
    rng = np.random.default_rng(seed)
    templates = _make_templates(rank, n_classes, template_size, rng)
    limit = size - template_size if max_offset is None else min(int(max_offset), size - template_size)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, n_classes, n).astype(np.int32)
        x = noise * rng.standard_normal((n,) + (size,) * rank).astype(np.float32)
        offsets = rng.integers(0, limit + 1, (n, rank))
        for i in range(n):
            where = tuple(slice(o, o + template_size) for o in offsets[i])
            x[(i, *where)] += templates[y[i]]
        return x[..., None], y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return Dataset(f"synthetic{rank}d", x_train, y_train, x_test, y_test, n_classes=n_classes)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "mnist1d": load_mnist1d,
    "tfds": load_tfds,
    "synthetic": load_synthetic,
}


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


@dataclasses.dataclass
class Recipe:
    """The ``dataset.*`` keys beside the loader's own options: which loader, and the training and measuring
    recipe that ``train.*``, ``shift.max`` and ``eval.shift_subset`` follow unless overridden."""

    loader: str = option(MISSING, "the loader that reads the data", choices=("mnist1d", "synthetic", "tfds"))
    epochs: int = option(10, "training epochs (train.epochs follows it)", minimum=1)
    batch_size: int = option(128, "training batch (train.batch_size follows it)", minimum=1)
    learning_rate: float = option(1e-3, "optimizer step size (train.learning_rate follows it)", above=0)
    shift_max: float = option(4, "evaluate shifts -max..max per axis (shift.max follows it)", minimum=0)
    shift_subset: int | None = option(None, "test examples in the shift grid (null: all)", minimum=1)


# Each loader's options are its keyword parameters (types and defaults from its signature), with these rules.
LOADER_RULES: dict[str, dict[str, dict[str, Any]]] = {
    "mnist1d": {  # the generator's arguments (Greydanus 2020)
        "num_samples": {"minimum": 10, "help": "examples generated (train and test)"},
        "train_split": {"above": 0, "below": 1, "help": "share of the examples used for training"},
        "template_len": {"minimum": 1, "help": "length of the ten digit templates"},
        "padding": {"minimum": 0, "help": "[low, high): random padding added around the template"},
        "scale_coeff": {"minimum": 0, "help": "random scaling of the signal"},
        "max_translation": {"minimum": 1, "help": "random circular translation; 1 = untranslated, left-aligned"},
        "corr_noise_scale": {"minimum": 0, "help": "correlated (smooth) noise"},
        "iid_noise_scale": {"minimum": 0, "help": "independent noise per position"},
        "shear_scale": {"minimum": 0, "help": "random shear"},
        "shuffle_seq": {"help": "shuffle the positions (destroys locality)"},
        "final_seq_length": {"minimum": 1, "help": "length of each sequence"},
        "seed": {"minimum": 0, "help": "the generator's seed"},
        "n_train": {"minimum": 1, "help": "a fixed random subset of the training set (null: all)"},
    },
    "synthetic": {
        "rank": {"minimum": 1, "below": 3, "help": "1: sequences, 2: images"},
        "size": {"minimum": 1, "help": "length (or side) of each input"},
        "n_classes": {"minimum": 2, "help": "classes, one random template each"},
        "n_train": {"minimum": 1, "help": "training examples"}, "n_test": {"minimum": 1, "help": "test examples"},
        "template_size": {"minimum": 1, "help": "length (or side) of the templates"},
        "max_offset": {"minimum": 0, "help": "how far templates land from the origin; null: anywhere"},
        "noise": {"minimum": 0, "help": "background noise scale"}, "seed": {"minimum": 0, "help": "data seed"},
    },
    "tfds": {
        "tfds_name": {"help": "any TFDS image-classification dataset, e.g. mnist, fashion_mnist"},
        "data_dir": {"help": "TFDS data folder; null: $TFDS_DATA_DIR, else TFDS's default"},
        "train_split": {"help": "TFDS split to train on"}, "test_split": {"help": "TFDS split to test on"},
        "download": {"help": "try TFDS's download_and_prepare when the data are not prepared"},
        "manual_dir": {"help": "folder with the original files, to prepare offline (needs tensorflow-cpu)"},
        "n_train": {"minimum": 1, "help": "a fixed random subset of the training split (null: all)"},
        "n_test": {"minimum": 1, "help": "a fixed random subset of the test split (null: all)"},
        "subset_seed": {"minimum": 0, "help": "seed of those subsets"},
    },
}

DATASET_SCHEMAS: dict[str, type] = {
    name: schema_of(fn, f"{name.capitalize()}Dataset", LOADER_RULES.get(name), bases=(Recipe,))
    for name, fn in DATASETS.items()
}


def dataset_options(values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The ``dataset.*`` node checked against its loader's schema: ``(loader, the loader's own options)``.
    A bad key or value is a one-line ConfigError naming ``dataset.<key>``."""
    loader = values.get("loader")
    if loader not in DATASETS:
        near = nearest(str(loader), DATASETS)
        raise ConfigError(f"dataset.loader={loader!r} is not one of {', '.join(DATASETS)}"
                          + (f" (did you mean {near[0]!r}?)" if near else ""))
    checked = check(DATASET_SCHEMAS[loader], values, "dataset")
    own = inspect.signature(DATASETS[loader]).parameters
    return loader, {k: getattr(checked, k) for k in own if k in values}


# How each loader's input shape and class count follow from its options alone (no data read), so configs
# can be checked against the models before anything is loaded or compiled.
DATASET_SHAPES: dict[str, Callable[..., tuple[tuple[int, ...], int]]] = {
    "mnist1d": lambda o: ((o["final_seq_length"], 1), 10),
    "synthetic": lambda o: ((o["size"],) * o["rank"] + (1,), o["n_classes"]),
    "tfds": lambda o: _tfds_shape(tfds_name=o["tfds_name"], data_dir=o["data_dir"]),
}


def dataset_shape(loader: str, options: dict[str, Any]) -> tuple[tuple[int, ...], int] | None:
    """``(input_shape, n_classes)`` of a configured dataset without loading it (None: a loader whose shape
    needs its data)."""
    if loader not in DATASET_SHAPES:
        return None
    checked = check(DATASET_SCHEMAS[loader], {**options, "loader": loader}, "dataset")
    return DATASET_SHAPES[loader](dataclasses.asdict(checked))


def load_dataset(loader: str, options: dict[str, Any]) -> Dataset:
    """Loads a dataset by registry name with its options (checked first: one line naming ``dataset.<key>``)."""
    loader, options = dataset_options({**options, "loader": loader})
    try:
        return DATASETS[loader](**options)
    except (ValueError, TypeError) as err:  # values the rules cannot see (e.g. sizes that do not fit together)
        raise ConfigError(f"dataset.loader={loader}: {err}") from None
