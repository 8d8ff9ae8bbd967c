"""benchmarks/bench_train_quality.py checks its whole chain with --smoke: the tiny profile on the samples is trained,
its checkpoints are chosen on whole validation lists, the chosen one is evaluated on the test split against the
base model, random and the first stage in both listing orders, and the bar is computed from those figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from iranker.evaluate.bar import bar_met


@pytest.mark.slow  # a tiny training run, its served selection and an evaluation with the baselines: a few minutes
def test_quality_benchmark_trains_selects_evaluates_and_computes_the_bar(tmp_path):
    """Split over two calls as over two machines: the first trains, selects and exports the chosen checkpoint as
    an adapter folder (the evaluation pending); the second evaluates that adapter, what ships."""
    bench = [sys.executable, str(ROOT / "benchmarks" / "bench_train_quality.py"), "--smoke", "--set", "lora.r=8",
             "--set", "lora.alpha=16", "--set", "lora.top_layers=1", "--limit", "10", "--throughput-updates", "0"]
    first = tmp_path / "trained.json"
    report = tmp_path / "report"
    r = subprocess.run([*bench, "--run", str(tmp_path / "run"), "--out", str(first), "--select-instances", "20",
                        "--export", str(tmp_path / "adapter"), "--no-evaluate", "--report", str(report)],
                       capture_output=True, text=True, timeout=1800, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    trained = json.loads(first.read_text())
    assert trained["pending"] == ["evaluation"] and "goals" not in trained
    card = json.loads((tmp_path / "adapter" / "card.json").read_text())
    assert card["checkpoint_step"] == int(trained["selection"]["best"].split("-")[1]) and "bar_met" not in card
    # the run's logs travel with the results: the evaluation on another machine draws the training curves from them
    assert (report / "metrics.jsonl").read_text() == (tmp_path / "run" / "metrics.jsonl").read_text()
    for log_file in ("metrics.jsonl", "probe.jsonl"):  # the second machine has the adapter and the results, not
        (tmp_path / "run" / log_file).unlink(missing_ok=True)  # the run (whose tiny base the adapter needs here)
    out = tmp_path / "quality.json"
    r = subprocess.run([*bench, "--adapter", str(tmp_path / "adapter"), "--report", str(report),
                        "--out", str(out)], capture_output=True, text=True, timeout=1800, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert (report / "plot-training-reward.png").is_file()
    # trained against the model it started from: the run's tiny base, not the embedded one
    assert json.loads((report / "metrics.json").read_text())["base"] == "init-model"
    # the card now cites the result that evaluated it and its verdict, as a shipped model's must
    card = json.loads((tmp_path / "adapter" / "card.json").read_text())
    assert card["result"] == str(out) and card["bar_met"] == result["bar_met"] and card["default"] is False
    assert result["train"]["updates"] == 6 and result["train"]["elimination_steps"] > 0  # the optimizer steps
    # the selection: every checkpoint's score with its standard error, the chosen one evaluated
    selection = result["selection"]
    assert set(selection["scores"]) == {"random", "base", "step-4", "step-6"}
    assert selection == {k: v for k, v in trained["selection"].items() if k != "model"}
    assert selection["best"] in selection["scores"] and result["exported"] == str(tmp_path / "adapter")
    assert all(s["se"] >= 0 and s["n"] == selection["instances"] for s in selection["scores"].values())
    # per test set and listing order: trained, base, random, first stage, both paired intervals
    assert {k.split("/")[0] for k in result["goals"]} >= {"routerbench", "routerbench@shuffled", "trec-dl",
                                                          "trec-dl@shuffled"}
    for key, g in result["goals"].items():
        assert g["interval_vs_base"][0] <= g["diff_vs_base"] <= g["interval_vs_base"][1], key
        assert g["diff_vs_base"] == pytest.approx(g["trained"] - g["base"])
        assert g["beats_base"] == (g["interval_vs_base"][0] > 0) and 0 <= g["random"] <= 1
        assert g["interval_vs_first_stage"][0] <= g["diff_vs_first_stage"] <= g["interval_vs_first_stage"][1]
        assert g["at_least_first_stage"] == (g["trained"] >= g["first_stage"])
    assert result["bar_met"] == bar_met(result["goals"])
    assert set(result["shortfalls"]) == {k for k, g in result["goals"].items() if not (
        g["beats_base"] and g["above_random"] and g["at_least_first_stage"])}
    assert result["machine"]["cpu"]["simd_flags"]  # the CPU flags recorded with the result
    # the README's table and selection line are printed from the file
    printed = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality_table.py"), str(out)],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    assert "\n| routerbench | " in printed and "\n| routerbench@shuffled | " in printed
    assert "6 optimizer steps; step-" in printed
    close = selection["within_one_se_of_best"]
    assert (f"Within one standard error of it: {', '.join(close)}" if close else "No other checkpoint") in printed
    # a folder that export did not write is refused, by name
    bad = subprocess.run([*bench, "--adapter", str(tmp_path / "report"), "--out", str(tmp_path / "bad.json")],
                         capture_output=True, text=True, timeout=600, check=False)
    assert bad.returncode != 0 and f"--adapter {tmp_path / 'report'}: no card.json" in bad.stderr
    assert not (tmp_path / "bad.json").exists()
    # an unevaluated adapter is not written where shipped models live: a shipped model cites its evaluation
    ship = subprocess.run([*bench, "--run", str(tmp_path / "run2"), "--out", str(tmp_path / "bad.json"),
                           "--export", str(ROOT / "iranker" / "shipped" / "x"), "--no-evaluate"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert ship.returncode == 2 and "iranker/shipped" in ship.stderr and not (ROOT / "iranker" / "shipped" / "x").exists()
    assert not (tmp_path / "run2").exists()


@pytest.mark.slow  # a tiny training run, a served selection among its exported checkpoints and an evaluation
def test_quality_benchmark_selects_among_exported_candidates_on_another_machine(tmp_path):
    """Split where the selection does not fit the training's session: the first call trains and exports every
    kept checkpoint as an adapter; the second chooses among those adapters on whole validation lists, with the
    run's profile rebuilt from their cards, and evaluates the chosen one."""
    bench = [sys.executable, str(ROOT / "benchmarks" / "bench_train_quality.py"), "--smoke", "--set", "lora.r=8",
             "--set", "lora.alpha=16", "--set", "lora.top_layers=1", "--limit", "10", "--throughput-updates", "0",
             "--run", str(tmp_path / "run"), "--report", str(tmp_path / "report")]
    cands, first = tmp_path / "candidates", tmp_path / "trained.json"
    r = subprocess.run([*bench, "--out", str(first), "--export-candidates", str(cands)],
                       capture_output=True, text=True, timeout=1800, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    trained = json.loads(first.read_text())
    assert trained["pending"] == ["selection", "evaluation"] and trained["selection"] is None
    assert [p.name for p in sorted(cands.iterdir())] == ["step-000004", "step-000006"]
    assert trained["candidates"] == [str(cands / "step-000004"), str(cands / "step-000006")]
    for folder in cands.iterdir():
        card = json.loads((folder / "card.json").read_text())
        assert card["train"] == trained["train"] and card["config"] == trained["config"]
    # the other machine: the run's profile and logs are not there (its tiny base stays: the adapters need it)
    for name in ("config.json", "metrics.jsonl"):
        (tmp_path / "run" / name).unlink()
    out, chosen = tmp_path / "quality.json", tmp_path / "chosen"
    r = subprocess.run([*bench, "--out", str(out), "--candidates", str(cands), "--select-instances", "20",
                        "--export", str(chosen)], capture_output=True, text=True, timeout=1800, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    selection = result["selection"]
    assert set(selection["scores"]) == {"random", "base", "step-4", "step-6"}
    assert selection["checkpoint"] == str(cands / selection["best"].replace("-", "-00000"))
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == trained["config"]
    card = json.loads((chosen / "card.json").read_text())
    assert card["checkpoint_step"] == int(selection["best"].split("-")[1])
    assert card["selection"]["best"] == selection["best"] and card["bar_met"] == result["bar_met"]
    assert result["train"] == trained["train"] and result["bar_met"] == bar_met(result["goals"])
    assert (tmp_path / "report" / "plot-training-reward.png").is_file()  # drawn from the copied log
    # what is not an export's folder is refused, by name
    bad = subprocess.run([*bench, "--out", str(tmp_path / "bad.json"), "--candidates", str(tmp_path / "report")],
                         capture_output=True, text=True, timeout=600, check=False)
    assert bad.returncode != 0 and f"--candidates {tmp_path / 'report'}: no adapter folders" in bad.stderr
