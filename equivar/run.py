"""Entry point: ``python -m equivar.run experiment=NAME [overrides]`` (``-m`` for sweeps).

This is the only module that reads Hydra's runtime config; everything else takes a plain dict or specs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from equivar.config import RunConfig, as_dict, parse_config, register_defaults
from equivar.errors import ConfigError, UserError
from equivar.execution import enable_compilation_cache, set_up_process
from equivar.experiment import STATUS, SUMMARY, execute, read_result
from equivar.help_page import experiment_help, help_page, version_line
from equivar.io import read_json, write_json
from equivar.results import EVERY_SEED_DIVERGED, ExperimentResult, RunStatus
from equivar.schema import nearest

log = logging.getLogger("equivar")

def config_dir() -> str:
    """The folder of equivar's Hydra configs: ``equivar.conf``, from the repository's ``conf/`` (editable
    install) or the installed package data (``pip install .``, a wheel), whatever the working directory."""
    import equivar.conf

    return str(Path(equivar.conf.__file__).resolve().parent)


CONFIG_DIR = config_dir()


register_defaults()  # before Hydra composes: the configs' defaults lists name these nodes


def run_experiment(raw: dict[str, Any], out_dir: Path) -> ExperimentResult:
    """Runs the experiment a resolved config dict names, writing its files into ``out_dir``.

    ``out_dir/status.json`` says where the run stands: ``running``, then ``complete`` (or ``diverged``), or
    ``interrupted``/``failed`` with the reason. A folder that already holds a complete run of the same config
    is skipped (so a re-launched sweep resumes); one that holds another config's results is refused unless the
    config says ``overwrite: true``: results are never overwritten by accident.
    """
    config = parse_config(raw)
    out_dir = Path(out_dir)
    status_path = out_dir / STATUS
    previous = _previous_run(out_dir, raw)
    if previous is not None:
        return previous
    resumes = _unfinished_same_config(out_dir, raw)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    record = {"experiment": config.experiment, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "config": _comparable(raw), **({"resumes": resumes} if resumes else {})}
    write_json(status_path, {**record, "status": "running"})
    try:
        result = execute(config, out_dir)
    except KeyboardInterrupt:
        write_json(status_path, {**record, "status": "interrupted", "seconds": time.time() - started,
                                 "note": "stopped by the user (Ctrl-C) before metrics.json was written"})
        raise
    except BaseException as err:
        write_json(status_path, {**record, "status": "failed", "seconds": time.time() - started,
                                 "error": f"{type(err).__name__}: {err}"})
        raise
    final = "diverged" if result.status is RunStatus.DIVERGED else "complete"
    write_json(status_path, {**record, "status": final, "seconds": time.time() - started})
    print((out_dir / SUMMARY).read_text().rstrip("\n"))  # after the status: the run is done whoever reads this
    return result


class ReaderMayLeave:
    """The CLI's standard output: a reader that stops reading (``equivar ... | head -1``) is not a failure of
    the run. The first write that finds the pipe closed points the stream at the null device, so later prints
    and log lines go nowhere instead of raising BrokenPipeError, and the run's status and exit code are those
    of its work."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.reader_left = False

    def write(self, text: str) -> int:
        if not self.reader_left:
            try:
                return int(self.stream.write(text))
            except BrokenPipeError:
                self._left()
        return len(text)

    def flush(self) -> None:
        if not self.reader_left:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._left()

    def _left(self) -> None:
        self.reader_left = True
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())  # Python's own flush at exit
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _unfinished_same_config(out_dir: Path, raw: dict[str, Any]) -> str | None:
    """The status an earlier attempt of this very config in ``out_dir`` ended with, when it did not finish
    (``interrupted``, ``failed``, or ``running`` when the process was killed): its complete checkpoints are
    kept. None otherwise (and always with ``overwrite: true``)."""
    path = out_dir / STATUS
    if raw.get("overwrite") or not path.is_file():
        return None
    status = read_json(path)
    same = status.get("config") == json.loads(json.dumps(_comparable(raw)))
    return str(status.get("status")) if same and status.get("status") not in ("complete", "diverged") else None


def _comparable(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k != "overwrite"}


