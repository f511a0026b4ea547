"""The command's own pages: ``equivar --help`` and ``equivar --version``.

Everything on them is read from what it describes: the experiments from their YAML headers (the ``# Question:``
line), the options from their pydantic models, the choices from the config folders, the versions from the
installed distributions. Hydra's own page stays one flag away (``--hydra-help``).
"""

from __future__ import annotations

import importlib.metadata
import textwrap
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from equivar.version import __version__

QUESTION = "# Question:"
WIDTH = 100


def version_line() -> str:
    """``equivar X (jax Y, flax Z, hydra-core W)``: equivar's version and the versions it runs on."""

    def installed(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    deps = ", ".join(f"{d} {installed(d)}" for d in ("jax", "jaxlib", "flax", "optax", "hydra-core"))
    return f"equivar {__version__} ({deps})"


def experiment_questions(conf_dir: Path) -> dict[str, str]:
    """Each experiment config's one-line question (its header's ``# Question:`` line), by config name."""
    out = {}
    for path in sorted((conf_dir / "experiment").glob("*.yaml")):
        questions = [line[len(QUESTION):].strip() for line in path.read_text().splitlines()
                     if line.startswith(QUESTION)]
        out[path.stem] = questions[0] if questions else "(its YAML header has no '# Question:' line)"
    return out


def _choices(conf_dir: Path, group: str) -> str:
    return ", ".join(sorted(p.stem for p in (conf_dir / group).glob("*.yaml")))


def _options(node: str, model: type[BaseModel], names: tuple[str, ...], defaults: dict[str, Any]
             ) -> list[tuple[str, str]]:
    """``KEY=DEFAULT`` and the option's description, the default as the default run composes it."""
    values = defaults.get(node, {}) if node else defaults
    prefix = f"{node}." if node else ""
    rows = []
    for name in names:
        value = values.get(name)
        shown = "null" if value is None else str(value).replace("'", "").replace(" ", "")
        rows.append((f"{prefix}{name}={shown}", model.model_fields[name].description or ""))
    return rows


def help_page(conf_dir: Path, defaults: dict[str, Any]) -> str:
    """The text ``equivar --help`` prints; ``defaults`` is the config the command without overrides runs."""
    from equivar.config import RunOptions
    from equivar.train import TrainOptions
    from equivar.transforms import ShiftGrid

    def table(rows: list[tuple[str, str]], indent: int = 2) -> list[str]:
        width = 30  # the key column; a longer key takes a line of its own
        out = []
        for key, text in rows:
            wrapped = textwrap.wrap(text, WIDTH - indent - width)
            if len(key) + 2 > width:
                out.append(" " * indent + key)
                out += [" " * (indent + width) + line for line in wrapped]
            else:
                out.append((" " * indent + key.ljust(width) + (wrapped[0] if wrapped else "")).rstrip())
                out += [" " * (indent + width) + line for line in wrapped[1:]]
        return out

    questions = experiment_questions(conf_dir)
    lines = [
        version_line(),
        "",
        "Measures what convolution and pooling buy a model: translation equivariance and invariance, receptive",
        "fields, padding effects, and how fully connected models break on shifted inputs, as numbers with",
        "error bars over seeds and plots, in a run folder (metrics.json, summary.md, *.png).",
        "",
        "usage:",
        "  equivar experiment=NAME [KEY=VALUE ...]      one run (the same as python -m equivar.run ...)",
        "  equivar -m experiment=NAME KEY=A,B ...       a sweep: one run per combination",
        "  equivar experiment=NAME preset=tiny          the smoke test: small data and models, a minute or less",
        "",
        "experiments (experiment=NAME):",
        *table(sorted(questions.items())),
        "",
        "main options (KEY=DEFAULT):",
        *table(_options("", RunOptions, ("models", "n_seeds", "seed", "load_from"), defaults)),
        *table([(f"dataset={defaults.get('dataset', {}).get('name', 'mnist1d')}",
                 f"the data: {_choices(conf_dir, 'dataset')} (any TFDS image dataset by name: dataset=tfds "
                 "dataset.tfds_name=NAME)"),
                ("zoo", f"the models= names: {_choices(conf_dir, 'model')}; your own model: "
                        "+zoo.mine._target_=mylab.nets.MyNet models=[mine] (docs/your_model.md)")]),
        *table(_options("train", TrainOptions, ("epochs", "learning_rate", "augment_shift"), defaults)),
        *table(_options("shift", ShiftGrid, ("max", "step", "mode"), defaults)),
        "  every option with its type, default and rule: docs/configuration.md; --cfg job prints a run's config",
        "",
        "other commands:",
        "  python -m equivar.plot RUN          redraw a run's plots from its metrics.json",
        "  python -m equivar.report SWEEP      one table and figure over a sweep's runs",
        "  python -m equivar.tools.bench       speed against a plain PyTorch script",
        "  python -m equivar.tools.spread ...  how far a run's numbers move between vector instruction sets",
        "  python -m equivar.tools.results_docs RUN ...   the docs' results tables and figures from run folders",
        "",
        "docs: README.md and docs/ in the repository (docs/api.md: the Python API; docs/your_model.md: your model)",
        "flags: --help, --version, --hydra-help (Hydra's own flags: --cfg, --multirun, --info, ...)",
    ]
    return "\n".join(lines)


def experiment_help(conf_dir: Path, name: str, defaults: dict[str, Any]) -> str:
    """The text ``equivar experiment=NAME --help`` prints: the experiment's YAML header (its command, question,
    expected result and plots), its own options from its ``Options`` model with the defaults the run composes,
    and the models it measures by default; ``defaults`` is the config ``experiment=NAME`` composes."""
    from equivar.config import BUILTIN_EXPERIMENTS, load_experiment

    path = conf_dir / "experiment" / f"{name}.yaml"
    command, question, about = "", "", []
    for line in path.read_text().splitlines() if path.is_file() else []:
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith("python -m") and not command:
            command = text
        elif text.startswith("Question:"):
            question = text[len("Question:"):].strip()
        elif text and not text.startswith("@package"):
            about.append(text)
    module_name = str(defaults.get("experiment_module") or f"{BUILTIN_EXPERIMENTS}.{name}")
    options = getattr(load_experiment(module_name), "Options", None)
    lines = [f"equivar experiment={name}: {question or '(its YAML header has no # Question: line)'}", "",
             f"  {command or f'python -m equivar.run experiment={name}'}", ""]
    lines += ["  " + line for line in textwrap.wrap(" ".join(about), WIDTH - 2)] if about else [
        f"  (module {module_name})"]
    lines += ["", f"options of {name} ({name}.KEY=VALUE, defaults as this experiment runs them):"]
    if options is None:
        lines.append("  none (the run's options below apply)")
    else:
        for key, text in _options(name, options, tuple(options.model_fields), defaults):
            lines.append(f"  {key}")
            lines += [" " * 6 + part for part in textwrap.wrap(text, WIDTH - 6)]
    models = defaults.get("models")
    lines += ["", f"models measured (models=...): {', '.join(map(str, models)) if models else 'none'}; "
                  f"seeds: n_seeds={defaults.get('n_seeds')}",
              "every run option (models, dataset, train.*, shift.*): equivar --help; all of them with their rules: "
              "docs/configuration.md"]
    return "\n".join(lines)
