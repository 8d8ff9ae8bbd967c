"""Every benchmark table the docs show, rendered from the result files in benchmarks/results/ (no number typed by
hand), and the plots drawn from the same files.

Tables (Markdown: header, separator, rows; `--list` names each one's files):
- quality: the trained model against base, random, the first stage and the best simple baseline per test set
  (bench_train_quality.json, through `quality_table.table`);
- train_stages, train_throughput, train_frozen: training decisions per second (bench_train*.json);
- train_frozen_cache: what a cross-update cache of the frozen layers could skip (bench_frozen_cache.json);
- bf16_ranking: float32 against bf16 ranking on the CPU (bench_bf16.json);
- templates, templates_retrieval: thought templates, plain against BM25 and MiniLM retrieval (bench_templates*.json);
- transfer: zero-shot transfer, held out against trained on all (bench_transfer.json);
- generic: general ability, trained against base (generic_gsm8k/generic.json);
- serve_throughput, serve_vllm, serve_mixed, serve_hostile, serve_hostile_levers: the server under load
  (bench_serve*.json);
- rank_speed, rank_batching, rank_layouts: ranking latency, batching and the two layouts' quality (bench_rank*.json).

Plots (PNG): training_curves (reward, KL and the validation probe per update of the shipped run), quality_intervals
(per test set, with the paired 95% intervals), rank_latency (latency against candidate count: needs
`python benchmarks/bench_rank.py --sweep-candidates ... --sweep-only`), serve_concurrency (throughput and p50/p95
latency against concurrent clients).

    python benchmarks/render_results.py --out site/results [--results benchmarks/results] [--skip-missing]
    python benchmarks/render_results.py --list

From Python (the docs build): `table(name)`, `plot(name, out_png)`, `TABLES`, `PLOTS`, `SOURCES`. A missing result
file or key raises `ResultsError` naming the table or plot and the file. Numbers are rounded half up from the decimal
the file holds (51.15 s is 51.2 s), as the tables were when typed by hand; labels are text here, numbers never.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import quality_table  # benchmarks/ is not a package: found through sys.path above

RESULTS = HERE / "results"
QUALITY_FILE = "bench_train_quality.json"  # the shipped run's test result (bench_train_quality.py --out)
QUALITY_REPORT = "train_quality"  # its report folder (--report): metrics.jsonl, probe.jsonl

TABLES: dict[str, Callable[[Path], str]] = {}
PLOTS: dict[str, Callable[[Path, Path], None]] = {}
SOURCES: dict[str, tuple[str, ...]] = {}  # name -> result files it reads (relative to the results folder)


class ResultsError(LookupError):
    """A result file or a key in it that a table or plot needs is missing."""


class _Doc(dict):
    """A JSON object of a result file: a missing key is a `ResultsError` naming the file."""

    file: str = "?"

    def __missing__(self, key):
        raise ResultsError(f"{self.file} has no key {key!r}")


def _load(results_dir: Path, rel: str) -> _Doc:
    path = Path(results_dir) / rel
    if not path.is_file():
        raise ResultsError(f"result file {path} not found")

    def hook(obj: dict) -> _Doc:
        doc = _Doc(obj)
        doc.file = str(path)
        return doc

    return json.loads(path.read_text(), object_hook=hook)


def _register(registry: dict, kind: str, name: str, sources: tuple[str, ...]):
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ResultsError as e:
                raise ResultsError(f"{kind} {name!r}: {e}") from None

        registry[name] = run
        SOURCES[name] = sources
        return run

    return wrap


def _table(name: str, *sources: str):
    return _register(TABLES, "table", name, sources)


def _plot(name: str, *sources: str):
    return _register(PLOTS, "plot", name, sources)


def table(name: str, results_dir: Path = RESULTS) -> str:
    """The Markdown table `name` (header, separator, rows) rendered from the files in `results_dir`."""
    if name not in TABLES:
        raise KeyError(f"no table {name!r}; tables: {', '.join(TABLES)}")
    return TABLES[name](Path(results_dir))


def plot(name: str, out_png: Path, results_dir: Path = RESULTS) -> None:
    """Draw the plot `name` from the files in `results_dir` into `out_png`."""
    if name not in PLOTS:
        raise KeyError(f"no plot {name!r}; plots: {', '.join(PLOTS)}")
    PLOTS[name](Path(results_dir), Path(out_png))


# ------------------------------------------------------------------------------------------------------ numbers


def _dec(x) -> Decimal:
    if x is None:
        raise ResultsError("a number the table needs is null in the result file")
    return Decimal(repr(float(x))) if not isinstance(x, int) else Decimal(x)


def _fix(x, places: int, sign: bool = False, minus: str = "-") -> str:
    """`x` to `places` decimals, rounded half up from the decimal the file holds."""
    q = _dec(x).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    if q == 0:
        q = abs(q)
    text = f"{q:+f}" if sign else f"{q:f}"
    return text.replace("-", minus)


def _sig(x, digits: int = 3) -> str:
    """`x` to `digits` significant figures (0.0281, 2.67, 22.1, 110), rounded half up."""
    d = _dec(x)
    if d == 0:
        return "0"
    places = max(0, digits - 1 - d.adjusted())
    q = d.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    if q.adjusted() > d.adjusted() and places > 0:  # 9.996 -> 10.0, not 10.00
        q = d.quantize(Decimal(1).scaleb(-(places - 1)), rounding=ROUND_HALF_UP)
    return f"{q:f}"


def _pct(share) -> str:
    return _fix(_dec(share) * 100, 0) + "%"


def _short(x) -> str:
    """At most 2 decimals, at least 1 (1.0, 7.06)."""
    text = _fix(x, 2).rstrip("0")
    return text + "0" if text.endswith(".") else text


def _diff(d: dict, minus: str = "-") -> str:
    """A paired difference with its 95% interval: +0.004 [-0.018, +0.027]."""
    return (f"{_fix(d['diff'], 3, True, minus)} [{_fix(d['low'], 3, True, minus)}, "
            f"{_fix(d['high'], 3, True, minus)}]")


def _bold(text: str, on: bool = True) -> str:
    return f"**{text}**" if on else text


def _metric(name: str) -> str:
    return {"mrr": "MRR"}.get(name, name.replace("ndcg", "nDCG"))


def _md(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; an empty cell is written `| |`."""
    def line(cells: list[str]) -> str:
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def _result(doc: _Doc, path: str) -> _Doc:
    """The entry of a bench_train result's `results` for one path."""
    for r in doc["results"]:
        if r["path"] == path:
            return r
    raise ResultsError(f"{doc.file} has no result for path {path!r}")


