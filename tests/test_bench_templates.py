"""benchmarks/bench_templates.py checks itself with --smoke: the embedded model ranks the samples plain and with a
tiny thought store, and the file holds both, the baselines and the paired difference."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow  # the embedded model ranks the samples twice
def test_templates_benchmark_compares_plain_and_templated_on_the_same_instances(tmp_path):
    out = tmp_path / "templates.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_templates.py"), "--smoke", "--out",
                        str(out)], capture_output=True, text=True, timeout=1200, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["store"]["thoughts"] == {"passage": 1, "recommendation": 1, "routing": 1}
    assert {row["scenario"] for row in result["table"]} == {"passage", "recommendation", "routing"}
    for row in result["table"]:
        assert 0 <= row["with_templates_shown"] <= row["n"]
        for m in ("ndcg@10", "mrr"):
            cmp = row[m]["templates_minus_plain"]
            assert cmp["low"] <= cmp["diff"] <= cmp["high"]
            assert cmp["wins"] + cmp["losses"] + cmp["ties"] == row["n"]
            assert abs(row[m]["templates"] - row[m]["plain"] - cmp["diff"]) < 1e-3
    # the passage sample's vaccine query finds the vaccine thought: templates were really shown
    assert next(r for r in result["table"] if r["scenario"] == "passage")["with_templates_shown"] >= 1
