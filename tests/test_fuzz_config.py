"""Config fuzzing: random override sets drawn from every option's type and its invalid neighbours.

Each example is a tiny run of one experiment plus 1-2 drawn overrides: a valid value of an option, a value
that breaks its rule (0, negatives, NaN, inf, huge, wrong types, empty lists, misspelt choices), a misspelt
key, or text Hydra cannot parse. Through the CLI's validation path, every example must end one of two ways:
accepted, and the run completes with finite metrics; or refused with exactly one line ``equivar: error: ...``
that names a key (the CLI prints it and exits 2, tested in test_bad_inputs.py), with no other exception.

Profiles (tests/conftest.py): ``default`` (about a minute here) and ``ci`` (more examples; ``--slow``, which
CI runs). Set
``EQUIVAR_FUZZ_REPORT=<file>`` to get the counts of tried, refused and run examples.
"""

import json
import math
import os
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from equivar.config import builtin_experiments
from equivar.errors import UserError
from equivar.run import compose_config, report_error, run_experiment, validate
from equivar.tools.reference_docs import _misspelt, bad_values, option_sites

from support import TINY

# Experiments cheap enough to run tiny many times (the others share their code paths).
EXPERIMENTS = ["shift_test", "conv_compare", "pooling_invariance", "anatomy", "padding_leak", "equivariance"]
BASE = {name: [f"experiment={name}", "dataset=synthetic", "dataset.size=12", "n_seeds=1", "train.epochs=1",
               "models=[mlp,cnn_gap]"] + TINY
        for name in EXPERIMENTS}
SITES = [s for s in option_sites() if not s.key.startswith("dataset.") or "dataset=synthetic" in s.context]
SITES = [s for s in SITES if s.key not in ("load_from", "overwrite")]  # folders: tested on their own
ALL_KEYS = sorted({s.key for s in option_sites()} | {"zoo", "models", "dataset", "experiment"})
ZOO = ["mlp", "lenet", "local", "cnn_gap"]
COUNTS = {"tried": 0, "refused": 0, "ran": 0}


def _applies(site, experiment: str) -> bool:
    head = site.key.split(".")[0]
    return head not in builtin_experiments() or head == experiment


def _valid(site) -> st.SearchStrategy[str]:
    """Small valid values (runs stay tiny), drawn from the option's JSON Schema."""
    if site.key == "models":
        return st.lists(st.sampled_from(ZOO), min_size=1, max_size=2, unique=True).map(lambda v: f"[{','.join(v)}]")
    alternatives = site.schema["anyOf"] if "anyOf" in site.schema else [site.schema]
    nullable = any(a.get("type") == "null" for a in alternatives)
    first = next(a for a in alternatives if a.get("type") != "null")
    kind = first.get("type")
    if "const" in first:
        values = st.just(str(first["const"]))
    elif kind == "array":
        items = first.get("items", {})
        if "enum" in items:
            inner = st.sampled_from([str(c) for c in items["enum"]])
        elif items.get("type") == "integer":
            low = int(items.get("minimum", 1))
            inner = st.integers(low, low + 3).map(str)
        else:
            inner = st.floats(0.5, 3).map(lambda v: f"{v:.2f}")
        size = first.get("minItems", 1), max(first.get("minItems", 1), first.get("maxItems", 2))
        values = st.lists(inner, min_size=size[0], max_size=size[1]).map(lambda v: f"[{','.join(v)}]")
    elif kind == "boolean":
        values = st.sampled_from(["true", "false"])
    elif kind == "object":
        values = st.just("{}")
    elif "enum" in first:
        values = st.sampled_from([str(c) for c in first["enum"]])
    elif kind == "integer":
        low = int(first.get("minimum", 0))
        values = st.integers(low, low + 3).map(str)
    elif kind == "number":
        low = first.get("minimum", first.get("exclusiveMinimum", 0)) or 0
        values = st.floats(max(low, 0.05), max(low, 0.05) + 2).map(lambda v: f"{v:.3g}")
    else:
        values = st.just("x")
    return st.one_of(values, st.just("null")) if nullable else values


def _invalid(site) -> st.SearchStrategy[str]:
    neighbours = [v for v, _ in bad_values(site)]
    wrong = ["null", "[1,2]", "{a:1}", "''", "-1e39", "-2147483649"]
    return st.sampled_from(neighbours + wrong) if neighbours else st.sampled_from(wrong)


@st.composite
def override_sets(draw):
    experiment = draw(st.sampled_from(EXPERIMENTS))
    sites = [s for s in SITES if _applies(s, experiment)]
    drawn = []
    for _ in range(draw(st.integers(1, 2))):
        site = draw(st.sampled_from(sites))
        how = draw(st.sampled_from(["valid", "valid", "valid", "invalid", "invalid", "misspelt key", "unparsable"]))
        if how == "valid":
            drawn.append(f"{site.key}={draw(_valid(site))}")
        elif how == "invalid":
            drawn.append(f"{site.key}={draw(_invalid(site))}")
        elif how == "misspelt key":
            head, _, last = site.key.rpartition(".")
            drawn.append(f"+{head + '.' if head else ''}{_misspelt(last)}={draw(_valid(site))}")
        else:
            drawn.append(f"{site.key}={draw(st.sampled_from(['[', 'a,b', '${nosuch}', '{']))}")
    return experiment, drawn


def _names_a_key(line: str, drawn: list[str]) -> bool:
    keys = {re.split(r"[=]", d.lstrip("+"), maxsplit=1)[0] for d in drawn}
    text = line.replace("equivar: error: ", "")
    return any(k in text for k in keys) or any(re.search(rf"(^|[^\w.]){re.escape(k)}([^\w]|$)", text)
                                               for k in ALL_KEYS)


def _finite(obj) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite(v) for k, v in obj.items() if k not in ("environment",))
    if isinstance(obj, list):
        return all(_finite(v) for v in obj)
    return True


@pytest.mark.slow  # about 15 s: CI runs it (profile ci)
@given(override_sets())
def test_random_configs_run_or_fail_with_one_line_naming_a_key(case):
    experiment, drawn = case
    overrides = BASE[experiment] + drawn
    COUNTS["tried"] += 1
    try:
        validate(overrides)
        with tempfile.TemporaryDirectory() as tmp:
            metrics = run_experiment(compose_config(overrides), Path(tmp) / "run").model_dump(mode="json")
            assert (Path(tmp) / "run" / "metrics.json").is_file()
    except UserError as err:
        COUNTS["refused"] += 1
        line = report_error(err)
        assert "\n" not in line and line.startswith("equivar: error: ")
        assert _names_a_key(line, drawn), f"{overrides}: {line}"
        return
    COUNTS["ran"] += 1
    assert metrics.get("status", "ok") in ("ok", "partial", "diverged")
    assert _finite(metrics) or metrics.get("status") != "ok", f"{overrides}: non-finite metrics"


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    if COUNTS["tried"] >= 10:  # the draws must reach both outcomes, or the test says nothing about one of them
        assert COUNTS["ran"] > 0 and COUNTS["refused"] > 0, COUNTS
    path = os.environ.get("EQUIVAR_FUZZ_REPORT")
    if path:
        Path(path).write_text(json.dumps(COUNTS) + "\n")