def _previous_run(out_dir: Path, raw: dict[str, Any]) -> ExperimentResult | None:
    """What to do with a folder that already holds a run: the stored metrics when it is complete with this
    very config (a resumed sweep skips it), nothing when the earlier attempt never finished (run again), and
    a ConfigError when it holds other results (unless ``overwrite: true``)."""
    status_path, metrics_path = out_dir / "status.json", out_dir / "metrics.json"
    if raw.get("overwrite") or not (status_path.exists() or metrics_path.exists()):
        return None
    status = read_json(status_path) if status_path.exists() else {}
    finished = status.get("status") in ("complete", "diverged") and metrics_path.exists()
    if finished and status.get("config") == json.loads(json.dumps(_comparable(raw))):
        log.info("%s already holds this run, complete: skipped (overwrite=true runs it again)", out_dir)
        return read_result(out_dir)
    if finished or not status:
        raise ConfigError(f"{out_dir} already holds a run (status.json or metrics.json) of another config; "
                          "equivar does not overwrite results: choose another hydra.run.dir, or pass "
                          "overwrite=true")
    log.info("%s: the previous attempt ended %r; running it again", out_dir, status.get("status"))
    return None


def job_overrides(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of every job a command line starts: one job, or for ``-m`` the product of the
    sweeps on the command line and in the config's ``hydra.sweeper.params`` (as Hydra's basic sweeper does)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not multirun:
        return [list(overrides)]
    plain = [o for o in OverridesParser.create().parse_overrides(overrides) if not o.is_sweep_override()]
    base = compose_config([str(o.input_line) for o in plain], with_hydra=True)
    params = (base.get("hydra", {}).get("sweeper", {}) or {}).get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)
    return [job for batch in batches for job in batch]


def compose_config(overrides: list[str], with_hydra: bool = False, resolve: bool = True) -> dict[str, Any]:
    """The resolved config dict ``python -m equivar.run OVERRIDES`` runs (Hydra's compose API, equivar's
    configs), or a one-line ConfigError for whatever Hydra refuses."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    _check_grammar(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=with_hydra)
            if with_hydra:  # only Hydra's own node (the sweeper's params); unresolved: ${now:} needs a run
                return {"hydra": as_dict(cfg.hydra, resolve=False)}
            return as_dict(cfg, resolve)
    except UserError:
        raise
    except Exception as err:  # Hydra's and OmegaConf's composition errors: one line, naming the key
        message = hydra_message(err)
        key = _unknown_key(err) or _unmatched_group(err)
    finally:
        GlobalHydra.instance().clear()
    if key and (plain := _without_plus(overrides, key)) is not None:  # model=lenet, zoo.mine._target_=...
        raise ConfigError(_as_added(overrides, plain, key))
    if key:  # a misspelt key: the nearest key beside it in the config composed without it
        parent, _, name = key.rpartition(".")
        rest = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith(key)]
        try:
            node: Any = compose_config(rest)
            for part in parent.split(".") if parent else []:
                node = node[part]
        except (ConfigError, KeyError, TypeError):
            node = None
        near = nearest(name, node) if isinstance(node, dict) else []
        message = f"{key} is not an option" + (f" (did you mean {parent + '.' if parent else ''}{near[0]}?)"
                                               if near else "")
        if parent.startswith("zoo.") or not isinstance(node, dict):  # a model's constructor may take more
            message += f"; to add a new key, write +{key}=VALUE"
        else:  # a checked node: its keys are all the options there are
            message += f"; valid options: {', '.join(k for k in node if not k.startswith('_'))}"
    raise ConfigError(message)


def _unmatched_group(err: BaseException) -> str | None:
    """The group an override names that the config's defaults list lacks (``model=lenet``: Hydra's "Could not
    override 'model'")."""
    import re

    match = re.match(r"Could not override '([\w.@/]+)'", str(err))
    return match.group(1) if match else None


def _without_plus(overrides: list[str], key: str) -> str | None:
    """The override that sets ``key`` (or a key under it) without ``+``, if that is what was refused."""
    return next((o for o in overrides if not o.startswith(("+", "~")) and "=" in o
                 and (o.split("=", 1)[0] == key or o.split("=", 1)[0].startswith(key + "."))), None)


def _as_added(overrides: list[str], plain: str, key: str) -> str:
    """The message for an override that sets a key the config lacks without ``+``: the message the ``+`` form
    gets when that form is wrong too (another experiment's options, ``model`` for ``models``), else how to add
    the key."""
    added = [f"+{o}" if o == plain else o for o in overrides]
    fix = f"{plain.split('=', 1)[0]} is not a key of the config yet; to add a key, write +{plain}"
    try:
        validate(added)
    except UserError as err:
        text = str(err).splitlines()[0]
        refused = "is not an option" in text or "has no option" in text  # the key itself: no + makes it valid
        return text if refused else f"{fix}; then: {text}"
    return fix


