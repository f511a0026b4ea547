"""The docs' result tables are generated from runs (``python -m equivar.tools.results_docs``), and README command 1 prints
the README's table on the processor the README names."""

from __future__ import annotations

import json
import re

import pytest

from equivar.io import environment
from equivar.tools.reference_docs import message_for
from equivar.tools.results_docs import blocks, doc_files, parse_spec, run_command, summary_tables, update

from support import ROOT, compose_raw

SUMMARY = """shift_test on mnist1d (3 seeds, 41 shifts, mode roll)

| model | clean acc |
|---|---:|
| mlp | 0.6800 ± 0.0185 |

Beside them:

| model | R(1) |
|---|---:|
| mlp | 0.4267 ± 0.0105 |"""


def _fake_run(folder, overrides):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / "summary.md").write_text(SUMMARY + "\n")
    (folder / "metrics.json").write_text(json.dumps({"environment": {
        "jax_backend": "cpu", "devices": ["cpu:0", "cpu:1"], "processor": "Some CPU", "vector_isa": "AVX2",
        "packages": {"jax": "9.9", "flax": "8.8"}}}))
    (folder / "status.json").write_text(json.dumps({"started": "2031-01-02T03:04:05", "seconds": 41.6}))
    (folder / "plot.png").write_bytes(b"png")
    return folder


def test_every_results_block_names_a_command_that_runs_and_holds_its_output():
    found = 0
    for path in doc_files(ROOT):
        for spec, body in blocks(path.read_text()):
            found += 1
            assert message_for(spec.overrides) == (0, ""), (path.name, spec.command)
            assert body.strip(), f"{path.name}: the block of {spec.command} is empty: run python -m equivar.tools.results_docs"
            assert body.rstrip().splitlines()[-1].startswith(f"*`{spec.command}`: "), (path.name, spec.command)
            for _, target in spec.figures:
                assert (path.parent / target).is_file(), target
    assert found >= 2  # README and docs/shift_test.md at least


def test_a_block_is_rewritten_from_its_run_and_only_from_its_run(tmp_path):
    run = _fake_run(tmp_path / "run", ["experiment=shift_test", "hydra.run.dir=/somewhere"])
    other = _fake_run(tmp_path / "other", ["experiment=shift_test", "n_seeds=2"])
    assert run_command(run) == "python -m equivar.run experiment=shift_test"
    doc = tmp_path / "page.md"
    (tmp_path / "figures").mkdir()
    doc.write_text("intro\n<!-- results of: python -m equivar.run  experiment=shift_test | tables 2 | figure "
                   "plot.png as figures/p.png -->\nold, typed\n<!-- end of results -->\n"
                   "<!-- results of: python -m equivar.run experiment=lie_derivative -->\nkept\n"
                   "<!-- end of results -->\n")
    assert update([doc], [run, other]) == [f"{doc}: python -m equivar.run experiment=shift_test"]
    text = doc.read_text()
    assert "old, typed" not in text and "| mlp | 0.4267 ± 0.0105 |" in text and "0.6800" not in text
    assert ("*`python -m equivar.run experiment=shift_test`: Some CPU (AVX2), 2 XLA CPU devices, jax 9.9, flax 8.8, "
            "2031-01-02, 42 s end to end.*") in text
    assert "\nkept\n" in text and (tmp_path / "figures" / "p.png").read_bytes() == b"png"
    assert summary_tables(SUMMARY)[0].splitlines()[-1] == "| mlp | 0.6800 ± 0.0185 |"
    with pytest.raises(ValueError, match="tables N,M"):
        parse_spec("python -m equivar.run experiment=x | table 1")


@pytest.mark.slow  # README command 1 itself: about a minute on 2 cores
def test_readme_command_1_prints_the_readme_table_digit_for_digit(tmp_path):
    """On a processor like the one the README's table names (its vector instruction set), the main job prints
    that table; elsewhere the numbers may move by the spread docs/shift_test.md measures, so it is skipped."""
    from equivar.run import run_experiment

    readme = (ROOT / "README.md").read_text()
    spec, body = next((s, b) for s, b in blocks(readme) if s.overrides == ["experiment=shift_test"])
    named_isa = re.search(r"\((\w+)\), \d+ XLA CPU devices", body)
    here = environment()
    if named_isa is None or named_isa.group(1) != here["vector_isa"]:
        pytest.skip(f"the README's table is from a {named_isa and named_isa.group(1)} CPU; this one is "
                    f"{here['vector_isa']}")
    run_experiment(compose_raw(spec.overrides), tmp_path)
    printed = summary_tables((tmp_path / "summary.md").read_text())
    assert printed[0] == summary_tables(body)[0]
