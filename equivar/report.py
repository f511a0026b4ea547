"""Turn a sweep folder into one table and one figure: ``python -m equivar.report SWEEP_DIR [--out DIR]``.

Reads every run's ``.hydra/config.yaml``, ``status.json`` and ``metrics.json`` under a multirun folder (of any
experiment: each run's result is read by the experiment that wrote it), finds the config keys whose values
differ between runs, and writes ``report.csv`` and ``report.md`` (one row per run and model: the varying keys
as columns, then the model's headline numbers, as each experiment's records declare them, mean and std over
seeds) and ``report.png`` (each headline number against the first numeric varying key, one line per model and
value of the other varying keys, with ± std bands; when no varying key is numeric, e.g.
``zoo.lenet.pool=max,mean``, grouped bars: one group per value, one bar per model, ± std error bars). Shares
(accuracies, consistency) are drawn from 0 to 1 and accuracy panels carry a dashed chance line
(1 / n_classes); positive quantities such as a Lie derivative on a log axis. Models keep their colour from
:func:`equivar.plot.model_color`. Models whose every seed diverged are rows without numbers; failed or
unfinished runs are listed; nothing is silently dropped.
A sweep launched with ``hydra.callbacks.report`` (as conf/experiment/ configs can ask) writes its report into
``SWEEP_DIR/report/`` when the last job ends.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

import matplotlib
from hydra.experimental.callback import Callback

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from equivar.config import as_dict  # noqa: E402
from equivar.errors import UserError  # noqa: E402
from equivar.experiment import read_result  # noqa: E402
from equivar.plot import draw_chance, model_color, over_seeds  # noqa: E402
from equivar.results import EVERY_SEED_DIVERGED, ExperimentResult, Headline, mean_std_text, seeds_phrase  # noqa: E402  # noqa: E402

log = logging.getLogger(__name__)

IGNORED_KEYS = ("overwrite",)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for nested dicts; lists become JSON strings so they compare and print as one value."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, list):
        return {prefix[:-1]: json.dumps(tree)}
    return {prefix[:-1]: tree}


def _load_config(path: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    try:
        return as_dict(cfg)
    except Exception:  # an interpolation that only resolves inside Hydra: keep it as written
        return as_dict(cfg, resolve=False)


def collect(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(finished runs, failed or unfinished runs) under ``sweep_dir``; each finished run has its flat config
    and metrics, each problem says why."""
    runs, problems = [], []
    for config_path in sorted(Path(sweep_dir).rglob(".hydra/config.yaml"), key=lambda p: _natural(p.parent.parent)):
        run_dir = config_path.parent.parent
        entry: dict[str, Any] = {"run": str(run_dir.relative_to(sweep_dir)) or ".", "dir": run_dir}
        status_path, metrics_path = run_dir / "status.json", run_dir / "metrics.json"
        status = json.loads(status_path.read_text()) if status_path.is_file() else {}
        entry["status"] = status.get("status", "complete" if metrics_path.is_file() else "unfinished")
        entry["config"] = flatten(_load_config(config_path))
        if entry["status"] in ("complete", "diverged") and metrics_path.is_file():
            try:
                entry["result"] = read_result(run_dir)
            except (UserError, ValueError) as err:  # damaged JSON, or a file no experiment's schema reads
                entry.update(status="unreadable metrics.json", error=str(err).splitlines()[0])
                problems.append(entry)
                continue
            runs.append(entry)
        else:
            entry["error"] = status.get("error") or status.get("note") or "no metrics.json"
            problems.append(entry)
    return runs, problems


def _natural(path: Path) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in path.parts]


def varying_keys(configs: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if k not in IGNORED_KEYS and len({json.dumps(c.get(k)) for c in configs}) > 1]


def table(runs: list[dict[str, Any]], keys: list[str]) -> tuple[list[str], list[dict[str, Any]], list[Headline]]:
    """Columns, tidy rows (one per run and model: varying keys first, then ``<headline>_mean/_std``) and the
    headline numbers' descriptions (how to draw each).

    Rows also hold ``_n_seeds`` (seeds behind the model's statistics) and ``_n_classes`` (the dataset's), for
    the markdown and the plots; they are not columns, so report.csv leaves them out.
    """
    rows: list[dict[str, Any]] = []
    headlines: dict[str, Headline] = {}
    for run in runs:
        result: ExperimentResult = run["result"]
        n_classes = result.dataset.n_classes if result.dataset else None
        records = [(name, record, True) for name, record in result.models.items()]
        records += [(name, record, False) for name, record in result.unmeasured.items()]
        for model, record, measured in records:
            row: dict[str, Any] = {"run": run["run"], **{k: run["config"].get(k) for k in keys}, "model": model,
                                   "status": _model_status(record, measured), "_n_classes": n_classes}
            values = record.headline_values() if measured else {}
            for h in type(record).headline if measured else ():
                headlines.setdefault(h.name, h)
            for name, value in values.items():
                row[f"{name}_mean"], row[f"{name}_std"] = value.mean, value.std
                row["_n_seeds"] = value.n
            rows.append(row)
    columns = ["run", *keys, "model", "status"] + [f"{m}_{s}" for m in headlines for s in ("mean", "std")]
    return columns, rows, list(headlines.values())


