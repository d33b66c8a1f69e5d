"""benchmarks/bench_gpu.py, the prepared GPU benchmark, proven on the CPU with --quick (tiny models and sizes) before
any GPU sees it: every row measured for every model it compares, the timing and budget rules, the table showing what
was measured, and the device's clusters checked against the CPU's."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch


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


def test_every_row_is_measured_for_every_model(report):
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
            assert {"seconds", "first_seconds"} <= set(result), (label, name)
            if label.startswith("training"):
                assert result["images_per_second"] == pytest.approx(2 / result["seconds"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))


def table_cells(table: str, label: str) -> list[str]:
    """The cells after the label of the table row `label`."""
    line = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip().strip("|").split("|")][1:]


def test_the_table_shows_every_figure_in_its_models_column(capsys):
    rows = {
        "inference 224 batch 1": {"exact": {"seconds": 0.01234, "first_seconds": 1.0, "peak_bytes": 2**30},
                                  "pvt_v2": {"skipped": "out of memory"}},
        "training batch 64 compiled": {
            "exact": {"seconds": 0.5, "first_seconds": 41.26, "peak_bytes": None, "images_per_second": 128.04},
            "pvt_v2": {"seconds": 0.25, "first_seconds": 20.0, "peak_bytes": 3 * 2**29, "images_per_second": 256.0},
        },
    }
    settings = {**bench_gpu.QUICK, "models": ("exact", "pvt_v2")}
    report = {"device": "NVIDIA H100", "torch": "2.14.1", "settings": settings,
              "matches_cpu": {"224x224, highest": True, "224x224, high": False}, "rows": rows}
    bench_gpu.print_report(report)
    table = capsys.readouterr().out
    assert "| | ClusTR exact-tiny | PvtV2-tiny |" in table
    assert table_cells(table, "inference 224 batch 1") == ["12.3 ms, 1.00 GiB", "skipped (out of memory)"]
    assert table_cells(table, "training batch 64 compiled") == ["128.0 img/s", "256.0 img/s, 1.50 GiB"]
    assert "First compiled step (compilation included): exact, batch 64 41.3 s, pvt_v2, batch 64 20.0 s" in table
    assert table.rstrip().endswith("224x224, highest: yes, 224x224, high: NO")


def test_the_devices_clusters_are_the_cpus(report):
    report, _ = report
    assert report["matches_cpu"] == {"136x136, float32 matmul precision highest": True,
                                     "136x136, float32 matmul precision high": True}


@pytest.mark.parametrize("field", ["assignments", "centres"])
def test_a_cluster_that_differs_on_the_device_is_reported(field, monkeypatch):
    """Perturbing one cluster number or centre under the reduced matmul precision shows in that check alone."""
    density_peaks = bench_gpu.density_peaks

    def one_differs_with_reduced_precision(tokens, counts):
        clusters = density_peaks(tokens, counts)
        if torch.get_float32_matmul_precision() == "high":
            changed = getattr(clusters, field).clone()
            changed.view(-1)[-1] = (changed.view(-1)[-1] + 1) % counts[-1]
            clusters = clusters._replace(**{field: changed})
        return clusters

    monkeypatch.setattr(bench_gpu, "density_peaks", one_differs_with_reduced_precision)
    assert bench_gpu.device_matches_cpu(bench_gpu.QUICK, torch.device("cpu")) == {
        "136x136, float32 matmul precision highest": True, "136x136, float32 matmul precision high": False}


class ScriptedDeadline:
    """A --budget that passes after `checks` checks."""

    def __init__(self, checks: int):
        self.checks = checks

    def passed(self) -> bool:
        self.checks -= 1
        return self.checks < 0


def test_measurements_are_the_first_call_and_the_median_of_the_timed_runs_in_turn(monkeypatch):
    """Each call's warm-up is kept as first_seconds, then all are timed run by run; OOM and the deadline skip one."""
    durations = {"a": iter([5.0, 4.0, 3.0, 1.0, 2.0]), "b": iter([9.0, 8.0, 7.0, 7.5, 6.0])}
    order = []

    def scripted_seconds(call, device):
        label = call()
        order.append(label)
        return next(durations[label])

    def out_of_memory():
        raise torch.OutOfMemoryError("scripted")

    monkeypatch.setattr(bench_gpu, "seconds_of", scripted_seconds)
    calls = {"a": lambda: "a", "oom": out_of_memory, "b": lambda: "b", "late": lambda: "late"}
    results = bench_gpu.measure_in_turn(calls, torch.device("cpu"), 3, ScriptedDeadline(3))
    assert order == ["a", "a", "b", "b", "a", "b", "a", "b", "a", "b"]
    assert results == {"a": {"first_seconds": 5.0, "seconds": 2.0, "peak_bytes": None},
                       "oom": {"skipped": "out of memory"},
                       "b": {"first_seconds": 9.0, "seconds": 7.0, "peak_bytes": None},
                       "late": {"skipped": "time budget"}}


def test_the_budget_skips_what_would_not_fit(capsys):
    report = bench_gpu.main(["--quick", "--device", "cpu", "--repeats", "1", "--budget", "0"])
    assert all(result == {"skipped": "time budget"} or result["skipped"].startswith("not compiled")
               for row in report["rows"].values() for result in row.values())
    table = capsys.readouterr().out
    assert table_cells(table, "inference 136 batch 1") == ["skipped (time budget)"] * 4
