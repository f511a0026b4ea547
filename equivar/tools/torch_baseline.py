"""The real-MNIST shift study as a plain PyTorch user would write it: the baseline of the bench's ``study`` rows.

``python -m equivar.tools.torch_baseline --models mlp lenet`` does the job of
``python -m equivar.run experiment=shift_test dataset=mnist models=[mlp,lenet]`` the idiomatic PyTorch way, and
nothing else: MNIST read from ``$TFDS_DATA_DIR`` with ``tfds.data_source`` (the same files and decoding as
equivar), channels-first ``nn.Sequential`` models with PyTorch's default initialisation, ``torch.optim.Adam``
with its defaults, eager mode, PyTorch's default thread count, one batch indexed out of one tensor per step
and a fresh ``torch.randperm`` per epoch. Per model and seed: the held-out loss and accuracy on the first 1,000
test images after every epoch, the accuracy on the whole test set, and on the first 1,000 test images the
81 circular shifts of the +-4 grid (``torch.roll``) with the softmax probabilities, then the same shifts as
crops of a zero and of a reflect canvas. From those: accuracy per shift, consistency (split by correctness),
worst-case robustness R(r), probability change and crop consistency, as equivar defines them
(``equivar.metrics``; recomputed here in numpy so the script stands alone).

It writes one JSON object (``--out``, default stdout) with, per model, ``train_seconds`` (every seed's
training, held-out curves included), ``eval_seconds`` (the shift measurements) and the numbers, and the
seconds spent reading the data. It imports nothing from equivar: it is the alternative a user would write.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as missing:
    if __name__ == "__main__":  # a user's command: say what to install, not a traceback
        sys.exit(f"python -m equivar.tools.torch_baseline needs PyTorch ({missing}): pip install torch (or, in "
                 "equivar's source folder, pip install '.[torch]')")
    raise

EVAL_BATCH = 1024


def load_mnist(data_dir: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST as float32 in [0, 1], (N, 1, 28, 28), and int64 labels, read with ``tfds.data_source``."""
    import tensorflow_datasets as tfds

    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        source = tfds.data_source("mnist", split=split, data_dir=data_dir, download=False)
        records = source.__getitems__(list(range(len(source))))
        images = np.stack([np.asarray(r["image"]) for r in records]).astype(np.float32) / 255.0
        labels = np.asarray([int(r["label"]) for r in records], dtype=np.int64)
        return images.transpose(0, 3, 1, 2).copy(), labels

    return (*read("train"), *read("test"))


def make_model(name: str) -> nn.Module:
    """The zoo's ``mlp`` and ``lenet`` (equivar's conf/model), channels-first."""
    if name == "lenet":
        return nn.Sequential(nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 5), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                             nn.Linear(512, 10))
    raise ValueError(f"unknown model {name!r}: mlp or lenet")


@torch.inference_mode()
def probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([F.softmax(model(x[i:i + EVAL_BATCH]), dim=-1) for i in range(0, len(x), EVAL_BATCH)])


