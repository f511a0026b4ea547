"""Documentation generated from the option schemas: every option's type, default and rule, and what breaking
each rule prints (run through the CLI's validation path, so the table shows real messages).

``python -m equivar.tools.reference_docs`` rewrites the generated sections of docs/configuration.md and
docs/reliability.md; a test fails when the committed docs differ from what the schemas generate.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel


@dataclasses.dataclass(frozen=True)
class OptionSite:
    """One option: the command-line key, the overrides that make it meaningful, and its JSON Schema."""

    key: str  # as written on the command line, e.g. train.learning_rate
    context: tuple[str, ...]  # overrides that make the key meaningful, e.g. ("experiment=equivariance",)
    schema: dict[str, Any]  # the option's JSON Schema (pydantic's), references resolved
    default: Any
    help: str


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """A JSON Schema with its ``$ref``s to ``$defs`` replaced by what they name."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _resolve(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def properties(cls: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """Each option of an options model by its key (aliases as written, ``_target_``), as JSON Schema."""
    schema = cls.model_json_schema()
    return {k: _resolve(v, schema.get("$defs", {})) for k, v in schema["properties"].items()}


def dataset_choices() -> dict[str, type[BaseModel]]:
    """``dataset=NAME`` choices whose YAML names a dataset class itself, by name."""
    from omegaconf import OmegaConf

    from equivar.config import as_dict
    from equivar.run import config_dir
    from equivar.targets import locate_class

    out = {}
    for path in sorted((Path(config_dir()) / "dataset").glob("*.yaml"), key=lambda p: (p.stem != "mnist1d", p.stem)):
        target = as_dict(OmegaConf.load(path), resolve=False).get("_target_")
        if target:
            out[path.stem] = locate_class(target, "dataset._target_")
    return out


def option_sites() -> list[OptionSite]:
    """Every option of every options model: the top level, train/shift/eval/execution, each dataset's and each
    of equivar's experiments'."""
    from equivar.config import NODES, RunOptions, builtin_experiments
    from equivar.data import DatasetOptions

    groups: list[tuple[str, type[BaseModel], tuple[str, ...], set[str]]] = [
        ("", RunOptions, ("experiment=shift_test",), set())]
    groups += [(node, schema, ("experiment=shift_test",), set()) for node, schema in NODES.items()]
    recipe = {f.alias or n for n, f in DatasetOptions.model_fields.items()}
    for i, (name, cls) in enumerate(dataset_choices().items()):
        context = ("experiment=shift_test", f"dataset={name}") + (("dataset.tfds_name=mnist",)
                                                                  if "tfds_name" in cls.model_fields else ())
        groups.append(("dataset", cls, context, {"_target_"} | (set() if i == 0 else recipe)))  # recipe once
    groups += [(name, module.Options, (f"experiment={name}",), set())
               for name, module in builtin_experiments().items() if hasattr(module, "Options")]
    sites = []
    for prefix, cls, context, skip in groups:
        for name, prop in properties(cls).items():
            if name in skip:
                continue
            key = f"{prefix}.{name}" if prefix else name
            sites.append(OptionSite(key, context, prop, prop.get("default", MISSING), prop.get("description", "")))
    return sites


MISSING = "(required)"


def _alternatives(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return schema["anyOf"] if "anyOf" in schema else [schema]


def type_text(schema: dict[str, Any]) -> str:
    """``int``, ``float | null``, ``list[str]``, ``int | 'auto'``: a JSON Schema as a short type."""
    parts = []
    for alt in _alternatives(schema):
        kind = alt.get("type")
        if "const" in alt:
            parts.append(repr(alt["const"]))
        elif kind == "array":
            parts.append(f"list[{type_text(alt.get('items', {}))}]")
        else:
            parts.append({"integer": "int", "number": "float", "string": "str", "boolean": "bool", "null": "null",
                          "object": "dict"}.get(str(kind), "any"))
    return " | ".join(dict.fromkeys(parts))


def rule_text(schema: dict[str, Any]) -> str:
    """The option's rule: choices and bounds (of its entries, for a list)."""
    parts = []
    for alt in _alternatives(schema):
        target = alt.get("items", alt) if alt.get("type") == "array" else alt
        if alt.get("minItems"):
            parts.append("non-empty" if alt["minItems"] == 1 and "maxItems" not in alt else
                         f"{alt['minItems']} entries" if alt.get("maxItems") == alt["minItems"] else
                         f"≥ {alt['minItems']} entries")
        for alt_target in _alternatives(target):
            if "enum" in alt_target:
                parts.append("one of " + ", ".join(f"`{c}`" for c in alt_target["enum"]))
            for key, symbol in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("exclusiveMaximum", "<"),
                                ("maximum", "≤")):
                if key in alt_target:
                    parts.append(f"{symbol} {alt_target[key]:g}")
    return ", ".join(dict.fromkeys(parts))  # and, for every number, finite and within 32 bits (stated once)


