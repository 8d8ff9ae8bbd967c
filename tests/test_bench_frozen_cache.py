"""benchmarks/bench_frozen_cache.py: the least-recently-used replay and the key/value size it charges."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_frozen_cache as bfc


def test_replay_counts_revisits_under_a_byte_budget_evicting_the_least_recently_used():
    # a, b, a (hit), c evicts b (a was used since), b misses and evicts a, so the last a misses too
    draws = [("a", 10, "passage"), ("b", 10, "passage"), ("a", 10, "passage"), ("c", 10, "routing"),
             ("b", 10, "passage"), ("a", 10, "passage")]
    r = bfc.replay(draws, budget_bytes=20, per_token=1)
    assert r["by_scenario"]["passage"] == {"visits": 5, "hits": 1, "tokens": 50, "saved_tokens": 10,
                                           "saved_share": 0.2}
    assert r["by_scenario"]["routing"]["hits"] == 0
    assert r["saved_share"] == round(10 / 60, 4) and r["held_gb_max"] == round(20 / 2**30, 2)
    unbounded = bfc.replay(draws, budget_bytes=1e18, per_token=1)
    assert unbounded["by_scenario"]["passage"]["hits"] == 3
    # a prefix larger than the whole cache is never kept
    assert bfc.replay([("x", 30, "passage")] * 3, budget_bytes=20, per_token=1)["saved_share"] == 0.0


def test_key_value_bytes_of_the_embedded_model():
    from transformers import AutoConfig

    from iranker.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model("smollm2-135m"))
    heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    # keys and values of 24 frozen layers (6 adapted of 30), in bf16
    assert bfc.kv_bytes_per_token(config, 24, 2) == 2 * 24 * heads * dim * 2 == 18_432