def _shares(phases: dict) -> str:
    """Time shares of the phases over 0%, a phase's sub-phases in brackets: rollout 31% (prefill 20%), forward 15%."""
    parts = []
    for key, share in phases.items():
        if "." in key or _pct(share) == "0%":
            continue
        subs = [f"{k.split('.', 1)[1]} {_pct(v)}" for k, v in phases.items()
                if k.startswith(key + ".") and _pct(v) != "0%"]
        parts.append(f"{key} {_pct(share)}" + (f" ({', '.join(subs)})" if subs else ""))
    return ", ".join(parts)


def _statuses(counts: dict) -> str:
    """{"200": 2, "504": 1} -> 2 × 200, 1 × 504."""
    return ", ".join(f"{n} × {code}" for code, n in sorted(counts.items()))


# ------------------------------------------------------------------------------------------------------ tables


@_table("quality", QUALITY_FILE)
def quality(results_dir: Path) -> str:
    return quality_table.table(_load(results_dir, QUALITY_FILE))


TRAIN_STAGE_ROWS = (  # (file, path, label)
    ("bench_train_stages.json", "supervised", "supervised warm start (gold eliminations)"),
    ("bench_train_stages.json", "episode",
     "episode, `algo: expected` (with the reference pass: kl 0.01, the profile's value then)"),
    ("bench_train_stages_bf16.json", "episode",
     "episode without the KL term (the profile now; `bench_train_stages_bf16.json`)"),
)


@_table("train_stages", "bench_train_stages.json", "bench_train_stages_bf16.json")
def train_stages(results_dir: Path) -> str:
    rows, rate = [], {}
    for file, path, label in TRAIN_STAGE_ROWS:
        r = _result(_load(results_dir, file), path)
        rate.setdefault(path, r["decisions_per_s"])
        rows.append([label, str(r["decisions"]), _fix(r["seconds"], 1), _fix(r["decisions_per_s"], 2),
                     _fix(r["optimizer_steps_per_hour"], 0), _shares(r["share_by_phase"])])
    rows.append(["**supervised / episode**", "", "", _bold(_fix(rate["supervised"] / rate["episode"], 2) + "x"),
                 "", ""])
    return _md(["path", "decisions timed", "seconds", "decisions/s", "optimizer steps / hour", "time shares"], rows)


@_table("train_throughput", "bench_train.json")
def train_throughput(results_dir: Path) -> str:
    doc = _load(results_dir, "bench_train.json")
    labels = {"per-step": "per-step: one random sub-pool (2-20) per pass, serving layout",
              "episode": "episode: whole instances, all n−1 decisions in one pass"}
    rows = []
    for path, label in labels.items():
        r = _result(doc, path)
        rows.append([label, str(r["decisions"]), _fix(r["seconds"], 1), _fix(r["decisions_per_s"], 2)])
    ratio = _result(doc, "episode")["decisions_per_s"] / _result(doc, "per-step")["decisions_per_s"]
    goal = doc["goal"].replace(">=", "≥")
    rows.append(["**episode / per-step**", "", "", f"**{_fix(ratio, 1)}x** (goal {goal})"])
    return _md(["path", "decisions timed", "seconds", "decisions/s"], rows)