def _model_status(record: Any, measured: bool) -> str:
    if not measured:
        return EVERY_SEED_DIVERGED
    if record.n_diverged:
        return f"{record.n_diverged}/{seeds_phrase(len(record.seeds))} diverged"
    return "ok"


def write_report(sweep_dir: Path, out_dir: Path | None = None) -> dict[str, Any]:
    sweep_dir = Path(sweep_dir)
    out_dir = Path(out_dir) if out_dir else sweep_dir / "report"
    runs, problems = collect(sweep_dir)
    if not runs and not problems:
        raise FileNotFoundError(f"no runs (folders with .hydra/config.yaml) under {sweep_dir}")
    keys = varying_keys([r["config"] for r in runs + problems])
    columns, rows, headlines = table(runs, keys)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    markdown = _markdown(sweep_dir, columns, rows, problems, keys, headlines)
    (out_dir / "report.md").write_text(markdown)
    plots = _plots(rows, keys, headlines, out_dir)
    summary = {"sweep_dir": str(sweep_dir), "varying_keys": keys, "n_runs": len(runs) + len(problems),
               "finished": len(runs), "problems": [{"run": p["run"], "status": p["status"], "error": p.get("error")}
                                                   for p in problems],
               "files": [str(out_dir / "report.csv"), str(out_dir / "report.md"), *map(str, plots)]}
    (out_dir / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def _markdown(sweep_dir: Path, columns: list[str], rows: list[dict[str, Any]], problems: list[dict[str, Any]],
              keys: list[str], headlines: list[Headline]) -> str:
    metrics = [c[:-5] for c in columns if c.endswith("_mean")]
    logs = {h.name for h in headlines if h.log}
    head = ["run", *keys, "model", "status", *metrics]
    lines = [f"# Report of {sweep_dir}", "", f"Varying keys: {', '.join(keys) or '(none)'}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [_fmt(row.get(c)) for c in ["run", *keys, "model", "status"]]
        for m in metrics:
            mean, std, n = row.get(f"{m}_mean"), row.get(f"{m}_std"), row.get("_n_seeds")
            if mean is None:
                cells.append("")
            elif m in logs:  # spans orders of magnitude: significant digits
                cells.append(f"{mean:.3g}" + (f" ± {std or 0.0:.2g}" if (n or 2) > 1 else ""))
            else:  # one seed: the mean alone ("± 0.0000" would read as a measured spread)
                cells.append(mean_std_text({"mean": mean, "std": std or 0.0, "n": n or 2}))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"## Failed or unfinished runs: {len(problems)}", ""]
    lines += [f"- `{p['run']}`: {p['status']} ({p.get('error')})" for p in problems] or ["(none)"]
    return "\n".join(lines) + "\n"


def _plots(rows: list[dict[str, Any]], keys: list[str], headlines: list[Headline], out_dir: Path) -> list[Path]:
    """``report.png``: the headline numbers against the first numeric varying key (lines), or, when no varying
    key is numeric, per value of the varying keys (grouped bars)."""
    rows = [r for r in rows if any(f"{h.name}_mean" in r for h in headlines)]
    if not rows or not headlines:
        return []
    numeric = [k for k in keys if all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                                      for r in rows)]
    metrics = [h.name for h in headlines]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.8), squeeze=False)
    if numeric:
        against = _line_panels(axes[0], rows, keys, numeric[0], metrics)
    else:
        against = _bar_panels(axes[0], rows, keys, metrics)
    for ax, h in zip(axes[0], headlines):
        if h.share:
            ax.set_ylim(0, 1.05)
        if h.log:
            ax.set_yscale("log")
        if "accuracy" in h.name:
            _chance(ax, [r for r in rows if r.get(f"{h.name}_mean") is not None])
        ax.set_title(h.title, fontsize=10)
    # One legend for the figure: every model, plus "chance" even when the last panel is not an accuracy.
    entries: dict[str, Any] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    axes[0, -1].legend(entries.values(), entries.keys(), fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    n_seeds = {r.get("_n_seeds") for r in rows}
    fig.suptitle(f"{over_seeds(n_seeds.pop() if len(n_seeds) == 1 else None)} per run, against {against}",
                 fontsize=10)
    fig.tight_layout()
    written = [out_dir / "report.png"]
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def _line_panels(axes: Any, rows: list[dict[str, Any]], keys: list[str], x_key: str, metrics: list[str]) -> str:
    """One line per model and value of the other varying keys, ± std bands; returns the x axis' name."""
    others = [k for k in keys if k != x_key]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], *[row.get(k) for k in others]), []).append(row)
    combos = list(dict.fromkeys(group[1:] for group in groups))
    styles = ["-", "--", ":", "-."]
    values = sorted({r[x_key] for r in rows})
    for ax, metric in zip(axes, metrics):
        for group, members in groups.items():
            members = sorted(members, key=lambda r: r[x_key])
            x = np.array([r[x_key] for r in members], dtype=float)
            mean = np.array([np.nan if r.get(f"{metric}_mean") is None else r[f"{metric}_mean"] for r in members])
            std = np.array([r.get(f"{metric}_std") or 0.0 for r in members], dtype=float)
            label = group[0] + "".join(f", {k.split('.')[-1]}={v}" for k, v in zip(others, group[1:]))
            style = styles[combos.index(group[1:]) % len(styles)]
            color = model_color(group[0])
            ax.plot(x, mean, style, marker="o", ms=3, color=color, label=label)
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.12)
        if len(values) > 2 and values[0] > 0:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(values, [f"{v:g}" for v in values], fontsize=8)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
    return x_key


