"""benchmarks/bench_select.py on a tiny LoRA run: the selection with the frozen layers shared and with each model
prefilling on its own, on the same lists, written with both times and the same scores."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

from iranker.train import load_config
from iranker.train.loop import run_training


def test_bench_select_times_both_ways_and_finds_the_same_scores(tmp_path, tiny_model_dir):
    cfg = load_config(ROOT / "configs" / "smoke.yaml", {
        "tokenizer": str(tiny_model_dir), "keep_checkpoints": 2,
        "lora": {"r": 8, "alpha": 16, "top_layers": 1}})
    run_training(cfg, tmp_path / "run", progress=False)
    steps = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    out = tmp_path / "select.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_select.py"), str(tmp_path / "run"),
                        "--steps", *map(str, steps), "--instances", "16", "--batch-size", "4", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["same_scores"] and result["frozen_layers_shared"] == 1
    assert result["models"] == ["base"] + [f"step-{s}" for s in steps] and len(steps) == 2
    assert set(result["scores"]) == {"random", *result["models"]}
    assert result["speedup"] == round(result["seconds"]["alone"] / result["seconds"]["shared"], 3)
    assert result["machine"]["cpu"] and result["validation_lists"] >= 4
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_select.py"), str(tmp_path / "run"),
                          "--steps", "999", "--out", str(out)], capture_output=True, text=True, timeout=120,
                         check=False)
    assert bad.returncode != 0 and "--steps: no checkpoint at" in bad.stderr