def _misspelt(word: str) -> str:
    """A near miss of a valid name (what a typo gives)."""
    return word[:-1] + ("x" if word[-1] != "x" else "y") if len(word) > 2 else word + "x"


def bad_values(site: OptionSite) -> Iterator[tuple[str, str]]:
    """Values that break the option's rule, as Hydra override text, each with why: the neighbours of the
    valid range (the bound itself or one past it), a misspelt choice, a wrong type, an empty list, a number
    too large for JAX's 32 bits, NaN and infinity."""
    alternatives = [a for a in _alternatives(site.schema) if a.get("type") != "null"]
    kinds = {a.get("type") for a in alternatives}
    if "array" in kinds:
        array = next(a for a in alternatives if a.get("type") == "array")
        items = array.get("items", {})
        if array.get("minItems"):
            yield "[]", "an empty list"
        if items.get("type") in ("integer", "number"):
            if "minimum" in items:
                yield f"[{_number_text(items['minimum'] - 1, items['type'])}]", "an entry below the minimum"
            yield "[abc]", "an entry of the wrong type"
        elif "enum" in items:
            yield f"[{_misspelt(str(items['enum'][-1]))}]", "a misspelt entry"
        if "string" not in kinds:
            return
    if kinds == {"object"}:
        yield "abc", "not a mapping"
        return
    if kinds == {"boolean"}:
        yield "maybe", "not true or false"
        return
    number = next((a for a in alternatives if a.get("type") in ("integer", "number")), None)
    if number is not None:
        kind = number["type"]
        if "minimum" in number:
            low = number["minimum"] - 1 if kind == "integer" or number["minimum"] <= 0 else 0
            yield _number_text(low, kind), "below the minimum"
        if "exclusiveMinimum" in number:
            yield _number_text(number["exclusiveMinimum"], kind), "at the exclusive lower bound"
        if "exclusiveMaximum" in number:
            yield _number_text(number["exclusiveMaximum"], kind), "at the exclusive upper bound"
        if kind == "integer":
            yield "2147483648", "too large for int32"
            yield "1.5", "not an integer"
        else:
            yield "nan", "not a number"
            yield "inf", "infinite"
            yield "1e39", "too large for float32"
        if not any(a.get("type") == "string" for a in alternatives):
            yield "abc", "not a number"
    choices = [c for a in alternatives for c in (a.get("enum") or ([a["const"]] if "const" in a else []))]
    if choices:
        yield _misspelt(str(choices[0])), "a misspelt choice"


def _number_text(value: float, kind: str) -> str:
    if kind == "integer":
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


def _default_text(value: Any) -> str:
    if isinstance(value, str) and value == MISSING:
        return MISSING
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value).replace("'", "")


def _composed_default(site: OptionSite) -> Any:
    """The option's value as the composed config sets it before any override (a dataset's recipe, an
    experiment's delta, ``${dataset.x}`` where a value follows the dataset), else the schema's default."""
    from equivar.run import compose_config

    if site.key == "dataset.tfds_name":
        return site.default
    node: Any = compose_config([c for c in site.context if not c.startswith("dataset.")], resolve=False)
    for part in site.key.split("."):
        if not isinstance(node, dict) or part not in node:
            return site.default
        node = node[part]
    return node


