"""The option schemas are the one source of the rules: every rule is enforced with one line naming the key, and
the docs' option and bad-input tables are what the code generates (python -m equivar.tools.reference_docs)."""

import pytest

from equivar.tools.reference_docs import MISTAKES, bad_values, generated_docs, message_for, option_sites

from support import ROOT

SITES = option_sites()


def test_every_schema_is_covered():
    keys = {s.key for s in SITES}
    for key in ("seed", "n_seeds", "train.learning_rate", "train.optimizer_options", "shift.step",
                "execution.steps_per_call", "dataset.n_train", "dataset.max_translation", "dataset.tfds_name",
                "equivariance.n_examples", "shift.mode", "padding_leak.margin", "anatomy.input_shape"):
        assert key in keys


@pytest.mark.slow  # every neighbour of every rule; the default run checks the first of each (the docs' table)
@pytest.mark.parametrize("site", SITES, ids=[s.key + (f"[{s.context[-1]}]" if len(s.context) > 1 else "")
                                              for s in SITES])
def test_every_broken_rule_is_one_line_naming_the_key(site):
    cases = list(bad_values(site))[:3]  # the bound, one past it and a wrong type; the docs test runs the first
    for value, why in cases:
        code, line = message_for([*site.context, f"{site.key}={value}"])
        assert code == 2, f"{site.key}={value} ({why}) was accepted"
        assert line.startswith("equivar: error: ") and "\n" not in line
        assert site.key in line, f"{site.key}={value}: {line}"


@pytest.mark.slow
def test_every_listed_mistake_is_refused():
    for overrides in MISTAKES:
        code, line = message_for(overrides)
        assert code == 2 and line.startswith("equivar: error: ") and "\n" not in line, (overrides, line)


@pytest.mark.slow  # about 12 s: every rule through the CLI's validation path
def test_docs_are_generated_from_the_rules():
    for path, text in generated_docs(ROOT / "docs").items():
        if path.suffix == ".md":
            assert "accepted" not in text.split("<!-- generated", 1)[1], "a broken rule or a mistake was accepted"
        assert path.read_text() == text, f"{path.name} is stale: run python -m equivar.tools.reference_docs"
