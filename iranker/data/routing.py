"""Routing data (RouterBench CSVs: per query, the quality and cost of each LLM) -> canonical tables -> instances.

Input: a RouterBench CSV or a folder of them. Columns: an unnamed row id (optional), `sample_id`, `prompt`,
`eval_name`, then per model a quality column named by the model (0/1; empty = missing, not 0), `<model>|total_cost`
(USD) and optionally `<model>|model_response`. Files named `*_train.csv` hold training queries (a seeded
`validation` fraction of them becomes the validation split), `*_test.csv` test queries; other files are split with
`split`. A prompt found in both a train and a test file stays in test only (counted in the manifest).

Canonical tables: `queries` (query_id, sample_id, task, prompt, source_split) and `outcomes` (query_id, model,
quality, cost). Instance = query + the models with a known quality, for each preference; utility =
a*quality - b*cost/max cost of the query (Performance First a=1,b=0; Balance 0.5,0.5; Cost First 0.2,0.8);
grade = utility - the query's lowest utility (>= 0; the best model has the highest grade). A (query, preference)
whose models all tie carries no ranking signal and is skipped (counted).
"""

from __future__ import annotations

import ast
import dataclasses
from collections import Counter
from pathlib import Path

import pandas as pd

from iranker.data.base import DataError, assign_split, parse_split, read_csv_rows, to_float
from iranker.io import seeded_rng
from iranker.schema import MAX_QUERY_CHARS, PREFERENCE_WEIGHTS, RankingInstance

# What the ranker reads about each model: public facts (maker, size, relative price), no benchmark outcomes.
MODEL_CARDS = {
    "gpt-4-1106-preview": "GPT-4 Turbo (OpenAI): the strongest general model in the pool; the most expensive.",
    "gpt-3.5-turbo-1106": "GPT-3.5 Turbo (OpenAI): capable general assistant; cheap.",
    "claude-v2": "Claude 2 (Anthropic): strong reasoning and long answers; expensive.",
    "claude-v1": "Claude 1 (Anthropic): capable general assistant; expensive.",
    "claude-instant-v1": "Claude Instant (Anthropic): fast and light; cheap.",
    "meta/llama-2-70b-chat": "Llama 2 70B Chat (Meta, open weights): decent general reasoning; moderate price.",
    "meta/code-llama-instruct-34b-chat": "Code Llama 34B Instruct (Meta, open weights): specialised in "
                                         "programming; weaker on other tasks; moderate price.",
    "mistralai/mixtral-8x7b-chat": "Mixtral 8x7B Instruct (Mistral, open mixture of experts): strong for its "
                                   "price; cheap.",
    "mistralai/mistral-7b-chat": "Mistral 7B Instruct (Mistral, open weights): small and very cheap; weak at "
                                 "hard reasoning.",
    "zero-one-ai/Yi-34B-Chat": "Yi 34B Chat (01.AI, open weights): good general knowledge; moderate price.",
    "WizardLM/WizardLM-13B-V1.2": "WizardLM 13B (open weights, Llama 2 based): small; very cheap; uneven quality.",
}


@dataclasses.dataclass
class RoutingParams:
    preferences: str = "performance,balance,cost"
    validation: float = 0.1
    split: str = "train:0.8,validation:0.1,test:0.1"   # for files without _train/_test in their names
    seed: int = 0
    max_query_chars: int = 4000
    dataset: str = "routerbench"

    def check(self) -> None:
        for p in self.preference_list():
            if p not in PREFERENCE_WEIGHTS:
                raise DataError(f"--param preferences: unknown preference {p!r}; use performance, balance, cost")
        if not 0 <= self.validation < 1:
            raise DataError(f"--param validation={self.validation}: expected a fraction in [0, 1)")
        if not 100 <= self.max_query_chars <= MAX_QUERY_CHARS:
            raise DataError(f"--param max_query_chars: expected 100..{MAX_QUERY_CHARS}")
        parse_split(self.split)

    def preference_list(self) -> list[str]:
        return [p.strip() for p in self.preferences.split(",") if p.strip()]


def _prompt_text(raw: str) -> str:
    """RouterBench stores prompts as the repr of a list of strings; join them."""
    if raw.startswith("[") and raw.endswith("]"):
        try:
            parts = ast.literal_eval(raw)
            if isinstance(parts, list) and all(isinstance(p, str) for p in parts):
                return "\n\n".join(parts)
        except (ValueError, SyntaxError):
            pass
    return raw