@_table("train_frozen", "bench_train_frozen.json")
def train_frozen(results_dir: Path) -> str:
    doc = _load(results_dir, "bench_train_frozen.json")
    labels = {"episode": "episode, frozen layers reused (default)", "episode-recompute": "episode-recompute"}
    rows = []
    for path, label in labels.items():
        r = _result(doc, path)
        s = r["share_by_phase"]
        rows.append([label, str(r["decisions"]), _fix(r["seconds"], 1), _fix(r["decisions_per_s"], 2),
                     f"{_pct(s['rollout'])} ({_pct(s['rollout.prefill'])})", _pct(s["reference"]),
                     _pct(s["forward"]), _pct(s["backward"])])
    ratio = _result(doc, "episode")["decisions_per_s"] / _result(doc, "episode-recompute")["decisions_per_s"]
    rows.append(["**reused / recomputed**", "", "", f"**{_fix(ratio, 2)}x**", "", "", "", ""])
    return _md(["path", "decisions timed", "seconds", "decisions/s", "rollout (of it: prefill)", "reference",
                "forward", "backward"], rows)


@_table("train_frozen_cache", "bench_frozen_cache.json")
def train_frozen_cache(results_dir: Path) -> str:
    doc = _load(results_dir, "bench_frozen_cache.json")
    rows = []
    for r in doc["results"]:
        by = r["by_scenario"]
        budget = "unbounded" if r["budget_gb"] is None else f"{r['budget_gb']:g} GiB"
        rows.append([str(r["updates"]), budget, f"{_short(r['held_gb_max'])} GiB", _pct(r["saved_share"]),
                     *(_pct(by[s]["saved_share"]) if s in by else "–" for s in ("passage", "recommendation", "routing"))])
    return _md(["updates replayed", "cache limit", "memory held", "prefix work skipped (all)", "passage", "recommendation", "routing"], rows)


@_table("train_select", "bench_select.json")
def train_select(results_dir: Path) -> str:
    doc = _load(results_dir, "bench_select.json")
    rows = [[name, _fix(v["shared"], 4), _fix(v["alone"], 4)] for name, v in doc["scores"].items()]
    sec = doc["seconds"]
    rows.append([f"**seconds ranking ({doc['validation_lists']} lists, {len(doc['models'])} models)**",
                 _fix(sec["shared"], 1), _fix(sec["alone"], 1)])
    rows.append(["**alone / shared**", f"**{_fix(doc['speedup'], 2)}x**", ""])
    return _md(["model", "frozen layers shared", "each model alone"], rows)


BF16_SCENARIOS = {"passage": "passage (DL19 BM25 top-20)", "recommendation": "recommendation (ML-100K)",
                  "routing": "routing (RouterBench)"}


@_table("bf16_ranking", "bench_bf16.json")
def bf16_ranking(results_dir: Path) -> str:
    doc = _load(results_dir, "bench_bf16.json")
    rows = []
    for key, label in BF16_SCENARIOS.items():
        s = doc["ranking"]["scenarios"][key]
        n = s["instances"]
        rows.append([label, str(n), f"{round(s['identical_rankings'] * n)} of {n}", _fix(s["mean_kendall_tau"], 3),
                     f"{round(s['top1_agreement'] * n)} of {n}",
                     f"{_metric(s['metric'])} {_fix(s['float32'], 3)} → {_fix(s['bfloat16'], 3)}",
                     f"{_fix(s['seconds']['float32'], 1)} / {_fix(s['seconds']['bfloat16'], 1)}"])
    return _md(["scenario (test split)", "requests", "identical rankings", "mean Kendall tau", "top-1 agreement",
                "metric float32 → bf16", "seconds float32 / bf16"], rows)


TEMPLATE_DATASETS = {"passage": "DL19 (BM25 top 20)", "ml-100k": "ml-100k", "routerbench": "RouterBench"}


@_table("templates", "bench_templates.json")
def templates(results_dir: Path) -> str:
    doc = _load(results_dir, "bench_templates.json")
    rows = []
    for r in doc["table"]:
        m = r["ndcg@10"]
        rows.append([TEMPLATE_DATASETS.get(r["dataset"], r["dataset"]), f"{r['with_templates_shown']} / {r['n']}",
                     _fix(m["plain"], 3), _fix(m["templates"], 3), _diff(m["templates_minus_plain"]),
                     _fix(m["random"], 3), _fix(m["first_stage"], 3)])
    return _md(["data set", "requests shown a template", "nDCG@10 plain", "with templates", "difference [95% CI]",
                "random", "first stage"], rows)


