"""Documentation generated from the option schemas: every option's type, default and rule, and what breaking
each rule prints (run through the CLI's validation path, so the table shows real messages).

``python -m equivar.reference`` rewrites the generated sections of docs/configuration.md and
docs/reliability.md; a test fails when the committed docs differ from what the schemas generate.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterator

from equivar.options import MISSING, describe


@dataclasses.dataclass(frozen=True)
class OptionSite:
    """One option: its schema, field and the command-line prefix that selects the schema."""

    key: str  # as written on the command line, e.g. train.learning_rate
    context: tuple[str, ...]  # overrides that make the key meaningful, e.g. ("experiment=equivariance",)
    annotation: Any
    rule: dict[str, Any]
    default: Any
    help: str


def option_sites() -> list[OptionSite]:
    """Every option of every schema: the top level, train/shift/eval/execution, each dataset loader's and each
    experiment's."""
    from equivar.config import CORE_SCHEMAS, RunOptions
    from equivar.data import DATASET_SCHEMAS, Recipe
    from equivar.experiments import OPTION_SCHEMAS

    groups: list[tuple[str, type, tuple[str, ...], set[str]]] = [("", RunOptions, ("experiment=shift_test",), set())]
    groups += [(node, schema, ("experiment=shift_test",), set()) for node, schema in CORE_SCHEMAS.items()]
    recipe = {f.name for f in dataclasses.fields(Recipe)}
    for i, (loader, schema) in enumerate(DATASET_SCHEMAS.items()):
        context = ("experiment=shift_test", f"dataset={loader}") + (("dataset.tfds_name=mnist",)
                                                                    if loader == "tfds" else ())
        groups.append(("dataset", schema, context, set() if i == 0 else recipe))  # the recipe keys once
    groups += [(name, schema, (f"experiment={name}",), set()) for name, schema in OPTION_SCHEMAS.items()]
    sites = []
    for prefix, schema, context, skip in groups:
        hints = typing.get_type_hints(schema)
        for item in describe(schema):
            if item["name"] in skip:
                continue
            key = f"{prefix}.{item['name']}" if prefix else item["name"]
            sites.append(OptionSite(key, context, hints[item["name"]], item["rule"], item["default"],
                                    item["help"]))
    return sites


def _members(annotation: Any) -> tuple[list[Any], bool]:
    """The non-null types an annotation allows, and whether it allows null."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return [a for a in args if a is not type(None)], type(None) in args
    return [annotation], False


def _misspelt(word: str) -> str:
    """A near miss of a valid name (what a typo gives)."""
    return word[:-1] + ("x" if word[-1] != "x" else "y") if len(word) > 2 else word + "x"


def bad_values(site: OptionSite) -> Iterator[tuple[str, str]]:
    """Values that break the option's rule, as Hydra override text, each with why: the neighbours of the
    valid range (the bound itself or one past it), a misspelt choice, a wrong type, an empty list, a number
    too large for JAX's 32 bits, NaN and infinity."""
    members, _ = _members(site.annotation)
    kind = members[0]
    origin = typing.get_origin(kind)
    rule = site.rule
    if origin is list or kind is list:
        entry = typing.get_args(kind)[0] if typing.get_args(kind) else Any
        yield "[]", "an empty list"
        if entry in (int, float):
            if rule.get("minimum") is not None:
                yield f"[{_number_text(rule['minimum'] - 1, entry)}]", "an entry below the minimum"
            yield "[abc]", "an entry of the wrong type"
        elif rule.get("choices"):
            yield f"[{_misspelt(str(rule['choices'][-1]))}]", "a misspelt entry"
        return
    if kind is dict:
        yield "abc", "not a mapping"
        return
    if kind is bool:
        yield "maybe", "not true or false"
        return
    numeric = next((m for m in members if m in (int, float)), None)
    if numeric is not None:
        if rule.get("minimum") is not None:
            low = rule["minimum"] - 1 if numeric is int or rule["minimum"] <= 0 else 0
            yield _number_text(low, numeric), "below the minimum"
        if rule.get("above") is not None:
            yield _number_text(rule["above"], numeric), "at the exclusive lower bound"
        if rule.get("below") is not None:
            yield _number_text(rule["below"], numeric), "at the exclusive upper bound"
        if numeric is int:
            yield "2147483648", "too large for int32"
            yield "1.5", "not an integer"
        else:
            yield "nan", "not a number"
            yield "inf", "infinite"
            yield "1e39", "too large for float32"
        if str not in members:
            yield "abc", "not a number"
    if str in members and rule.get("choices"):
        yield _misspelt(str(rule["choices"][0])), "a misspelt choice"