def _bar_panels(axes: Any, rows: list[dict[str, Any]], keys: list[str], metrics: list[str]) -> str:
    """Grouped bars for categorical sweeps: one group per value of the varying keys, one bar per model (its
    colour), ± std error bars (none for one seed); returns the x axis' name."""
    def category(row: dict[str, Any]) -> str:
        if len(keys) == 1:
            return str(row.get(keys[0]))
        return ", ".join(f"{k.split('.')[-1]}={row.get(k)}" for k in keys) or row["run"]

    # Runs that share every varying value (repeats) would hide each other's bars: tell them apart by run.
    seen = [(category(r), r["model"]) for r in rows]
    repeated = len(set(seen)) < len(seen)
    label_of = {id(r): f"{category(r)} ({r['run']})" if repeated else category(r) for r in rows}
    categories = list(dict.fromkeys(label_of[id(r)] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    width = 0.8 / len(models)
    for ax, metric in zip(axes, metrics):
        for i, model in enumerate(models):
            by_category = {label_of[id(r)]: r for r in rows if r["model"] == model}
            x, mean, std = [], [], []
            for j, cat in enumerate(categories):
                row = by_category.get(cat)
                if row is None or row.get(f"{metric}_mean") is None:
                    continue
                x.append(j + (i - (len(models) - 1) / 2) * width)
                mean.append(row[f"{metric}_mean"])
                std.append(np.nan if row.get("_n_seeds") == 1 else row.get(f"{metric}_std") or 0.0)
            if x:
                ax.bar(x, mean, width, yerr=std, capsize=3, color=model_color(model), label=model)
        ax.set_xticks(range(len(categories)), categories, fontsize=8, rotation=20 if len(categories) > 4 else 0)
        ax.set_xlabel(", ".join(keys) or "run")
        ax.grid(axis="y", alpha=0.3)
    return ", ".join(keys) or "run"


def _chance(ax: plt.Axes, rows: list[dict[str, Any]]) -> None:
    """The dashed grey chance line (1 / n_classes) when every run drawn on ``ax`` shares one known n_classes."""
    n_classes = {r.get("_n_classes") for r in rows}
    if len(n_classes) != 1:
        return  # mixed datasets have no single chance level
    n = n_classes.pop()
    if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
        draw_chance(ax, 1.0 / n)


class ReportCallback(Callback):
    """Hydra callback: writes the report into the sweep folder when a multirun ends."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            summary = write_report(sweep_dir)
            log.info("report of %d runs (%d finished) in %s", summary["n_runs"], summary["finished"],
                     sweep_dir / "report")
            print((sweep_dir / "report" / "report.md").read_text())
        except Exception as err:  # a report must never turn a finished sweep into a failure
            log.error("could not write the report of %s: %s", sweep_dir, err)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m equivar.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder (outputs/multirun/...)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: SWEEP_DIR/report)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"equivar.report: error: {args.sweep_dir} is not a folder", file=sys.stderr)
        return 2
    try:
        summary = write_report(args.sweep_dir, args.out)
    except FileNotFoundError as err:
        print(f"equivar.report: error: {err}", file=sys.stderr)
        return 2
    print(Path(summary["files"][1]).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
