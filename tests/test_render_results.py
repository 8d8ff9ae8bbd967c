"""benchmarks/render_results.py renders every benchmark table the docs show from the committed result files and
draws the plots from them: each table has the rows its source implies and the numbers the JSON holds (read here,
never typed), each plot is a PNG, and a missing file or key is an error that names it. No model is run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import render_results as rr

RESULTS = ROOT / "benchmarks" / "results"

DOCS_TABLES = {"quality", "train_stages", "train_throughput", "train_frozen", "train_frozen_cache", "train_select",
               "bf16_ranking",
               "templates", "transfer", "templates_retrieval", "generic", "serve_throughput", "serve_vllm", "serve_mixed", "serve_hostile",
               "serve_hostile_levers", "rank_speed", "rank_batching", "rank_layouts"}
DOCS_PLOTS = {"training_curves", "quality_intervals", "rank_latency", "serve_concurrency"}


def load(rel: str) -> dict:
    return json.loads((RESULTS / rel).read_text())


def rows(markdown: str) -> list[list[str]]:
    """The table's body rows as cells (header and separator dropped)."""
    lines = markdown.splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def close(cell: str, value: float, places: int) -> bool:
    """`cell` (bold, sign, unit or x allowed) is `value` rounded to `places` decimals, whichever way it rounded."""
    text = cell.strip("*").split()[0].rstrip("x%").replace("−", "-").replace(",", "")
    return abs(float(text) - value) <= 0.5 * 10 ** -places + 1e-9


def expected_rows(name: str) -> int:
    """How many body rows the table's result files imply."""
    if name == "quality":
        return len(load(rr.QUALITY_FILE)["goals"])
    if name == "train_stages":  # both paths of the stages run, the bf16 episode path, the ratio
        return sum(len(load(f)["results"]) for f in ("bench_train_stages.json", "bench_train_stages_bf16.json")) + 1
    if name in ("train_throughput", "train_frozen"):
        return len(load(rr.SOURCES[name][0])["results"]) + 1  # and the ratio
    if name == "train_frozen_cache":
        return len(load("bench_frozen_cache.json")["results"])
    if name == "train_select":
        return len(load("bench_select.json")["scores"]) + 2  # the seconds and their ratio
    if name == "bf16_ranking":
        return len(load("bench_bf16.json")["ranking"]["scenarios"])
    if name in ("templates", "templates_retrieval"):
        return len(load(rr.SOURCES[name][0])["table"])
    if name == "transfer":
        return len(load("bench_transfer.json")["table"])
    if name == "generic":
        return sum(len(t["model"]["scores"]) for t in load("generic_gsm8k/generic.json")["tasks"].values())
    if name in ("serve_throughput", "serve_vllm"):
        return 2  # one at a time, concurrent
    if name == "serve_mixed":
        return len(load("bench_serve_mixed.json")["mixed"]["statuses"])
    if name in ("serve_hostile", "serve_hostile_levers"):
        return len(rr.SOURCES[name])  # one run per file
    if name in ("rank_speed", "rank_batching"):
        return len(load("bench_rank.json")["speed" if name == "rank_speed" else "batching"])
    if name == "rank_layouts":
        return sum(isinstance(v, float) for v in load("bench_rank_quality.json").values())
    raise AssertionError(f"no expectation for table {name}")


def test_the_docs_names_exist():
    assert set(rr.TABLES) == DOCS_TABLES
    assert set(rr.PLOTS) == DOCS_PLOTS
    assert set(rr.SOURCES) == DOCS_TABLES | DOCS_PLOTS
    for name, files in rr.SOURCES.items():
        assert files and all((RESULTS / f).is_file() for f in files), name


@pytest.mark.parametrize("name", sorted(DOCS_TABLES))
def test_every_table_renders_with_the_rows_its_source_implies(name):
    text = rr.table(name)
    lines = text.splitlines()
    assert text == text.strip() and len(lines) >= 3
    width = lines[0].count("|")
    assert lines[1] == "|" + "---|" * (width - 1)
    assert all(line.startswith("|") and line.endswith("|") and line.count("|") == width for line in lines), text
    assert len(lines) - 2 == expected_rows(name), text
    assert rr.TABLES[name](RESULTS) == text  # the docs build calls either


