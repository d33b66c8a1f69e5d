"""The README's "Hugging Face usage" code runs and prints what its comments say (the compile and export blocks
excepted: tests/test_compile_and_mixed_precision.py and tests/test_export.py make the same calls on a tiny model, since
compiling or exporting b0 takes minutes)."""

import contextlib
import io
import re
from pathlib import Path


README = Path(__file__).parent.parent / "README.md"


def python_blocks() -> list[str]:
    section = README.read_text().split("## Hugging Face usage", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_hugging_face_usage_runs_and_prints_what_it_claims(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) == 6 and "torch.compile(model, dynamic=False)" in blocks[-2]
    assert "torch.export.export" in blocks[-1]
    code = "\n".join(blocks[:-2])
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README), "exec"), {})
    lines = printed.getvalue().splitlines()
    assert lines[0] == "torch.Size([2, 3, 224, 224])"
    top_two = eval(lines[1])
    labels = [entry["label"] for entry in top_two]
    assert len(set(labels)) == 2 and set(labels) <= {"cat", "coffee", "rocket"}
    assert top_two[0]["score"] >= top_two[1]["score"] > 0
    assert lines[2] == "ClusTRBackbone ClusTRBackbone"
    assert len(lines) == 3
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_clustr.py"} <= {
        path.name for path in (tmp_path / "clustr-b0-demo").iterdir()
    }