@torch.inference_mode()
def heldout(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    logits = torch.cat([model(x[i:i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
    return F.cross_entropy(logits, y).item(), (logits.argmax(-1) == y).float().mean().item()


def crop_shift(x: torch.Tensor, dy: int, dx: int, canvas: str) -> torch.Tensor:
    """``x`` moved by (dy, dx) inside a zero or reflect canvas and cropped back to its size."""
    m = max(abs(dy), abs(dx), 1)
    padded = F.pad(x, (m, m, m, m), mode="constant" if canvas == "zero" else "reflect")
    h, w = x.shape[-2:]
    return padded[..., m - dy:m - dy + h, m - dx:m - dx + w]


def consistency(predictions: np.ndarray, n_classes: int = 10) -> float:
    """Expected agreement of the predicted class under two independent random shifts of the grid."""
    share = np.stack([(predictions == c).mean(0) for c in range(n_classes)], axis=-1)
    return float((share**2).sum(-1).mean())


def train_and_measure(name: str, seed: int, data: dict[str, torch.Tensor], epochs: int, batch_size: int,
                      lr: float, grid: list[tuple[int, int]], n_grid: int, n_heldout: int) -> dict:
    torch.manual_seed(seed)
    model = make_model(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = data["x_train"], data["y_train"]
    curve = []
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x) - batch_size + 1, batch_size):  # full batches only, as equivar
            idx = perm[i:i + batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
        model.eval()
        curve.append(heldout(model, data["x_test"][:n_heldout], data["y_test"][:n_heldout]))
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    xt, yt = data["x_test"], data["y_test"].numpy()
    clean = (probabilities(model, xt).argmax(-1).numpy() == yt).mean()
    xg, yg = xt[:n_grid], yt[:n_grid]
    reference = probabilities(model, xg).numpy()
    probs = np.stack([probabilities(model, torch.roll(xg, (dy, dx), dims=(2, 3))).numpy() for dy, dx in grid])
    crops = {canvas: np.stack([probabilities(model, crop_shift(xg, dy, dx, canvas)).argmax(-1).numpy()
                               for dy, dx in grid]) for canvas in ("zero", "reflect")}
    eval_seconds = time.perf_counter() - start

    preds = probs.argmax(-1)  # (shifts, N)
    per_shift = (preds == yg).mean(1)
    correct = reference.argmax(-1) == yg
    top = reference.argmax(-1)
    rows = np.arange(len(top))
    radius = np.abs(np.asarray(grid)).max(1)
    return {"train_seconds": train_seconds, "eval_seconds": eval_seconds,
            "heldout_loss": [c[0] for c in curve], "heldout_accuracy": [c[1] for c in curve],
            "clean_accuracy": float(clean), "grid_mean_accuracy": float(per_shift.mean()),
            "worst_shift_accuracy": float(per_shift.min()), "consistency": consistency(preds),
            "consistency_correct": consistency(preds[:, correct]),
            "consistency_wrong": consistency(preds[:, ~correct]) if (~correct).any() else float("nan"),
            "robustness": {str(r): float((preds[radius <= r] == yg).all(0).mean()) for r in sorted(set(radius))},
            "probability_change": float(np.abs(probs[:, rows, top] - reference[rows, top]).mean()),
            "crop_consistency": {canvas: consistency(p) for canvas, p in crops.items()}}


def throughput(name: str, batch_size: int, steps: int, eval_examples: int, min_seconds: float,
               device: str = "cpu") -> dict:
    """Training and inference images per second of the same loop on random MNIST-shaped data (the bench's
    per-step PyTorch rows): epochs of ``steps`` batches, then inference in batches of 1,024, each timed after one
    warm-up pass until ``min_seconds`` have passed."""
    torch.manual_seed(0)
    model = make_model(name).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = steps * batch_size
    x, y = torch.rand(n, 1, 28, 28, device=device), torch.randint(0, 10, (n,), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def epoch() -> None:
        model.train()
        perm = torch.randperm(n, device=device)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
        sync()

    xe = torch.rand(eval_examples, 1, 28, 28, device=device)

    def evaluate() -> None:
        model.eval()
        probabilities(model, xe).argmax(-1)
        sync()

    def timed(fn) -> float:
        fn()
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < min_seconds or not calls:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
        return elapsed / calls

    return {"train": n / timed(epoch), "eval": eval_examples / timed(evaluate), "version": torch.__version__,
            "threads": torch.get_num_threads(), "device": device}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m equivar.tools.torch_baseline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet"], choices=["mlp", "lenet"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-shift", type=int, default=4)
    parser.add_argument("--grid-examples", type=int, default=1000)
    parser.add_argument("--heldout-examples", type=int, default=1000)
    parser.add_argument("--data-dir", default=os.environ.get("TFDS_DATA_DIR"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the per-step rows on a GPU)")
    parser.add_argument("--out", help="write the JSON here (default: standard output)")
    parser.add_argument("--throughput", nargs=4, metavar=("BATCH", "STEPS", "EVAL_EXAMPLES", "MIN_SECONDS"),
                        help="instead of the study: the first model's training and inference images/s on random "
                             "data (the bench's per-step rows)")
    args = parser.parse_args(argv)
    if args.throughput:
        batch, steps, n_eval, min_seconds = args.throughput
        print(json.dumps(throughput(args.models[0], int(batch), int(steps), int(n_eval), float(min_seconds),
                                    args.device)))
        return

    start = time.perf_counter()
    x_train, y_train, x_test, y_test = load_mnist(args.data_dir)
    data = {"x_train": torch.from_numpy(x_train), "y_train": torch.from_numpy(y_train),
            "x_test": torch.from_numpy(x_test), "y_test": torch.from_numpy(y_test)}
    load_seconds = time.perf_counter() - start
    s = args.max_shift
    grid = [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)]
    models = {}
    for name in args.models:
        runs = [train_and_measure(name, seed, data, args.epochs, args.batch_size, args.lr, grid,
                                  args.grid_examples, args.heldout_examples) for seed in range(args.seeds)]
        models[name] = {"train_seconds": sum(r["train_seconds"] for r in runs),
                        "eval_seconds": sum(r["eval_seconds"] for r in runs), "seeds": runs}
        for what in ("clean_accuracy", "grid_mean_accuracy", "worst_shift_accuracy", "consistency"):
            values = [r[what] for r in runs]
            models[name][what] = float(np.mean(values))
            models[name][what + "_std"] = float(np.std(values))
        print(f"{name}: trained {args.seeds} seeds in {models[name]['train_seconds']:.1f}s, measured in "
              f"{models[name]['eval_seconds']:.1f}s; clean {models[name]['clean_accuracy']:.4f}, consistency "
              f"{models[name]['consistency']:.4f}", file=sys.stderr, flush=True)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "load_seconds": load_seconds,
              "models": models}
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
