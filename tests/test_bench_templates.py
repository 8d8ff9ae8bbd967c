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
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_templates.py"), "--smoke", "--retrieval",
                        "bm25,minilm", "--out", str(out)], capture_output=True, text=True, timeout=1200, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["store"]["thoughts"] == {"passage": 1, "recommendation": 1, "routing": 1}
    assert result["retrieval"] == ["bm25", "minilm"]
    assert {row["scenario"] for row in result["table"]} == {"passage", "recommendation", "routing"}
    for row in result["table"]:
        assert 0 <= row["with_templates_shown"] <= row["n"]
        for m in ("ndcg@10", "mrr"):
            cmp = row[m]["templates_minus_plain"]
            assert cmp["low"] <= cmp["diff"] <= cmp["high"]
            assert cmp["wins"] + cmp["losses"] + cmp["ties"] == row["n"]
            assert abs(row[m]["templates"] - row[m]["plain"] - cmp["diff"]) < 1e-3
            vs_bm25 = row[m]["templates_minilm_minus_templates"]  # the two retrievals, paired on the same instances
            assert abs(row[m]["templates_minilm"] - row[m]["templates"] - vs_bm25["diff"]) < 1e-3
            assert "templates_minilm_minus_plain" in row[m]
        # MiniLM returns the nearest stored query whatever it shares; BM25 only one sharing a term
        assert row["templates_shown"]["templates_minilm"] == row["n"]
        assert row["templates_shown"]["templates"] == row["with_templates_shown"]
    # the passage sample's vaccine query finds the vaccine thought: templates were really shown
    assert next(r for r in result["table"] if r["scenario"] == "passage")["with_templates_shown"] >= 1