def _unknown_key(err: BaseException) -> str | None:
    """The key of an override that names no key of the config (``n_seed=2`` without ``+``), if that is the
    error."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = err.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and getattr(cause, "full_key", None):
        return str(cause.full_key)
    return None


def _check_grammar(overrides: list[str]) -> None:
    """Each override parsed alone, so a syntax error names the override it is in; a sweep (``a=1,2``) in a
    single run is refused with how to write it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if "=" not in override and not override.startswith("~"):
            named = Path(CONFIG_DIR, "experiment", f"{override}.yaml").is_file()
            raise ConfigError(f"{override!r} is not an override (key=value)" + (
                f"; to run that experiment: experiment={override}" if named else
                "; every argument is key=value, e.g. experiment=shift_test n_seeds=2 (equivar --help lists them)"))
        try:
            parsed = parser.parse_override(override)
        except Exception as err:
            detail = str(err).splitlines()[0].split("; See https", 1)[0].rstrip(".")
            raise ConfigError(f"{key}: cannot parse the override {override!r} ({detail}); lists are [a,b], "
                              "strings with special characters are quoted: key='a,b'") from None
        if parsed.is_sweep_override():
            value = override.split("=", 1)[1]
            raise ConfigError(f"{key}={value}: a comma makes a sweep; add -m (--multirun) for one run per value, "
                              f"or write a list as {key}=[{value}]")


def _is_tfds_name(name: str) -> bool:
    """Whether TFDS knows a dataset by this name (its registry of builders, no download)."""
    import contextlib
    import io

    try:
        import tensorflow_datasets as tfds

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return name in tfds.list_builders(with_community_datasets=False)
    except Exception:  # TFDS cannot list its builders here: no hint rather than a wrong one
        return False


def hydra_message(err: BaseException) -> str:
    """One line from a Hydra or OmegaConf error: a group choice that does not exist (with the nearest one), or
    the error's first line."""
    from hydra.errors import MissingConfigException

    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options is not None:
        group, _, name = err.missing_cfg_file.rpartition("/")
        near = nearest(name, err.options)
        text = f"{group}={name} is not one of {', '.join(err.options)}" + (
            f" (did you mean {group}={near[0]}?)" if near else "")
        if group == "dataset" and _is_tfds_name(name):
            text += f"; {name} is a TFDS dataset: dataset=tfds dataset.tfds_name={name}"
        elif group == "experiment":
            text += ("; an experiment of your own: its YAML in a folder given by hydra.searchpath=[file://DIR] "
                     "(docs/api.md)")
        return text
    lines = [line.strip() for e in (err, err.__cause__) if e is not None for line in str(e).splitlines()
             if line.strip() and not line.strip().startswith(("full_key:", "object_type=", "reference_type="))]
    text = lines[0].rstrip(".") if lines else type(err).__name__
    if added := re.match(r"Multiple values for (\S+)\. To override a value use 'override \S+: (\S+)'", text):
        group, choice = added.groups()  # +group=choice for a group the defaults already hold
        return f"+{group}={choice} adds a group the config already has: write {group}={choice} (without the +)"
    key = next((k for e in (err, err.__cause__) if (k := getattr(e, "full_key", None))), None)
    return f"{key}: {text}" if key and str(key) not in text else text


def validate(overrides: list[str], multirun: bool = False) -> list[RunConfig]:
    """The CLI's validation path: every job the command line starts, composed as Hydra will and checked
    against every schema, before any job runs (a sweep with one bad configuration starts none)."""
    from equivar.models import check_model

    configs = []
    for job in job_overrides(overrides, multirun):
        raw = compose_config(job)
        config = parse_config(raw)
        _check_zoo_entries_used(job, raw, config)
        known = None if config.load_from else config.dataset.shape()
        if known is not None:
            for spec in config.models:
                check_model(spec.target, known[0], known[1], spec.options, spec.where)  # once per process
        configs.append(config)
    return configs


def _check_zoo_entries_used(overrides: list[str], raw: dict[str, Any], config: RunConfig) -> None:
    """A zoo key added on the command line (``+zoo.mine...``) belongs to a model the run measures, or that some
    option of the run names: otherwise the override does nothing, which is never what was meant
    (``+zoo.mine.width=3`` without ``models=[mine]``). ``++zoo...`` (set whether or not it exists, the form of an
    override list shared by several runs) and changes to existing keys are not checked."""
    set_here = {o[1:].split("=", 1)[0].split(".")[1] for o in overrides if o.startswith("+zoo.") and "=" in o}
    if not set_here:
        return
    used = {spec.name for spec in config.models} | set(_strings({k: v for k, v in raw.items() if k != "zoo"}))
    unused = sorted(set_here - used)
    if unused:
        names = ",".join(s.name for s in config.models)
        raise ConfigError(f"zoo.{unused[0]} is set on the command line but this run does not measure it (models="
                          f"[{names}]): add it, e.g. models=[{names + ',' if names else ''}{unused[0]}]")