def options_table() -> str:
    """Markdown: every option, its type, default, rule and help."""
    lines = ["| key | type | default | rule | meaning |", "|---|---|---|---|---|"]
    for site in option_sites():
        if site.key in ("experiment_name", "experiment_module"):
            lines.append(f"| `{site.key}` | {_cell(type_text(site.schema))} | `null` |  | {_cell(site.help)} |")
            continue
        site = dataclasses.replace(site, default=_composed_default(site))
        where = next((c for c in site.context if c.startswith("dataset=")), "")
        key = f"`{site.key}`" + (f" ({where})" if where and site.key.startswith("dataset.") else "")
        lines.append(f"| {key} | {_cell(type_text(site.schema))} | {_code(_default_text(site.default))} | "
                     f"{rule_text(site.schema)} | {_cell(site.help)} |")
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
    ["experiment=shift_test", "model=lenet"],
    ["shift_test"],
    ["experiment=shift_test", "+preset=tiny"],
    ["experiment=shift_test", "preset=tyni"],
    ["experiment=shift_test", "zoo.mine._target_=equivar.models.LeNet", "models=[mine]"],
    ["experiment=shift_test", "+zoo.mine._target_=equivar.models.LeNet", "+zoo.mine.width=3"],
    ["experiment=shift_test", "lie_derivative.n_examples=3"],
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
    ["experiment=shift_test", "+equivariance.n_examples=3"],
    ["experiment=equivariance", "+equivariance.n_example=3"],
    ["experiment=equivariance", "equivariance.n_examples=abc"],
    ["experiment=equivariance", "shift.mode=[roll,circular]"],
    ["experiment=shift_test", "shift.mode=[roll,zero]"],
    ["experiment=shift_test", "shift.max=40"],
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


MARK = "<!-- generated by python -m equivar.tools.reference_docs: {name} -->"
END = "<!-- end of generated {name} -->"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the generated section ``name`` replaced by ``body``."""
    start, end = MARK.format(name=name), END.format(name=name)
    if start not in text or end not in text:
        raise ValueError(f"no generated section {name!r} (markers {start} ... {end})")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def result_schemas() -> dict[str, str]:
    """Each of equivar's experiments' ``metrics.json`` JSON Schema (from its ``Result``), as file text."""
    from equivar.config import builtin_experiments

    out = {}
    for name, module in builtin_experiments().items():
        schema = module.Result.model_json_schema(mode="serialization")
        schema["$id"] = f"https://equivar/docs/schemas/{name}.json"
        schema["title"] = f"equivar {name} metrics.json"
        schema["description"] = (module.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        out[name] = json.dumps(schema, indent=1) + "\n"
    return out


def schemas_table() -> str:
    """Markdown: one row per experiment with its schema file and its headline numbers."""
    from equivar.config import builtin_experiments

    lines = ["| experiment | schema | headline numbers per model (`python -m equivar.report`) |", "|---|---|---|"]
    for name, module in builtin_experiments().items():
        record = module.Result.model_fields["models"].annotation.__args__[1]
        headline = ", ".join(f"`{h.path}`" for h in record.headline) or "—"
        lines.append(f"| `{name}` | [schemas/{name}.json](schemas/{name}.json) | {headline} |")
    return "\n".join(lines)


def generated_docs(docs: Path) -> dict[Path, str]:
    """The docs files as the schemas generate them."""
    configuration, reliability = docs / "configuration.md", docs / "reliability.md"
    configuration_text = replace_section(configuration.read_text(), "options", options_table())
    files = {configuration: replace_section(configuration_text, "metrics schemas", schemas_table()),
             reliability: replace_section(replace_section(reliability.read_text(), "bad inputs", bad_input_table()),
                                          "mistakes", mistakes_table())}
    files |= {docs / "schemas" / f"{name}.json": text for name, text in result_schemas().items()}
    return files


def main() -> None:
    from equivar.execution import set_up_process

    set_up_process()
    docs = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs")
    for path, text in generated_docs(docs).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