@_table("transfer", "bench_transfer.json")
def transfer(results_dir: Path) -> str:
    doc = _load(results_dir, "bench_transfer.json")
    pending = set(doc.get("pending", []))
    rows = []
    for r in doc["table"]:
        wait = r["target"] in pending and r["zero_shot"] is None
        zero = "pending" if wait else _fix(r["zero_shot"], 3)
        rows.append([f"{r['target']} ({' + '.join(r['trained_on_zero_shot'])})",
                     f"{r['dataset']}, {_metric(r['metric'])}, n={r['n']}", _fix(r["random"], 3), _fix(r["base"], 3),
                     zero, _fix(r["all"], 3), "pending" if wait else _diff(r["zero_shot_minus_base"]),
                     _diff(r["all_minus_base"])])
    return _md(["held out (trained on)", "test set", "random", "base", "trained on the other two", "trained on all",
                "other two − base [95% CI]", "all − base [95% CI]"], rows)


def _paired_or_same(d: dict, n: int, thoughts: int, scenario: str) -> str:
    """The paired difference, or, where the two runs ranked every instance alike, why."""
    if d["ties"] == n and d["low"] == d["high"]:
        count = {1: "one"}.get(thoughts, str(thoughts))
        return f"{_fix(d['diff'], 3, True)} (the store's {count} {scenario} thought{'' if thoughts == 1 else 's'})"
    return _diff(d)


@_table("templates_retrieval", "bench_templates_retrieval.json")
def templates_retrieval(results_dir: Path) -> str:
    doc = _load(results_dir, "bench_templates_retrieval.json")
    rows = []
    for r in doc["table"]:
        m, shown = r["ndcg@10"], r["templates_shown"]
        thoughts = doc["store"]["thoughts"].get(r["scenario"], 0)
        rows.append([TEMPLATE_DATASETS.get(r["dataset"], r["dataset"]),
                     f"{shown['templates']} / {shown['templates_minilm']}", _fix(m["plain"], 3),
                     _fix(m["templates"], 3), _fix(m["templates_minilm"], 3),
                     _paired_or_same(m["templates_minilm_minus_templates"], r["n"], thoughts, r["scenario"]),
                     _diff(m["templates_minilm_minus_plain"])])
    return _md(["data set", "shown a template: BM25 / MiniLM", "nDCG@10 plain", "BM25", "MiniLM",
                "MiniLM − BM25 [95% CI]", "MiniLM − plain [95% CI]"], rows)


def _generic_metric(key: str) -> str:
    """lm_eval's `exact_match,strict-match` -> exact match (strict)."""
    metric, _, filt = key.partition(",")
    return metric.replace("_", " ") + (f" ({filt.split('-')[0]})" if filt else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("s") else "s")


@_table("generic", "generic_gsm8k/generic.json")
def generic(results_dir: Path) -> str:
    doc = _load(results_dir, "generic_gsm8k/generic.json")
    rows = []
    for task, t in doc["tasks"].items():
        primary = t["primary_metric"]
        for key in dict.fromkeys([primary, *t["model"]["scores"]]):
            cell = ""
            if key == primary and t.get("comparison"):
                c = t["comparison"]
                cell = (f"{_diff(c, minus='−')} ({_plural(c['wins'], 'win')}, {_plural(c['losses'], 'loss')}, "
                        f"{_plural(c['ties'], 'tie')})")
            rows.append([task, _generic_metric(key), str(t["n"]), _fix(t["base"]["scores"][key], 3),
                         _fix(t["model"]["scores"][key], 3), cell])
    return _md(["task", "metric", "n", "base", "trained", "trained − base [95%]"], rows)


def _serve_table(results_dir: Path, file: str) -> str:
    doc = _load(results_dir, file)
    rows = []
    for phase in ("sequential", "concurrent"):
        p = doc[phase]
        label = "one at a time" if p["clients"] == 1 else f"{p['clients']} concurrent clients"
        rows.append([label, str(p["requests"]), f"{_sig(p['throughput_rps'])} req/s", f"{_sig(p['p50_s'])} s",
                     f"{_sig(p['p95_s'])} s", str(p["errors"]), _short(doc[f"mean_batch_size_{phase}"])])
    return _md(["phase", "requests", "throughput", "p50 latency", "p95 latency", "errors", "mean batch"], rows)


@_table("serve_throughput", "bench_serve.json")
def serve_throughput(results_dir: Path) -> str:
    return _serve_table(results_dir, "bench_serve.json")


@_table("serve_vllm", "bench_serve_vllm.json")
def serve_vllm(results_dir: Path) -> str:
    return _serve_table(results_dir, "bench_serve_vllm.json")