def _strings(value: Any) -> list[str]:
    """Every string inside a nested dict/list (the names options refer to)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def check_run_folder(overrides: list[str], multirun: bool = False) -> None:
    """The folder runs write into can be created: its first existing ancestor is a folder one may write in
    (a file in the way, or no permission, is one line naming the folder, before Hydra tries)."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == key), None)
    folder = Path((given or "outputs").split("${", 1)[0] or ".").expanduser().absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"the run folder {folder} cannot be created: {existing} is a file, not a folder; choose "
                          f"another {key}=...")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"the run folder {folder} cannot be created: no permission to write in {existing}; "
                          f"choose another {key}=...")
    try:  # permissions are not the whole story (/proc, /sys, a read-only mount): try, and leave nothing behind
        os.rmdir(tempfile.mkdtemp(prefix=".equivar-probe-", dir=existing))
    except OSError as err:
        raise ConfigError(f"the run folder {folder} cannot be created: {existing} refuses new folders "
                          f"({err.strerror}); choose another {key}=...") from None


def report_error(err: BaseException) -> str:
    """The one line a user error prints (JAX appends a note on its frames to errors raised in traced code)."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"equivar: error: {text}"


def main() -> None:
    """``python -m equivar.run`` and the ``equivar`` command: the configs are checked first (one line and exit
    code 2 for a bad one, whatever part of the config or the command line is wrong), then Hydra runs them."""
    from hydra._internal.utils import get_args_parser

    set_up_process()
    _working_directory_importable()
    if not isinstance(sys.stdout, ReaderMayLeave):
        sys.stdout = ReaderMayLeave(sys.stdout)  # a text stream in all it is used for
    if any(a in ("--version", "-V") for a in sys.argv[1:]):
        print(version_line())
        return
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        chosen = [a for a in sys.argv[1:] if a.lstrip("+").startswith("experiment=")]
        try:
            print(experiment_help(Path(CONFIG_DIR), chosen[-1].split("=", 1)[1], compose_config(chosen))
                  if chosen else help_page(Path(CONFIG_DIR), compose_config([])))
        except UserError as err:
            print(report_error(err), file=sys.stderr)
            sys.exit(2)
        return
    try:
        args = get_args_parser().parse_args(sys.argv[1:])
    except SystemExit:
        raise
    own_flags = (args.help, args.hydra_help, args.cfg, args.info, args.shell_completion, args.config_path,
                 args.config_name, args.config_dir, args.experimental_rerun)
    if not any(own_flags) and os.environ.get("HYDRA_FULL_ERROR") != "1":
        try:
            validate(args.overrides, args.multirun)
            check_run_folder(args.overrides, args.multirun)
        except UserError as err:
            print(report_error(err), file=sys.stderr)
            sys.exit(2)
    _hydra_main()


def _working_directory_importable() -> None:
    """``python -m equivar.run`` imports models from the working directory (Python puts it first on the path);
    the ``equivar`` console script starts from its own folder instead, so it puts the working directory there
    too: ``_target_: mylab.nets.MyNet`` finds ``./mylab`` from both."""
    cwd = os.getcwd()
    if not any(entry in ("", cwd) or (entry and Path(entry).resolve() == Path(cwd).resolve()) for entry in sys.path):
        sys.path.insert(0, cwd)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    set_up_process()  # again in a launcher's job process (joblib, submitit), before its backend starts
    enable_compilation_cache()
    try:
        result = run_experiment(as_dict(cfg), out_dir)
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(report_error(err), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"equivar: interrupted; {out_dir / 'status.json'} records it (no metrics.json was written)",
              file=sys.stderr)
        _exit_at_once(130)
    log.info("results in %s", out_dir)
    if result.status is RunStatus.DIVERGED:
        print(f"equivar: error: {EVERY_SEED_DIVERGED} (non-finite loss or gradients); the steps are recorded in "
              f"{out_dir / 'metrics.json'} under unmeasured.*.seeds; try a smaller train.learning_rate",
              file=sys.stderr)
        sys.exit(3)


def _exit_at_once(code: int) -> None:
    """Exits with ``code`` without tearing the interpreter down: Ctrl-C can land while XLA's threads are still
    running a computation, and unloading the runtime under them ends in SIGSEGV instead of the exit code. The
    run's status.json is already written; the logs and the standard streams are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
