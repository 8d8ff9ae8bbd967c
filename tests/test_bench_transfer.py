"""benchmarks/bench_transfer.py checks itself with --smoke: the tiny profile on the samples, trained on every scenario
and with each one held out, evaluated on the held-out scenario's test instances."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow  # three tiny training runs and their evaluations: a few minutes
def test_transfer_benchmark_holds_each_scenario_out_and_compares_with_base_and_all(tmp_path):
    out = tmp_path / "transfer.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_transfer.py"), "--smoke", "--runs-dir",
                        str(tmp_path / "runs"), "--out", str(out)], capture_output=True, text=True, timeout=1800,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    # started again, it reuses every finished run and every finished evaluation, and writes the same table
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_transfer.py"), "--smoke", "--runs-dir",
                            str(tmp_path / "runs"), "--out", str(tmp_path / "again.json")], capture_output=True,
                           text=True, timeout=1800, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("reusing the finished run") == 3, again.stderr[-3000:]
    assert again.stderr.count("reusing the evaluation of") == 3
    assert json.loads((tmp_path / "again.json").read_text())["table"] == result["table"]
    reused = json.loads((tmp_path / "again.json").read_text())["runs"]
    assert all(reused[k]["seconds_in_updates"] == v["seconds_in_updates"] > 0 for k, v in result["runs"].items())
    # the samples train recommendation and routing (no passage training split): each is held out once
    assert result["runs"]["all"]["train_scenarios"] == ["recommendation", "routing"]
    assert result["runs"]["without-recommendation"]["train_scenarios"] == ["routing"]
    assert result["runs"]["without-routing"]["train_scenarios"] == ["recommendation"]
    assert {run["updates"] for run in result["runs"].values()} == {6}  # the same budget for every run
    assert {row["target"] for row in result["table"]} == {"recommendation", "routing"}
    assert result["pending"] == []  # every held-out run trained and evaluated
    for row in result["table"]:
        assert row["domain_zero_shot"] == "held-out" and row["trained_on_zero_shot"] != [row["target"]]
        assert row["zero_shot_minus_base"]["low"] <= row["zero_shot_minus_base"]["diff"] <= row[
            "zero_shot_minus_base"]["high"]
        assert row["zero_shot_minus_base"]["diff"] == pytest.approx(row["zero_shot"] - row["base"])
        assert row["all_minus_base"]["diff"] == pytest.approx(row["all"] - row["base"])  # the same base scores
        assert "base_in_all_run" not in row and 0 <= row["random"] <= 1
    assert result["machine"]["cpus"] >= 1

    # on a new machine (the run folders gone) it goes on from the result file: the finished runs are taken from
    # there, only the pending target is trained, and a call with other settings is refused, the setting named
    pending = json.loads(out.read_text())
    del pending["runs"]["without-routing"]
    pending["pending"] = ["routing"]
    for row in pending["table"]:
        if row["target"] == "routing":
            row.update(zero_shot=None, zero_shot_minus_base=None, domain_zero_shot=None)
    out.write_text(json.dumps(pending))
    bench = [sys.executable, str(ROOT / "benchmarks" / "bench_transfer.py"), "--smoke", "--runs-dir",
             str(tmp_path / "new-machine"), "--out", str(out), "--recorded"]
    refused = subprocess.run([*bench, "--limit", "3"], capture_output=True, text=True, timeout=600, check=False)
    assert refused.returncode != 0 and "limit=40" in refused.stderr, refused.stderr[-2000:]
    resumed = subprocess.run(bench, capture_output=True, text=True, timeout=1800, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "taking the run `all`" in resumed.stderr and "taking the run without-recommendation" in resumed.stderr
    assert sorted(p.name for p in (tmp_path / "new-machine").iterdir()) == ["without-routing"]
    finished = json.loads(out.read_text())
    assert finished["pending"] == [] and set(finished["runs"]) == set(result["runs"])
    for row, before in zip(finished["table"], result["table"], strict=True):
        if row["target"] == "recommendation":
            assert row == before
        else:
            assert row["zero_shot"] is not None and row["domain_zero_shot"] == "held-out"
            assert row["zero_shot_minus_base"]["diff"] == pytest.approx(row["zero_shot"] - row["base"])