MIXED_KINDS = {"valid": "valid ranking (v1)", "rerank": "rerank (`/v1/rerank`)",
               "router": "routed chat (`/openai/v1/chat/completions`)", "invalid": "invalid (no candidates)",
               "malformed": "malformed JSON", "oversize": "oversize body",
               "over_budget": "over budget (100 candidates, `--max-passes 60`)"}


@_table("serve_mixed", "bench_serve_mixed.json")
def serve_mixed(results_dir: Path) -> str:
    doc = _load(results_dir, "bench_serve_mixed.json")
    rows = [[MIXED_KINDS.get(kind, kind), str(sum(codes.values())), _statuses(codes)]
            for kind, codes in doc["mixed"]["statuses"].items()]
    return _md(["kind", "sent", "answered"], rows)


def _note_number(doc: _Doc, name: str) -> str:
    """A setting the run's note records (`LARGE_SHARE 0.25`)."""
    m = re.search(rf"{name} ([0-9.]+)", doc.get("note") or "")
    if not m:
        raise ResultsError(f"{doc.file}: its note does not record {name}")
    return m.group(1)


HOSTILE_ROWS = (  # (label: text, or a function of the file's document; file; bold: the default)
    ("a small request waits for the running batch (before)", "bench_serve_hostile_no_express.json", False),
    ("express line; the large batch gets as long as each express batch", "bench_serve_hostile_half_share.json",
     False),
    (lambda d: f"express line; the large batch gets a third of that (`LARGE_SHARE` {_note_number(d, 'LARGE_SHARE')})",
     "bench_serve_hostile_quarter_share.json", False),
    (lambda d: ("the same, again, with the control (small requests alone: p99 "
                f"{_fix(d['hostile']['smalls_alone']['small_p99_s'], 1)} s)"),
     "bench_serve_hostile_quarter_share_rerun.json", False),
    ("and a large batch takes no small request along (the default)", "bench_serve_hostile.json", True),
    ("the same with 512-token prefill chunks (not kept)", "bench_serve_hostile_chunk512.json", False),
)


@_table("serve_hostile", *(f for _, f, _ in HOSTILE_ROWS))
def serve_hostile(results_dir: Path) -> str:
    rows = []
    for label, file, default in HOSTILE_ROWS:
        doc = _load(results_dir, file)
        t = doc["hostile"]["together"]
        rows.append([label(doc) if callable(label) else label,
                     *(_bold(f"{_fix(t[k], 1)} s", default) for k in ("small_p50_s", "small_p95_s", "small_p99_s")),
                     _statuses(t["statuses"]["giant_legal"]), f"`{file}`"])
    return _md(["batcher", "small p50", "small p95", "small p99", "legal giants", "result file"], rows)


HOSTILE_LEVER_ROWS = (
    ("the default", "bench_serve_hostile_avx2_baseline.json"),
    ("express turns of one request, newcomers join (not kept)", "bench_serve_hostile_avx2_turns.json"),
)


@_table("serve_hostile_levers", *(f for _, f in HOSTILE_LEVER_ROWS))
def serve_hostile_levers(results_dir: Path) -> str:
    rows = []
    for label, file in HOSTILE_LEVER_ROWS:
        h = _load(results_dir, file)["hostile"]
        alone, t = h["smalls_alone"], h["together"]
        rows.append([label, f"{_fix(alone['small_p50_s'], 1)} s / {_fix(alone['small_p99_s'], 1)} s",
                     *(f"{_fix(t[k], 1)} s" for k in ("small_p50_s", "small_p95_s", "small_p99_s", "small_max_s")),
                     f"`{file}`"])
    return _md(["batcher (AVX2 machine)", "alone p50 / p99", "together p50", "p95", "p99", "max", "result file"], rows)


RANK_SPEED = {"passage (DL19 BM25 top-20)": "DL19 query, BM25 top-20 passages",
              "recommendation (MovieLens-100K user)": "MovieLens-100K user (20 titles of history)"}
RANK_BATCHING = {"passage (DL19 BM25 top-20)": "DL19 queries, top-20",
                 "recommendation (MovieLens-100K users)": "MovieLens users"}
RANK_LAYOUTS = {"random (expected)": "random (expected)", "bm25 (first stage)": "BM25 order (first stage)",
                "iterative, cached layout": "embedded model, iterative, cached layout",
                "iterative, relist layout": "embedded model, iterative, relist layout"}


@_table("rank_speed", "bench_rank.json")
def rank_speed(results_dir: Path) -> str:
    speed = _load(results_dir, "bench_rank.json")["speed"]
    rows = []
    for key, label in RANK_SPEED.items():
        s = speed[key]
        rows.append([label, f"{s['prompt_tokens']:,} tokens", f"{_fix(s['floor_s'], 2)} s", f"{_fix(s['ours_s'], 2)} s",
                     f"{_fix(s['naive_s'], 2)} s", f"{_fix(s['ours_over_floor'], 2)}x",
                     f"{_fix(s['naive_over_ours'], 1)}x"])
    return _md(["instance", "prompt", "floor: one pass", "ours: cached iterative", "naive: re-list every step",
                "ours / floor", "naive / ours"], rows)