def _number_text(value: float, kind: type) -> str:
    if kind is int:
        return str(int(value))
    return repr(float(value)) if math.isfinite(value) else str(value)


def message_for(overrides: list[str]) -> tuple[int, str]:
    """What ``python -m equivar.run OVERRIDES`` prints before running: ``(exit code, line)``; 0 and an empty
    line when the config is accepted."""
    from equivar.errors import UserError
    from equivar.run import report_error, validate

    try:
        validate(overrides)
    except UserError as err:
        return 2, report_error(err)
    return 0, ""


def _code(text: str) -> str:
    return "`" + _cell(text).replace("`", "'") + "`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _rule_text(site: OptionSite) -> str:
    rule = site.rule
    parts = []
    if rule.get("choices"):
        parts.append("one of " + ", ".join(f"`{c}`" for c in rule["choices"]))
    if rule.get("minimum") is not None:
        parts.append(f"≥ {rule['minimum']:g}")
    if rule.get("above") is not None:
        parts.append(f"> {rule['above']:g}")
    if rule.get("below") is not None:
        parts.append(f"< {rule['below']:g}")
    return ", ".join(parts)  # and, for every number, finite and within 32 bits (stated once, above the table)


def _type_text(annotation: Any) -> str:
    from equivar.options import _type_text as text

    return text(annotation)


def _default_text(value: Any) -> str:
    if isinstance(value, str) and value == MISSING:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value).replace("'", "")


def _composed_default(site: OptionSite) -> Any:
    """A ``dataset.*`` option's value as its dataset's config sets it (the recipe of ``dataset=NAME``), else
    the schema's default."""
    from equivar.run import compose_config

    if not site.key.startswith("dataset.") or site.key == "dataset.tfds_name":
        return site.default
    node: Any = compose_config([c for c in site.context if not c.startswith("dataset.")])
    for part in site.key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def options_table() -> str:
    """Markdown: every option, its type, default, rule and help."""
    lines = ["| key | type | default | rule | meaning |", "|---|---|---|---|---|"]
    for site in option_sites():
        if site.key == "experiment_name":
            lines.append("| `experiment_name` | str \\| null | `null` |  | set by `experiment=NAME` |")
            continue
        site = dataclasses.replace(site, default=_composed_default(site))
        where = next((c for c in site.context if c.startswith("dataset=")), "")
        key = f"`{site.key}`" + (f" ({where})" if where and site.key.startswith("dataset.") else "")
        lines.append(f"| {key} | {_cell(_type_text(site.annotation))} | {_code(_default_text(site.default))} | "
                     f"{_rule_text(site)} | {_cell(site.help)} |")
    return "\n".join(lines)


def bad_input_table() -> str:
    """Markdown: for every option, one value that breaks its rule and the line the CLI prints."""
    lines = ["| bad input | what the user sees (exit code 2) |", "|---|---|"]
    for site in option_sites():
        value, _ = next(bad_values(site), (None, None))
        if value is None:
            continue
        overrides = list(site.context) + [f"{site.key}={value}"]
        code, line = message_for(overrides)
        shown = " ".join(o for o in overrides if o != "experiment=shift_test")
        lines.append(f"| {_code(shown)} | {_code(line) if code else 'accepted (a gap in the rules)'} |")
    return "\n".join(lines)