def read_routing(path: Path, params: RoutingParams) -> tuple[dict[str, pd.DataFrame], list[Path]]:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    files = [path] if path.is_file() else sorted(path.glob("*.csv"))
    if not files:
        raise DataError(f"{path}: no *.csv files (expected RouterBench CSVs)")
    queries, outcomes, where_id = [], [], {}
    for f in files:
        source_split = "train" if f.stem.endswith("_train") else "test" if f.stem.endswith("_test") else ""
        header, rows = read_csv_rows(f, ["sample_id", "prompt", "eval_name"])
        models = [c for c in header if f"{c}|total_cost" in header]
        if not models:
            raise DataError(f"{f}:1: no model columns: expected, for each model, a quality column MODEL and a "
                            "cost column MODEL|total_cost")
        col = {c: i for i, c in enumerate(header)}
        row_id = 0 if header[0] == "" else None
        for n, row in rows:
            task = row[col["eval_name"]].strip()
            qid = f"{task}:{row[0]}" if row_id is not None else row[col["sample_id"]]
            if not qid.strip() or not task:
                raise DataError(f"{f}:{n}: empty sample_id or eval_name")
            if qid in where_id:
                raise DataError(f"{f}:{n}: duplicate query id {qid!r} (first at {where_id[qid]})")
            where_id[qid] = f"{f.name}:{n}"
            prompt = _prompt_text(row[col["prompt"]]).strip()
            if not prompt:
                raise DataError(f"{f}:{n}: column prompt: empty")
            queries.append((qid, row[col["sample_id"]], task, prompt, source_split))
            for m in models:
                q = to_float(f, n, m, row[col[m]], allow_empty=True)
                if q is not None and not 0 <= q <= 1:
                    raise DataError(f"{f}:{n}: column {m}: quality must be within [0, 1], got {q}")
                cost = to_float(f, n, f"{m}|total_cost", row[col[f"{m}|total_cost"]], allow_empty=True)
                if cost is not None and cost < 0:
                    raise DataError(f"{f}:{n}: column {m}|total_cost: must be >= 0, got {cost}")
                outcomes.append((qid, m, q, cost))
    if not queries:
        raise DataError(f"{path}: no data rows (only headers)")
    q = pd.DataFrame(queries, columns=["query_id", "sample_id", "task", "prompt", "source_split"])
    o = pd.DataFrame(outcomes, columns=["query_id", "model", "quality", "cost"]).astype(
        {"quality": "float64", "cost": "float64"})
    return {"queries": q, "outcomes": o}, files


def build_instances(tables: dict[str, pd.DataFrame], params: RoutingParams,
                    dataset: str) -> tuple[list[RankingInstance], dict]:
    queries, outcomes = tables["queries"], tables["outcomes"]
    test_prompts = set(queries.loc[queries["source_split"] == "test", "prompt"])
    train_fracs = [("train", 1 - params.validation), ("validation", params.validation)]
    other_fracs = parse_split(params.split)
    by_q = {qid: g for qid, g in outcomes.groupby("query_id", sort=False)}
    stats: Counter = Counter()
    out = []
    for qid, _, task, prompt, source_split in queries.itertuples(index=False):
        if source_split == "train" and prompt in test_prompts:
            stats["train queries dropped: same prompt in a test file"] += 1
            continue
        split = ("test" if source_split == "test" else
                 assign_split(f"query:{prompt}", params.seed, train_fracs if source_split else other_fracs))
        g = by_q[qid]
        g = g[g["quality"].notna() & g["cost"].notna()]
        if len(g) < 2:
            stats["queries with fewer than 2 models with a known quality and cost"] += 1
            continue
        max_cost = g["cost"].max()
        query = prompt if len(prompt) <= params.max_query_chars else "..." + prompt[-params.max_query_chars:]
        for pref in params.preference_list():
            a, b = PREFERENCE_WEIGHTS[pref]
            util = {m: a * q - b * (c / max_cost if max_cost > 0 else 0.0)
                    for m, q, c in zip(g["model"], g["quality"], g["cost"], strict=True)}
            lo, hi = min(util.values()), max(util.values())
            if hi - lo < 1e-9:
                stats[f"skipped ({pref}): all models tie"] += 1
                continue
            models = list(util)
            seeded_rng(params.seed, "route", qid, pref).shuffle(models)
            out.append(RankingInstance(
                id=f"{dataset}-{qid}-{pref}", scenario="routing", dataset=dataset, query=query, preference=pref,
                task=task or None, candidates=[{"id": m, "text": MODEL_CARDS.get(m, m)} for m in models],
                relevance={m: round(u - lo, 6) for m, u in util.items() if u - lo > 1e-9}, split=split))
    return out, {"skipped": dict(sorted(stats.items()))}
