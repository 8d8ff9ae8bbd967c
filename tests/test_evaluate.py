"""Evaluation: statistics, every baseline on hand-made instances, and the harness end to end on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import make_tiny_model

from iranker.evaluate import baselines as B
from iranker.metrics import bootstrap_interval, paired_comparison
from iranker.schema import RankingInstance


def _inst(id, scenario="passage", query="q", history=None, preference=None, cands=(), rel=None, split="test",
          dataset="d"):
    return RankingInstance(id=id, scenario=scenario, dataset=dataset, query=query, history=history or [],
                           preference=preference, candidates=[{"id": c, "text": t} for c, t in cands],
                           relevance=rel or {}, split=split)


def test_bootstrap_interval_and_paired_comparison():
    lo, hi = bootstrap_interval([0.0, 1.0] * 50)
    assert lo < 0.5 < hi and hi - lo < 0.3
    assert bootstrap_interval([0.3] * 10) == pytest.approx((0.3, 0.3))
    better = paired_comparison([0.6] * 30 + [0.5] * 10, [0.5] * 40)
    assert better["diff"] == pytest.approx(0.075) and better["low"] > 0 and better["p_value"] < 0.001
    assert better["relative"] == pytest.approx(0.15) and (better["wins"], better["losses"]) == (30, 0)
    same = paired_comparison([0.2, 0.4, 0.9], [0.2, 0.4, 0.9])
    assert same["diff"] == 0 and same["p_value"] == 1.0 and same["low"] == same["high"] == 0
    noisy = paired_comparison([1, 0] * 10, [0, 1] * 10)
    assert noisy["low"] < 0 < noisy["high"] and noisy["p_value"] > 0.5
    with pytest.raises(ValueError, match="same instances"):
        paired_comparison([1, 2], [1])


def test_text_baselines_rank_the_matching_candidate_first():
    inst = _inst("p1", query="how do volcanoes erupt", cands=[
        ("a", "The stock market closed higher on Friday."),
        ("b", "Volcanoes erupt when magma rises and pressure builds until it escapes."),
        ("c", "A recipe for apple pie with cinnamon.")], rel={"b": 2})
    assert B.first_stage([inst])[0] == ["a", "b", "c"]
    assert B.bm25([inst])[0][0] == "b"
    assert B.minilm([inst])[0][0] == "b"
    rec = _inst("r1", scenario="recommendation", query=None, history=["Star Wars (1977)", "Alien (1979)"],
                cands=[("x", "Pride and Prejudice (1995)"), ("y", "Return of the Jedi (1983)")], rel={"y": 1})
    assert B.minilm([rec])[0][0] == "y"
    no_history = RankingInstance(id="r2", scenario="recommendation", dataset="d", user_id="u1", split="test",
                                 candidates=[{"id": "a", "text": "x"}, {"id": "b", "text": "y"}], relevance={})
    assert B.bm25([no_history]) == [None] and B.minilm([no_history]) == [None]


def test_a_total_spreads_over_the_datasets_and_fills_from_the_larger_ones():
    from iranker.evaluate.harness import _pick

    rows = [_inst(f"{d}-{k}", dataset=d, cands=[("a", "x")]) for d, n in (("small", 3), ("mid", 10), ("big", 40))
            for k in range(n)]
    count = lambda picked: {d: sum(i.dataset == d for i in picked) for d in ("small", "mid", "big")}
    # an even share would be 10 each (23 in all): the small set's 7 missing ones come from the others
    assert count(_pick(rows, 0, 0, total=30)) == {"small": 3, "mid": 10, "big": 17}
    assert count(_pick(rows, 0, 0, total=12)) == {"small": 3, "mid": 5, "big": 5}  # 13: the smallest even cut
    assert len(_pick(rows, 0, 0, total=500)) == 53  # fewer in all: every one
    assert count(_pick(rows, 4, 0)) == {"small": 3, "mid": 4, "big": 4}  # a limit caps each dataset
    assert _pick(rows, 0, 1, total=30) != _pick(rows, 0, 0, total=30)  # seeded, and stable for a seed
    assert _pick(rows, 0, 1, total=30) == _pick(list(reversed(rows)), 0, 1, total=30)[::-1]


def test_popularity_counts_histories_not_targets():
    ref = [_inst(f"u{k}", scenario="recommendation", query=None, history=["Hit", "Other"] if k < 3 else ["Niche"],
                 cands=[("t", "Target")], rel={"t": 1}, split="train") for k in range(4)]
    test = _inst("u9", scenario="recommendation", query=None, history=["Niche"],
                 cands=[("n", "Niche"), ("h", "Hit"), ("z", "Target")], rel={"z": 1})
    assert B.popularity([test], ref) == [["h", "n", "z"]]  # Hit: 3 histories; Niche: 2 (u3 and u9); Target: 0
    assert B.popularity([_inst("p", cands=[("a", "x"), ("b", "y")])], ref) == [None]


def test_routers_learn_from_the_training_split_only():
    models = [("m1", "card one"), ("m2", "card two"), ("m3", "card three")]

    def routing(id, query, grades, split):
        return _inst(id, scenario="routing", query=query, preference="balance", cands=models, rel=grades,
                     split=split, dataset="rb")

    train = [routing("t1", "solve this algebra equation", {"m1": 0.9, "m2": 0.1}, "train"),
             routing("t2", "solve for x in the equation", {"m1": 0.8, "m2": 0.2}, "train"),
             routing("t3", "write a poem about the sea", {"m3": 0.9, "m2": 0.5}, "train"),
             routing("t4", "a poem on autumn leaves", {"m3": 0.8, "m2": 0.6}, "train"),
             routing("t5", "a sonnet about love", {"m3": 0.7, "m2": 0.6}, "train"),
             routing("leak", "write a poem", {"m1": 99.0}, "test")]  # not training: must be ignored
    test = routing("q", "compose a short poem about rain", {"m3": 1.0}, "test")
    assert B.best_average([test], train) == [["m3", "m2", "m1"]]  # mean grades 0.48, 0.40, 0.34
    assert B.nearest_neighbour([test], train, k=2)[0][0] == "m3"  # the two poem queries prefer m3
    other = routing("q2", "x", {"m1": 1.0}, "test").model_copy(update={"preference": "cost"})
    assert B.best_average([other], train) == [None] and B.nearest_neighbour([other], train) == [None]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("models")
    for seed in (0, 1):
        make_tiny_model(tiny_tokenizer, seed=seed).save_pretrained(root / f"m{seed}")
        tiny_tokenizer.save_pretrained(root / f"m{seed}")
    return root / "m0", root / "m1"


@pytest.mark.slow
def test_harness_writes_metrics_report_and_plots(tmp_path, two_models):
    from iranker.evaluate import score_by_scenario
    from iranker.evaluate.harness import evaluate, load_eval_data
    from iranker.ingest import ingest
    from iranker.metrics import ranking_to_run, score_run
    from iranker.ranker import RankerConfig, rank_requests

    ingest("trec-dl", "samples/trec-dl", tmp_path / "passage", {"dataset": "dl-sample"}, dvc=False)
    data = load_eval_data([str(tmp_path / "passage"), "samples"], split="all", limit=5)
    # every sample dataset, at most 5 instances each; the passage folder brings its full qrels
    assert {(i.dataset, i.scenario) for i in data.instances} >= {("dl-sample", "passage"), ("trec-dl", "passage"),
                                                                     ("recbole", "recommendation")}
    assert len(data.qrels) == 3 * 2  # each instance listed in both orders (first-stage, shuffled)
    assert {i.dataset for i in data.instances} >= {"dl-sample", "dl-sample@shuffled"}
    trained, base = map(str, two_models)
    metrics = evaluate(data, tmp_path / "out", model=trained, base=base, direct=True, max_words=30,
                       batch_size=8, progress=False)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["n_instances"] == len(data.instances)
    for r in saved["results"]:
        assert {"dataset", "scenario", "n_instances", "model", "method", "metrics", "parse_failure_rate",
                "baselines", "comparison"} <= set(r)
        values = [*r["metrics"].values(), *(v for b in r["baselines"].values() for v in b.values())]
        assert all(0 <= v <= 1 for v in values)
        assert {"base (iterative)", "base (direct)", "random (expected)", "first-stage", "bm25", "minilm"} <= set(
            r["baselines"])
        assert ("popularity" in r["baselines"]) == (r["scenario"] == "recommendation")
        c = r["comparison"]["mrr"]
        assert c["wins"] + c["losses"] + c["ties"] == r["n_instances"]
        assert c["diff"] == pytest.approx(r["metrics"]["mrr"] - r["baselines"]["base (iterative)"]["mrr"])
    # the random column is the same expectation the demo table prints, on the same instances
    group = next(r for r in saved["results"] if r["dataset"] == "recbole")
    chosen = [i for i in data.instances if i.dataset == "recbole"]
    from iranker.backends import load_backend

    responses = rank_requests(load_backend("transformers", trained), [i.to_request() for i in chosen],
                              RankerConfig(max_words=30, batch_size=8))
    demo = score_by_scenario(chosen, responses)["recommendation"]
    assert group["baselines"]["random (expected)"]["mrr"] == pytest.approx(demo["random"]["mrr"])
    assert group["metrics"]["mrr"] == pytest.approx(demo["metrics"]["mrr"])
    # passage nDCG@10 follows trec_eval with the full qrels (ir_measures on the same rankings)
    passage = next(r for r in saved["results"] if r["dataset"] == "dl-sample")
    assert passage["qrels"].startswith("full")
    rows = [json.loads(x) for x in (tmp_path / "out" / "per_instance.jsonl").read_text().splitlines()]
    firsts = {i.id: B.first_stage([i])[0] for i in data.instances if i.id in data.qrels}
    run = {i: ranking_to_run(r) for i, r in firsts.items()}
    assert passage["baselines"]["first-stage"]["ndcg@10"] == pytest.approx(
        score_run(run, {i: {d: int(g) for d, g in q.items()} for i, q in data.qrels.items()})["ndcg@10"])
    assert {r["system"] for r in rows} >= {"trained", "base (iterative)", "bm25"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| **trained** |" in report and "Published TREC DL 2019" in report and "wins/losses/ties" in report
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert len(pngs) == len(saved["results"])


def test_same_model_twice_is_no_difference(tmp_path, two_models):
    from iranker.evaluate.harness import evaluate, load_eval_data

    data = load_eval_data(["samples"], split="all", limit=3)
    m = str(two_models[0])
    metrics = evaluate(data, tmp_path, model=m, base=m, direct=False, baselines=[], max_words=30, progress=False)
    for r in metrics["results"]:
        assert r["comparison"]["mrr"]["diff"] == 0 and r["comparison"]["mrr"]["p_value"] == 1.0
        assert set(r["baselines"]) == {"base (iterative)", "random (expected)"}


@pytest.mark.slow
def test_evaluate_cli_errors_name_the_input(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "iranker.cli", "evaluate", *args, "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, timeout=300, check=False)

    r = run("--data", str(tmp_path / "missing"))
    assert r.returncode == 1 and "missing: no such file or folder" in r.stderr
    r = run("--data", "samples", "--split", "nosuch")
    assert r.returncode == 1 and "no instances of split 'nosuch'" in r.stderr
    r = run("--data", "samples", "--split", "all", "--baselines", "bm25,magic", "--model", "x")
    assert r.returncode == 1 and "baselines: unknown magic" in r.stderr
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_thought_templates_are_an_evaluated_system_beside_the_plain_base(tmp_path, two_models):
    """`evaluate(thoughts=...)` without a trained model: the base shown the store's templates is the evaluated
    system, paired against the same base shown none, and the result says what it was shown."""
    from iranker.evaluate.harness import evaluate, load_eval_data
    from iranker.thoughts import ThoughtWriter, retrieval_text

    data = load_eval_data(["samples"], split="all", limit=2, orders=("first-stage",))
    with ThoughtWriter(tmp_path / "store", source="test") as w:
        for inst in data.instances:
            assert w.add(inst.scenario, retrieval_text(inst.scenario, inst.query, inst.history),
                         "drop the candidate that does not answer the request", 1.0, len(inst.candidates))
    with pytest.raises(ValueError, match="thought templates: .*nothing"):  # a bad store fails before any model loads
        evaluate(data, tmp_path / "bad", base=str(two_models[0]), thoughts=tmp_path / "nothing", progress=False)
    assert not (tmp_path / "bad").exists()
    m = str(two_models[0])
    metrics = evaluate(data, tmp_path / "out", base=m, direct=False, baselines=[], max_words=30, progress=False,
                       thoughts=tmp_path / "store", templates_k=2)
    assert metrics["system"] == "base (templates)"
    assert metrics["thought_templates"] == {"store": str(tmp_path / "store"), "templates_k": 2,
                                            "thoughts": len(data.instances), "shown_to": "base (templates)"}
    assert metrics["ranking_settings"]["base (templates)"]["templates_k"] == 2
    assert "thought_templates" not in metrics["ranking_settings"]["base (iterative)"]
    for r in metrics["results"]:
        assert r["comparison"]["against"] == "base (iterative)" and "mrr" in r["comparison"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Thought templates: base (templates) is shown the 2 nearest" in report
    assert report.count("base (iterative)") >= 1 and "| **base (templates)** |" in report


def test_inline_images_embeds_the_reports_own_plots(tmp_path):
    import base64

    from iranker.evaluate.report import inline_images

    (tmp_path / "plot-a.png").write_bytes(b"\x89PNG fake")
    md = "# r\n\n![a](plot-a.png)\n\n![b](plot-missing.png)\n![c](https://example.org/c.png)\n"
    out = inline_images(md, tmp_path)
    encoded = base64.b64encode(b"\x89PNG fake").decode()
    assert f"![a](data:image/png;base64,{encoded})" in out
    assert "![b](plot-missing.png)" in out and "![c](https://example.org/c.png)" in out