# Mistakes beyond one option's rule (names, keys, models, the command line), each shown with what it prints.
MISTAKES: list[list[str]] = [
    [],
    ["experiment=nosuch"],
    ["experiment=shift_test", "models=[resnet]"],
    ["experiment=shift_test", "models=[lenet"],
    ["experiment=shift_test", "n_seeds=1,2"],
    ["experiment=shift_test", "+n_seed=2"],
    ["experiment=shift_test", "+model=lenet"],
    ["experiment=shift_test", "zoo.lenet.width=3"],
    ["experiment=shift_test", "+zoo.lenet.width=3", "models=[lenet]"],
    ["experiment=shift_test", "+zoo.lenet.chanels=[4,8]", "models=[lenet]"],
    ["experiment=shift_test", "zoo.lenet.padding=REFLECT", "models=[lenet]"],
    ["experiment=shift_test", "zoo.lenet.pool=median", "models=[lenet]"],
    ["experiment=shift_test", "zoo.lenet.kernel=30", "models=[lenet]"],
    ["experiment=shift_test", "zoo.lenet.pool_size=50", "models=[lenet]"],
    ["experiment=shift_test", "zoo.lenet.channels=[0,8]", "models=[lenet]"],
    ["experiment=shift_test", "zoo.mlp.hidden=[-5]", "models=[mlp]"],
    ["experiment=shift_test", "zoo.lenet.kernel=big", "models=[lenet]"],
    ["experiment=shift_test", "+zoo.mine._target_=nosuch.Net", "models=[mine]"],
    ["experiment=shift_test", "+zoo.mine.width=3", "models=[mine]"],
    ["experiment=shift_test", "+zoo.mine._target_=equivar.models.Stack",
     "+zoo.mine.layers=[{type:dense,features:8}]", "models=[mine]"],
    ["experiment=shift_test", "+zoo.mine._target_=equivar.models.Stack",
     "+zoo.mine.layers=[{type:conv,featurs:8},{type:global_pool,kind:max}]", "models=[mine]"],
    ["experiment=shift_test", "zoo.lenet.activation=rellu", "models=[lenet]"],
    ["experiment=shift_test", "+train.optimizer_options.nesterv=true"],
    ["experiment=shift_test", "train.optimizer=sgd", "+train.optimizer_options.momentum=abc"],
    ["experiment=shift_test", "train.learning_rate=-0.1"],
    ["experiment=shift_test", "load_from=/nonexistent/run"],
    ["experiment=shift_test", "shift.step=0.5"],
    ["experiment=shift_test", "+dataset.colour=red"],
    ["experiment=shift_test", "dataset=tfds"],
    ["experiment=shift_test", "+equivariance.max_shift=3"],
    ["experiment=equivariance", "+equivariance.max_shit=3"],
    ["experiment=equivariance", "equivariance.max_shift=abc"],
    ["experiment=padding_leak", "padding_leak.paddings=[SAME,circular]"],
]


def mistakes_table() -> str:
    """Markdown: every entry of :data:`MISTAKES` with the line the CLI prints."""
    lines = ["| bad input | what the user sees (exit code 2) |", "|---|---|"]
    for overrides in MISTAKES:
        code, line = message_for(overrides)
        shown = " ".join(overrides) or "(no experiment=)"
        lines.append(f"| {_code(shown)} | {_code(line) if code else 'accepted'} |")
    return "\n".join(lines)


MARK = "<!-- generated by python -m equivar.reference: {name} -->"
END = "<!-- end of generated {name} -->"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the generated section ``name`` replaced by ``body``."""
    start, end = MARK.format(name=name), END.format(name=name)
    if start not in text or end not in text:
        raise ValueError(f"no generated section {name!r} (markers {start} ... {end})")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def generated_docs(docs: Path) -> dict[Path, str]:
    """The docs files as the schemas generate them."""
    configuration, reliability = docs / "configuration.md", docs / "reliability.md"
    return {configuration: replace_section(configuration.read_text(), "options", options_table()),
            reliability: replace_section(replace_section(reliability.read_text(), "bad inputs", bad_input_table()),
                                         "mistakes", mistakes_table())}


def main() -> None:
    docs = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs")
    for path, text in generated_docs(docs).items():
        path.write_text(text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