@_table("rank_batching", "bench_rank.json")
def rank_batching(results_dir: Path) -> str:
    batching = _load(results_dir, "bench_rank.json")["batching"]
    rows, sizes = [], set()
    for key, label in RANK_BATCHING.items():
        b = batching[key]
        sizes.add(b["instances"])
        rows.append([label, f"{_fix(b['one_by_one_s'], 1)} s", f"{_fix(b['batched_s'], 1)} s",
                     f"{_fix(b['throughput_ratio'], 2)}x"])
    first = f"{sizes.pop()} instances" if len(sizes) == 1 else "instances"
    return _md([first, "one by one", "one batch", "throughput"], rows)


@_table("rank_layouts", "bench_rank_quality.json")
def rank_layouts(results_dir: Path) -> str:
    doc = _load(results_dir, "bench_rank_quality.json")
    return _md(["ranking of the BM25 top-20", "nDCG@10"], [[label, _fix(doc[key], 3)] for key, label in
                                                           RANK_LAYOUTS.items()])


# ------------------------------------------------------------------------------------------------------ plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: Path) -> None:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def _shipped_run(results_dir: Path) -> tuple[_Doc, list[dict], list[dict], str]:
    """(the quality result, its per-update log, its validation probe, where the probe came from). The log and probe
    are the run folder's metrics.jsonl and probe.jsonl where they were copied to train_quality/; without
    them, the probe of the same run that compare_runs.py recorded in train_lever_layers.json."""
    doc = _load(results_dir, QUALITY_FILE)
    folder = Path(results_dir) / QUALITY_REPORT
    rows, probes, source = _jsonl(folder / "metrics.jsonl"), _jsonl(folder / "probe.jsonl"), "probe.jsonl"
    if not probes:
        levers = _load(results_dir, "train_lever_layers.json")
        same = [r for r in levers["runs"] if r["run"] == doc["run"]]
        if not same:
            raise ResultsError(f"{levers.file} records no run {doc['run']!r} (the run of {doc.file})")
        probes, source = same[0]["probe"], "train_lever_layers.json"
    return doc, rows, probes, source


def missing(name: str, results_dir: Path = RESULTS) -> list[str]:
    """What the plot `name` cannot draw from the files in `results_dir` (empty: everything it shows is there)."""
    results_dir = Path(results_dir)
    if name == "training_curves":
        doc, rows, _, _ = _shipped_run(results_dir)
        gaps = []
        if not rows:
            gaps.append("per-update log (train_quality/metrics.jsonl, the run folder's metrics.jsonl): the "
                        "reward is drawn as the means of the first and last 20 updates only")
        if not any("kl" in r for r in rows):
            gaps.append(f"KL per update: not recorded (the run's ppo.kl_coef is {doc['config']['ppo']['kl_coef']}: "
                        "no reference pass" + ("" if rows else "; and no per-update log") + ")")
        return gaps
    if name == "rank_latency":
        doc = _load(results_dir, "bench_rank.json")
        return [] if "latency_by_candidates" in doc else [_no_sweep(doc)]
    return []


