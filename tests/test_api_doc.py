"""The Python API example in docs/api.md runs as written and gives what the doc says it gives."""

import re
import sys

import pytest

from support import ROOT


@pytest.mark.slow
def test_the_api_doc_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "api.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if b.startswith("import equivar")]
    assert len(blocks) == 1, "docs/api.md has one example of the API"
    monkeypatch.chdir(tmp_path)  # its outputs/ folder goes here
    # The example runs in __main__, as a notebook cell does, so its class is importable as __main__.MyNet.
    main = sys.modules["__main__"].__dict__
    before = set(main)
    try:
        exec(compile(blocks[0], str(ROOT / "docs" / "api.md"), "exec"), main)
        first, zero, layers = main["first"], main["zero"], main["layers"]
    finally:
        for name in set(main) - before:
            del main[name]
    assert set(first.models) == {"lenet", "mine"}
    assert first.models["mine"].target == "__main__.MyNet"
    assert zero.shift_mode == "zero" and zero.load_from.endswith("outputs/api_example/train")
    assert zero.models["mine"].source.endswith("outputs/api_example/train")
    assert list(layers.models) == ["mine"] and "trained" in layers.models["mine"].stages
    assert (tmp_path / "outputs" / "api_example" / "train" / "checkpoints" / "mine").is_dir()
    assert not (tmp_path / "outputs" / "api_example" / "zero" / "checkpoints").exists()