def test_spot_values_are_the_json():
    goals = list(load(rr.QUALITY_FILE)["goals"].values())
    first = rows(rr.table("quality"))[0]
    assert close(first[7], goals[0]["trained"], 3) and close(first[6], goals[0]["base"], 3)

    stages = {r["path"]: r for r in load("bench_train_stages.json")["results"]}
    body = rows(rr.table("train_stages"))
    assert body[0][1] == str(stages["supervised"]["decisions"])
    assert close(body[0][2], stages["supervised"]["seconds"], 1)
    ratio = stages["supervised"]["decisions_per_s"] / stages["episode"]["decisions_per_s"]
    assert close(body[-1][3], ratio, 2)

    frozen = load("bench_train_frozen.json")
    assert close(rows(rr.table("train_frozen"))[-1][3], frozen["frozen_reuse_gain"], 2)

    cache = load("bench_frozen_cache.json")["results"]
    for row, r in zip(rows(rr.table("train_frozen_cache")), cache, strict=True):
        assert row[0] == str(r["updates"]) and close(row[3], 100 * r["saved_share"], 0)

    select = load("bench_select.json")
    body = rows(rr.table("train_select"))
    for row, (name, v) in zip(body, select["scores"].items(), strict=False):
        assert row[0] == name and close(row[1], v["shared"], 4) and close(row[2], v["alone"], 4)
    assert close(body[-1][1], select["speedup"], 2) and close(body[-2][2], select["seconds"]["alone"], 1)

    transfer = load("bench_transfer.json")
    for row, r in zip(rows(rr.table("transfer")), transfer["table"], strict=True):
        assert row[0].startswith(r["target"]) and close(row[3], r["base"], 3) and close(row[5], r["all"], 3)
        if r["zero_shot"] is None:  # a held-out run not trained and evaluated yet
            assert r["target"] in transfer["pending"] and row[4] == row[6] == "pending"
        else:
            assert close(row[4], r["zero_shot"], 3) and close(row[6], r["zero_shot_minus_base"]["diff"], 3)

    bf16 = load("bench_bf16.json")["ranking"]["scenarios"]
    for row, s in zip(rows(rr.table("bf16_ranking")), bf16.values(), strict=True):
        assert close(row[3], s["mean_kendall_tau"], 3)
        assert row[2] == f"{round(s['identical_rankings'] * s['instances'])} of {s['instances']}"

    templates = load("bench_templates.json")["table"]
    for row, t in zip(rows(rr.table("templates")), templates, strict=True):
        assert close(row[2], t["ndcg@10"]["plain"], 3)
        assert close(row[4], t["ndcg@10"]["templates_minus_plain"]["diff"], 3)

    gsm8k = load("generic_gsm8k/generic.json")["tasks"]["gsm8k"]
    assert f"{gsm8k['comparison']['ties']} ties" in rows(rr.table("generic"))[0][5]

    serve = load("bench_serve.json")
    seq, conc = rows(rr.table("serve_throughput"))
    assert seq[1] == str(serve["sequential"]["requests"]) and close(conc[2], serve["concurrent"]["throughput_rps"], 3)

    default = load("bench_serve_hostile.json")["hostile"]["together"]
    row = next(r for r in rows(rr.table("serve_hostile")) if r[-1] == "`bench_serve_hostile.json`")
    assert row[3].startswith("**") and close(row[3], default["small_p99_s"], 1)

    speed = load("bench_rank.json")["speed"]
    for row, s in zip(rows(rr.table("rank_speed")), speed.values(), strict=True):
        assert row[1] == f"{s['prompt_tokens']:,} tokens" and close(row[3], s["ours_s"], 2)

    layouts = load("bench_rank_quality.json")
    assert any(close(r[1], layouts["iterative, cached layout"], 3) for r in rows(rr.table("rank_layouts")))