@_plot("training_curves", QUALITY_FILE, "train_lever_layers.json")
def training_curves(results_dir: Path, out_png: Path) -> None:
    doc, rows, probes, probe_source = _shipped_run(results_dir)
    cfg, train = doc["config"], doc["train"]
    plt = _pyplot()
    fig, (ax_r, ax_kl, ax_v) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    start = 0
    for k, stage in enumerate(cfg.get("stages") or []):  # the stages as shaded spans
        ax_r.axvspan(start + 0.5, start + stage["steps"] + 0.5, alpha=0.1, color=f"C{k + 2}",
                     label=f"stage {k + 1}: {stage['algo']}, {stage['steps']} updates, lr {stage['lr_actor']:g}")
        start += stage["steps"]
    n = train["updates"]
    if rows:
        steps = [r["step"] for r in rows]
        for key in ("expected_reward", "reward"):
            if any(key in r for r in rows):
                ax_r.plot(steps, [r.get(key) for r in rows], label=key.replace("_", " "), alpha=0.8)
    else:
        w = min(20, n)
        ax_r.hlines([train["reward_first_20"], train["reward_last_20"]], [0.5, n - w + 0.5], [w + 0.5, n + 0.5],
                    colors="tab:red", linewidth=3, label=f"expected reward, mean of the first / last {w} updates")
        ax_r.set_title("per-update log not in the result files: the run's first and last 20 updates only",
                       fontsize=9)
    ax_r.set_ylabel("exclusion reward per step")
    ax_r.margins(y=0.4)
    ax_r.legend(fontsize=8, loc="upper left")
    kl = [(r["step"], r["kl"]) for r in rows if r.get("kl") is not None]
    if kl:
        ax_kl.plot(*zip(*kl, strict=True), color="tab:purple", label="KL to the reference")
        ax_kl.legend(fontsize=8)
    else:
        ax_kl.text(0.5, 0.5, f"KL not recorded (ppo.kl_coef {cfg['ppo']['kl_coef']}: no reference pass"
                   + ("" if rows else "; no per-update log in the results") + ")",
                   ha="center", va="center", transform=ax_kl.transAxes, fontsize=9)
        ax_kl.set_yticks([])
    ax_kl.set_ylabel("KL")
    keys = [k for k in probes[0] if k not in ("step", "first_label", "random")] if probes else []
    for key in keys:
        pts = [(p["step"], p[key]) for p in probes if p.get(key) is not None]
        ax_v.plot(*zip(*pts, strict=True), marker="o", linewidth=2.5 if key == "all" else 1,
                  linestyle="-" if key == "all" else "--", label=f"probe: {key}")
    if probes and probes[0].get("random") is not None:
        ax_v.axhline(probes[0]["random"], color="gray", linestyle=":", label="uniform random choice, same pools")
    ax_v.set_ylabel("validation: expected exclusion reward")
    ax_v.set_xlabel(f"update (step 0: the base model; probe from {probe_source})")
    ax_v.legend(fontsize=8, ncol=2)
    fig.suptitle(f"training {doc['run']}: {n} updates of {cfg['batch_size']} episodes")
    _save(fig, out_png)


@_plot("quality_intervals", QUALITY_FILE)
def quality_intervals(results_dir: Path, out_png: Path) -> None:
    doc = _load(results_dir, QUALITY_FILE)
    goals = list(doc["goals"].items())
    plt = _pyplot()
    fig, (ax_v, ax_d) = plt.subplots(1, 2, figsize=(13, 0.45 * len(goals) + 2.4), sharey=True)
    ys = range(len(goals))
    names = [f"{k.rsplit('/', 1)[0]} ({g['primary_metric']})" for k, g in goals]
    systems = (("random", "random", "tab:gray", "|"), ("first stage", "first_stage", "tab:brown", "s"),
               ("best simple baseline", "best_simple_value", "tab:blue", "D"), ("base", "base", "tab:orange", "o"),
               ("trained", "trained", "tab:red", "*"))
    for label, key, color, marker in systems:
        pts = [(g.get(key), y) for y, (_, g) in zip(ys, goals, strict=True) if g.get(key) is not None]
        ax_v.scatter(*zip(*pts, strict=True), color=color, marker=marker, s={"*": 70, "|": 120}.get(marker, 30),
                     label=label, zorder=3)
    ax_v.set_yticks(list(ys), names)
    ax_v.invert_yaxis()
    ax_v.set_xlabel("primary metric on the test split")
    ax_v.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=5)
    for offset, (label, d, iv, color) in zip((-0.15, 0.15), (
            ("trained − base", "diff_vs_base", "interval_vs_base", "tab:orange"),
            ("trained − first stage", "diff_vs_first_stage", "interval_vs_first_stage", "tab:brown")), strict=True):
        pts = [(g[d], g[iv], y + offset) for y, (_, g) in zip(ys, goals, strict=True) if g.get(d) is not None]
        ax_d.errorbar([p[0] for p in pts], [p[2] for p in pts], xerr=[[p[0] - p[1][0] for p in pts],
                                                                      [p[1][1] - p[0] for p in pts]],
                      fmt="o", color=color, capsize=3, label=f"{label} [paired 95%]")
    ax_d.axvline(0, color="black", linewidth=0.8)
    ax_d.set_xlabel("paired difference (95% bootstrap interval)")
    ax_d.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2)
    fig.suptitle(f"{doc['evaluated_model']} on the test splits (bar met: {doc['bar_met']})")
    _save(fig, out_png)


SWEEP_COMMAND = "python benchmarks/bench_rank.py --sweep-candidates 2,5,10,20,40,100 --sweep-only"


def _no_sweep(doc: _Doc) -> str:
    return (f"{doc.file} has no key 'latency_by_candidates': it holds one candidate count "
            f"({doc.get('candidates')}); record a sweep with `{SWEEP_COMMAND}`")


