"""The README's quick-start code runs and gives what its comments say."""

import contextlib
import io
import re
from pathlib import Path

import torch

README = Path(__file__).parent.parent / "README.md"


def quick_start_code() -> str:
    section = README.read_text().split("## Quick start", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_quick_start_runs_and_gives_what_it_claims():
    printed, names = io.StringIO(), {}
    with contextlib.redirect_stdout(printed):
        exec(compile(quick_start_code(), str(README), "exec"), names)
    # b0's widths 32, 64, 160, 256 at strides 4, 8, 16, 32 of the 224x160 input.
    maps = [(2, 32, 56, 40), (2, 64, 28, 20), (2, 160, 14, 10), (2, 256, 7, 5)]
    assert printed.getvalue().splitlines() == [
        "torch.Size([2, 10])", str(maps), "torch.Size([2, 2, 2240])", str(maps),  # stage 1: 56 x 40 = 2240 tokens
    ]
    torch.testing.assert_close(names["clusters"].last_hidden_state.detach(), names["outputs"].hidden_states[-1])
    coarse, fine = names["assignments"][0]
    assert sorted(set(coarse.tolist())) == list(range(49))  # 49 clusters of the 196 tokens
    assert sorted(fine.tolist()) == list(range(196))  # 196 clusters: a token each
