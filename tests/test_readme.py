"""The README's quick-start code runs and prints what its comments say."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def quick_start_code() -> str:
    section = README.read_text().split("## Quick start", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_quick_start_runs_and_prints_what_it_claims():
    code = quick_start_code()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README), "exec"), {})
    claims = [line.split("#", 1)[1].strip() for line in code.splitlines() if line.startswith("print(") and "#" in line]
    lines = printed.getvalue().splitlines()
    assert len(lines) == len(claims)
    for line, claim in zip(lines, claims):
        if claim.startswith("torch.Size"):
            assert line == claim.split(":")[0]
        elif claim.startswith("[("):
            assert line.startswith(claim.split(", ...")[0])
