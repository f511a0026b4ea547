"""Docs tables generated from runs: ``python -m equivar.tools.results_docs RUN_DIR [RUN_DIR ...]``.

A results block in README.md or docs/*.md names the command whose output it holds::

    <!-- results of: python -m equivar.run experiment=shift_test | tables 1 | figure a.png as figures/b.png -->
    ...
    <!-- end of results -->

Given run folders, each block whose command is a run's command (``python -m equivar.run`` and the overrides
of its ``.hydra/overrides.yaml``, ``hydra.*`` left out) gets that run's summary (all of it, or the tables
listed: ``tables 1,2``), a line naming the command, the processor, the versions, the date and the seconds, and
the listed figures copied from the run folder. Nothing inside a block is typed by hand, and a run on another
command never touches it.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
from pathlib import Path

from equivar.io import read_json

BLOCK = re.compile(r"<!-- results of: (?P<spec>.+?) -->\n(?P<body>.*?)<!-- end of results -->", re.S)
RUN_COMMAND = "python -m equivar.run"


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """What a results block holds: the command, which tables of its summary, which figures (run file, docs
    path relative to the markdown file)."""

    command: str
    tables: tuple[int, ...] | None = None  # 1-based; None: the whole summary
    figures: tuple[tuple[str, str], ...] = ()

    @property
    def overrides(self) -> list[str]:
        return self.command[len(RUN_COMMAND):].split()


def parse_spec(spec: str) -> BlockSpec:
    """``COMMAND [| tables 1,2] [| figure RUN_FILE as DOCS_PATH ...]``."""
    command, *parts = [p.strip() for p in spec.split("|")]
    if not command.startswith(RUN_COMMAND + " "):
        raise ValueError(f"a results block names a command starting with {RUN_COMMAND!r}: {spec!r}")
    tables, figures = None, []
    for part in parts:
        word, _, rest = part.partition(" ")
        if word == "tables":
            tables = tuple(int(t) for t in rest.split(","))
        elif word == "figure" and " as " in rest:
            source, target = rest.split(" as ", 1)
            figures.append((source.strip(), target.strip()))
        else:
            raise ValueError(f"results block: {part!r} is neither 'tables N,M' nor 'figure FILE as PATH'")
    return BlockSpec(" ".join(command.split()), tables, tuple(figures))


def run_command(run_dir: Path) -> str:
    """The command a run folder holds the output of (its overrides as given, ``hydra.*`` left out)."""
    from omegaconf import OmegaConf

    overrides = OmegaConf.to_container(OmegaConf.load(Path(run_dir) / ".hydra" / "overrides.yaml"))
    assert isinstance(overrides, list)
    return " ".join([RUN_COMMAND, *(str(o) for o in overrides if not str(o).lstrip("+~").startswith("hydra."))])


def summary_tables(summary: str) -> list[str]:
    """The markdown tables of a summary, in order."""
    tables, current = [], []
    for line in summary.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append("\n".join(current))
            current = []
    if current:
        tables.append("\n".join(current))
    return tables


def provenance(run_dir: Path, command: str) -> str:
    """The line under a block: the command, the processor, the versions, the date and the seconds."""
    metrics, status = read_json(Path(run_dir) / "metrics.json"), read_json(Path(run_dir) / "status.json")
    env = metrics.get("environment") or {}
    packages = env.get("packages") or {}
    cpus = len(env.get("devices") or [])
    where = (f"{env.get('processor') or 'CPU'} ({env.get('vector_isa') or 'unknown instruction set'}), "
             f"{cpus} XLA CPU devices" if env.get("jax_backend") == "cpu" else
             f"{env.get('jax_backend')} {', '.join(env.get('devices') or [])}")
    return (f"*`{command}`: {where}, jax {packages.get('jax')}, flax {packages.get('flax')}, "
            f"{str(status.get('started', ''))[:10]}, {float(status.get('seconds', 0)):.0f} s end to end.*")


def render(spec: BlockSpec, run_dir: Path) -> str:
    """The body of a block, from the run folder."""
    summary = (Path(run_dir) / "summary.md").read_text().strip()
    if spec.tables is None:
        text = summary
    else:
        tables = summary_tables(summary)
        text = "\n\n".join(tables[i - 1] for i in spec.tables)
    return f"{text}\n\n{provenance(run_dir, spec.command)}\n"


def blocks(text: str) -> list[tuple[BlockSpec, str]]:
    """The results blocks of a markdown text: (spec, body)."""
    return [(parse_spec(m.group("spec")), m.group("body")) for m in BLOCK.finditer(text)]


def update(paths: list[Path], runs: list[Path]) -> list[str]:
    """Rewrites every block of ``paths`` whose command one of ``runs`` holds; returns what it rewrote."""
    by_command = {run_command(r): r for r in runs}
    done = []
    for path in paths:
        text = path.read_text()

        def replace(match: re.Match, path: Path = path) -> str:
            spec = parse_spec(match.group("spec"))
            run = by_command.get(spec.command)
            if run is None:
                return match.group(0)
            for source, target in spec.figures:
                shutil.copyfile(run / source, path.parent / target)
            done.append(f"{path}: {spec.command}")
            return f"<!-- results of: {match.group('spec')} -->\n{render(spec, run)}<!-- end of results -->"

        new = BLOCK.sub(replace, text)
        if new != text:
            path.write_text(new)
    return done


SPREAD_BLOCK = re.compile(r"<!-- spread of: (?P<command>.+?) -->\n(?P<body>.*?)<!-- end of spread -->", re.S)


def update_spreads(paths: list[Path], spreads: list[Path]) -> list[str]:
    """Rewrites every spread block (``<!-- spread of: python -m equivar.tools.spread ... -->``) whose command one
    of the ``python -m equivar.tools.spread`` output folders holds, with that folder's spread.md."""
    by_command = {" ".join(str(read_json(d / "spread.json")["command"]).split()): d for d in spreads}
    done = []
    for path in paths:
        text = path.read_text()

        def replace(match: re.Match, path: Path = path) -> str:
            command = " ".join(match.group("command").split())
            folder = by_command.get(command)
            if folder is None:
                return match.group(0)
            done.append(f"{path}: {command}")
            body = (folder / "spread.md").read_text().strip()
            return f"<!-- spread of: {command} -->\n{body}\n<!-- end of spread -->"

        new = SPREAD_BLOCK.sub(replace, text)
        if new != text:
            path.write_text(new)
    return done


def doc_files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m equivar.tools.results_docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each holds .hydra/, summary.md, ...) "
                        "and python -m equivar.tools.spread folders (spread.json, spread.md)")
    parser.add_argument("--root", type=Path, default=Path("."), help="the folder holding README.md and docs/")
    args = parser.parse_args(argv)
    unknown = [str(r) for r in args.runs if not ((r / "spread.json").is_file()
                                                 or (r / ".hydra" / "overrides.yaml").is_file())]
    if unknown:
        parser.error("not a run folder (no .hydra/overrides.yaml) nor an equivar.tools.spread folder: "
                     + ", ".join(map(str, unknown)))
    spreads = [r for r in args.runs if (r / "spread.json").is_file()]
    runs = [r for r in args.runs if r not in spreads]
    done = update(doc_files(args.root), runs) + update_spreads(doc_files(args.root), spreads)
    print("\n".join(done) if done else "no block names these folders' commands")


if __name__ == "__main__":
    main()