@_plot("rank_latency", "bench_rank.json")
def rank_latency(results_dir: Path, out_png: Path) -> None:
    """Ranking latency against candidate count, from `latency_by_candidates` of bench_rank.json (written by
    `bench_rank.py --sweep-candidates`): {"by_scenario": {NAME: [{"candidates", "ours_s", "floor_s"}, ...]}}."""
    doc = _load(results_dir, "bench_rank.json")
    if "latency_by_candidates" not in doc:
        raise ResultsError(_no_sweep(doc))
    sweep = doc["latency_by_candidates"]
    series = {name: sorted(rows, key=lambda r: r["candidates"]) for name, rows in sweep["by_scenario"].items()}
    if not any(len(rows) > 1 for rows in series.values()):
        raise ResultsError(f"{doc.file}: 'latency_by_candidates' holds fewer than two candidate counts")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, (name, rows) in enumerate(series.items()):
        color = f"C{k}"
        ax.plot([r["candidates"] for r in rows], [r["ours_s"] for r in rows], marker="o", color=color,
                label=f"{name}: cached iterative")
        floor = [(r["candidates"], r["floor_s"]) for r in rows if r.get("floor_s") is not None]
        if floor:
            ax.plot(*zip(*floor, strict=True), marker="x", linestyle="--", color=color, label=f"{name}: floor")
    if sweep.get("window"):
        ax.axvline(sweep["window"], color="gray", linestyle=":", label=f"window {sweep['window']} (sliding past it)")
    ax.set_xlabel("candidates")
    ax.set_ylabel("seconds per ranking (median)")
    ax.set_title(", ".join(f"{sweep[k]}" + (" threads" if k == "torch_threads" else "")
                           for k in ("model", "device", "torch_threads") if sweep.get(k) is not None))
    ax.legend(fontsize=8)
    _save(fig, out_png)


SERVE_FILES = {"bench_serve.json": "in-process (transformers)", "bench_serve_vllm.json": "vLLM behind iranker"}


@_plot("serve_concurrency", *SERVE_FILES)
def serve_concurrency(results_dir: Path, out_png: Path) -> None:
    plt = _pyplot()
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(11, 4.2))
    ticks: set[int] = set()
    for k, (file, label) in enumerate(SERVE_FILES.items()):
        doc = _load(results_dir, file)
        phases = sorted((doc[p] for p in ("sequential", "concurrent")), key=lambda p: p["clients"])
        clients = [p["clients"] for p in phases]
        ticks.update(clients)
        color = f"C{k}"
        ax_t.plot(clients, [p["throughput_rps"] for p in phases], marker="o", color=color, label=label)
        ax_l.plot(clients, [p["p50_s"] for p in phases], marker="o", color=color, label=f"{label}: p50")
        ax_l.plot(clients, [p["p95_s"] for p in phases], marker="^", linestyle="--", color=color,
                  label=f"{label}: p95")
    ax_t.set_ylabel("throughput (requests/s)")
    ax_l.set_ylabel("latency (s)")
    ax_l.set_yscale("log")
    for ax in (ax_t, ax_l):
        ax.set_xlabel("concurrent clients")
        ax.set_xticks(sorted(ticks))
        ax.legend(fontsize=8)
    fig.suptitle("iranker serve under load (bench_serve.py, throughput phases)")
    _save(fig, out_png)


# ------------------------------------------------------------------------------------------------------ command line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=RESULTS, help="the result files (default: benchmarks/results)")
    ap.add_argument("--out", type=Path, help="write NAME.md per table and NAME.png per plot here")
    ap.add_argument("--list", action="store_true", help="print the tables and plots with their result files")
    ap.add_argument("--skip-missing", action="store_true",
                    help="a table or plot whose result file or key is missing is reported and skipped (exit 0)")
    args = ap.parse_args()
    if args.list:
        for kind, registry in (("table", TABLES), ("plot", PLOTS)):
            for name in registry:
                print(f"{kind:5} {name:22} {', '.join(SOURCES[name])}")
                try:
                    gaps = missing(name, args.results)
                except ResultsError as e:
                    gaps = [str(e)]
                for gap in gaps:
                    print(f"{'':28} missing: {gap}")
        return
    if args.out is None:
        ap.error("--out DIR or --list")
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in TABLES:
        try:
            (args.out / f"{name}.md").write_text(table(name, args.results) + "\n")
            print(f"wrote {args.out / f'{name}.md'}")
        except ResultsError as e:
            failed.append(str(e))
    for name in PLOTS:
        try:
            plot(name, args.out / f"{name}.png", args.results)
            print(f"wrote {args.out / f'{name}.png'}")
            for gap in missing(name, args.results):
                print(f"  {name} lacks {gap}", file=sys.stderr)
        except ResultsError as e:
            failed.append(str(e))
    for msg in failed:
        print(("skipped: " if args.skip_missing else "error: ") + msg, file=sys.stderr)
    if failed and not args.skip_missing:
        sys.exit(1)


if __name__ == "__main__":
    main()