@pytest.mark.parametrize("name", sorted(DOCS_PLOTS))
def test_every_plot_writes_a_png(name, tmp_path):
    if name == "rank_latency" and "latency_by_candidates" not in load("bench_rank.json"):
        pytest.skip("bench_rank.json has no latency_by_candidates yet: it holds one candidate count; record it with "
                    "`python benchmarks/bench_rank.py --sweep-candidates 2,5,10,20,40,100 --sweep-only`")
    png = tmp_path / f"{name}.png"
    rr.plot(name, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_rank_latency_names_the_missing_sweep_and_draws_one(tmp_path):
    doc = load("bench_rank.json")
    doc.pop("latency_by_candidates", None)
    (tmp_path / "bench_rank.json").write_text(json.dumps(doc))
    with pytest.raises(rr.ResultsError, match=r"rank_latency.*bench_rank\.json.*latency_by_candidates"):
        rr.plot("rank_latency", tmp_path / "x.png", tmp_path)
    assert rr.missing("rank_latency", tmp_path)
    doc["latency_by_candidates"] = {  # the shape bench_rank.py --sweep-candidates writes
        "model": "m", "device": "cpu", "torch_threads": 2, "window": 20, "by_scenario": {
            "passage (DL19 BM25)": [{"candidates": n, "ours_s": n / 4, "floor_s": n / 10 if n <= 20 else None}
                                    for n in (2, 5, 10, 20, 40)]}}
    (tmp_path / "bench_rank.json").write_text(json.dumps(doc))
    rr.plot("rank_latency", tmp_path / "latency.png", tmp_path)
    assert (tmp_path / "latency.png").stat().st_size > 1000
    assert rr.missing("rank_latency", tmp_path) == []


def test_training_curves_draw_a_per_update_log_where_one_is_kept(tmp_path):
    for f in rr.SOURCES["training_curves"]:
        shutil.copy(RESULTS / f, tmp_path / f)
    run = tmp_path / rr.QUALITY_REPORT
    run.mkdir()
    shutil.copy(RESULTS / rr.QUALITY_REPORT / "probe.jsonl", run / "probe.jsonl")  # the probe, without the log
    assert any("KL" in gap for gap in rr.missing("training_curves", tmp_path))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": 0.5, "expected_reward": 0.6,
                                                           "kl": 0.01 * s}) + "\n" for s in range(1, 11)))
    assert rr.missing("training_curves", tmp_path) == []
    rr.plot("training_curves", tmp_path / "curves.png", tmp_path)
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_a_missing_file_or_key_is_named(tmp_path):
    with pytest.raises(rr.ResultsError, match=r"table 'serve_mixed'.*bench_serve_mixed\.json.*not found"):
        rr.table("serve_mixed", tmp_path)
    with pytest.raises(rr.ResultsError, match=r"plot 'serve_concurrency'.*bench_serve\.json"):
        rr.plot("serve_concurrency", tmp_path / "x.png", tmp_path)
    doc = load("bench_rank_quality.json")
    del doc["random (expected)"]
    (tmp_path / "bench_rank_quality.json").write_text(json.dumps(doc))
    with pytest.raises(rr.ResultsError, match=r"rank_layouts.*bench_rank_quality\.json has no key 'random \(exp"):
        rr.table("rank_layouts", tmp_path)
    with pytest.raises(KeyError, match="no table 'nope'"):
        rr.table("nope")


def test_the_command_line_writes_every_table_and_plot(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render_results.py"), "--out", str(tmp_path),
                        "--skip-missing"], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    for name in DOCS_TABLES:
        assert (tmp_path / f"{name}.md").read_text().strip() == rr.table(name)
    drawn = {p.stem for p in tmp_path.glob("*.png")}
    assert DOCS_PLOTS - drawn <= {"rank_latency"} and all(f"wrote {tmp_path / p}" in r.stdout for p in
                                                           (f"{n}.png" for n in drawn))
    listed = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render_results.py"), "--list"],
                            capture_output=True, text=True, timeout=300, check=True).stdout
    assert all(name in listed for name in DOCS_TABLES | DOCS_PLOTS) and "bench_serve_mixed.json" in listed
