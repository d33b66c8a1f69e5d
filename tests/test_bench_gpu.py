"""benchmarks/bench_gpu.py, the prepared GPU benchmark, proven on the CPU with --quick (tiny models and sizes) before
any GPU sees it: every row measured for every model it compares, and the device's clusters checked against the CPU's."""

import importlib.util
from pathlib import Path

import pytest


SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_gpu.py"
spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
bench_gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_gpu)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_gpu") / "report.json"
    # The eager backend traces with Dynamo as inductor would, without its minutes of C++ compilation here.
    return bench_gpu.main(["--quick", "--device", "cpu", "--repeats", "1", "--compile-backend", "eager",
                           "--out", str(out)]), out


def test_every_row_is_measured_for_every_model(report, capsys):
    report, out = report
    rows = report["rows"]
    assert list(rows) == ["inference 64 batch 2", "inference 136 batch 1", "training batch 2",
                          "training batch 2 compiled"]
    for label, row in rows.items():
        assert set(row) == set(bench_gpu.FULL["models"]), label
        for name, result in row.items():
            if label.endswith("compiled") and name == "reference":
                assert result == {"skipped": "not compiled: a Python loop over images"}
                continue
            assert result["seconds"] > 0 and result["first_seconds"] > 0, (label, name)
            if label.startswith("training"):
                assert result["images_per_second"] == pytest.approx(2 / result["seconds"])
    assert out.read_text().startswith("{")


def test_the_devices_clusters_are_the_cpus(report):
    report, _ = report
    assert report["matches_cpu"] == {"136x136, float32 matmul precision highest": True,
                                     "136x136, float32 matmul precision high": True}


def test_the_budget_skips_what_would_not_fit(capsys):
    report = bench_gpu.main(["--quick", "--device", "cpu", "--repeats", "1", "--budget", "0"])
    assert all(result == {"skipped": "time budget"} or result["skipped"].startswith("not compiled")
               for row in report["rows"].values() for result in row.values())
    table = capsys.readouterr().out
    assert "| inference 136 batch 1 | skipped (time budget) |" in table
