"""How far a run's numbers move between processors: ``python -m equivar.tools.spread [--isas A,B] OVERRIDES``.

Training in float32 rounds differently on processors with different vector instruction sets (XLA:CPU picks
its kernels, and so its summation order, by the instruction set), and training amplifies a last-bit
difference into a different model: a number printed on one machine is not the number another machine prints.
This runs the same command once per instruction set this CPU supports, capping XLA:CPU at each in turn
(``XLA_FLAGS=--xla_cpu_max_isa=...``: the code a CPU with only that set would run), and tables every headline
number per model: its value per instruction set and the spread (largest minus smallest), beside the seeds'
own standard deviation.

Writes ``spread.md`` and ``spread.json`` (and one run folder per instruction set) into ``--out``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from equivar.io import supported_isas, write_json
from equivar.results import ExperimentResult


def spread_rows(results: dict[str, ExperimentResult]) -> list[dict[str, Any]]:
    """Per model and headline number: its mean under each instruction set, the spread (max - min) and the
    largest standard deviation over seeds among them. Only models and numbers every run has."""
    runs = list(results.values())
    rows = []
    for model in runs[0].models:
        if not all(model in r.models for r in runs):
            continue
        per_run = {isa: r.models[model].headline_values() for isa, r in results.items()}
        for name in per_run[next(iter(per_run))]:
            if not all(name in values for values in per_run.values()):
                continue
            means = {isa: float(values[name].mean) for isa, values in per_run.items()}
            stds = [float(values[name].std) for values in per_run.values() if values[name].std is not None]
            rows.append({"model": model, "number": name, "by_isa": means,
                         "spread": max(means.values()) - min(means.values()),
                         "seed_std": max(stds) if stds else None})
    return rows


def spread_table(rows: list[dict[str, Any]], isas: list[str]) -> str:
    """Markdown: one row per model and number."""
    lines = ["| model | number | " + " | ".join(isas) + " | spread | std over seeds |",
             "|---|---|" + "---:|" * (len(isas) + 2)]
    for r in rows:
        std = "—" if r["seed_std"] is None else f"{r['seed_std']:.4f}"
        lines.append(f"| {r['model']} | {r['number']} | " + " | ".join(f"{r['by_isa'][i]:.4f}" for i in isas)
                     + f" | {r['spread']:.4f} | {std} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from equivar.experiment import read_result

    parser = argparse.ArgumentParser(prog="python -m equivar.tools.spread", description=__doc__.split("\n\n")[0])
    parser.add_argument("--isas", default=None, help="comma-separated XLA:CPU instruction sets (default: every "
                        "one this CPU supports, widest first: " + ",".join(supported_isas() or ["none found"]) + ")")
    parser.add_argument("--out", type=Path, default=None, help="folder (default outputs/spread/<date_time>)")
    parser.add_argument("overrides", nargs="+", help="the run's overrides, e.g. experiment=shift_test")
    args = parser.parse_args(argv)
    isas = args.isas.split(",") if args.isas else supported_isas()
    if len(isas) < 2:
        parser.error("fewer than two instruction sets to compare (this CPU's: "
                     f"{', '.join(supported_isas()) or 'unknown'}); give them with --isas")
    out = args.out or Path("outputs") / "spread" / time.strftime("%Y-%m-%d_%H-%M-%S")
    started = time.time()
    for isa in isas:
        env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_max_isa={isa}".strip()}
        command = [sys.executable, "-m", "equivar.run", *args.overrides, f"hydra.run.dir={out / isa}"]
        print(f"{isa}: {' '.join(command[1:])}", flush=True)
        done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            sys.exit(f"equivar.tools.spread: the run capped at {isa} failed (exit {done.returncode}); see {out / isa}")
    results = {isa: read_result(out / isa) for isa in isas}
    rows = spread_rows(results)
    line = "python -m equivar.tools.spread " + " ".join(args.overrides)
    environment = results[isas[0]].environment
    text = (f"{line}: the same run under each XLA:CPU instruction set ({', '.join(isas)}) on "
            f"{environment.processor if environment and environment.processor else 'this CPU'}, "
            f"{time.strftime('%Y-%m-%d')}, {time.time() - started:.0f} s\n\n{spread_table(rows, isas)}")
    (out / "spread.md").write_text(text + "\n")
    write_json(out / "spread.json", {"command": line, "isas": isas, "rows": rows})
    print(text)
    print(f"wrote {out / 'spread.md'}")


if __name__ == "__main__":
    main()
