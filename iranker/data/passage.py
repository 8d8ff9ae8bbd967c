"""Passage data (TREC Deep Learning style) -> canonical tables -> ranking instances.

Two input layouts, both with TREC qrels (`qid ITER docid grade`; the iteration column is ignored, whatever its
token: `0` in the NIST files of DL19/DL21, `Q0` in NovelEval's):
- first-stage results with passage texts, as JSON: `[{"query", "hits": [{"qid", "docid", "rank", "score",
  "content"}]}]`, `qid` an integer or a string, `score` optional (the layout of ../shared/data/passage,
  passage-dl21 and passage-noveleval; a folder with several first stages, e.g. BM25 and SPLADE++, is read with
  `--param first_stage='*bm25*'`);
- the standard TREC layout for users with the full collection: a run file (`qid Q0 docid rank score tag`),
  `collection.tsv` (`docid<TAB>text`, streamed: only the passages the run retrieved are kept) and `queries.tsv`
  (`qid<TAB>query`).

Canonical tables: `queries` (qid, query), `first_stage` (qid, docid, rank, score, text; score NaN where the input
gives none), `qrels` (qid, docid, grade; every judgment, also of passages the first stage missed). Instance = query +
first-stage top-`depth` in first-stage order (the order is itself a baseline); each candidate's `features` are its
1-based position in that list (`rank`) and the first stage's `score` when there is one; relevance = the qrels grades
(unjudged = 0). Split by query with `assign_splits_exact`: the fractions hold to within one query over the data
set's queries (a TREC query set is small and fixed; see iranker/data/base.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd

from iranker.data.base import DataError, assign_splits_exact, parse_split, to_float
from iranker.schema import MAX_TEXT_CHARS, RankingInstance


@dataclasses.dataclass
class PassageParams:
    depth: int = 20
    first_stage: str = ""   # JSON file (or a glob) inside a folder, e.g. '*bm25*'
    qrels: str = ""         # qrels file; default: the one qrels* file beside the input
    run: str = ""           # TREC layout: run file, collection and queries (file names inside PATH)
    collection: str = "collection.tsv"
    queries: str = "queries.tsv"
    split: str = "test:1.0"
    seed: int = 0
    dataset: str = ""

    def check(self) -> None:
        if not 1 <= self.depth <= 100:
            raise DataError(f"--param depth={self.depth}: expected 1..100 (longer lists use sliding windows)")
        parse_split(self.split)


def read_passage(path: Path, params: PassageParams) -> tuple[dict[str, pd.DataFrame], list[Path]]:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    folder = path if path.is_dir() else path.parent
    if params.run:
        run = folder / params.run
        queries, first_stage, inputs = _read_trec_layout(run, folder / params.queries, folder / params.collection)
        known = set(queries["qid"])
        queries = queries[queries["qid"].isin(set(first_stage["qid"]))].reset_index(drop=True)
    else:
        src = path if path.is_file() else _one(folder, params.first_stage or "*.json", "first-stage JSON")
        queries, first_stage = _read_json(src)
        inputs = [src]
        known = set(queries["qid"])
    qrels_path = folder / params.qrels if params.qrels else _one(folder, "qrels*", "qrels")
    qrels = _read_qrels(qrels_path, known)
    # judgments of queries the first stage did not run (a full qrels file) are not part of this data set
    qrels = qrels[qrels["qid"].isin(set(queries["qid"]))].reset_index(drop=True)
    return {"queries": queries, "first_stage": first_stage, "qrels": qrels}, inputs + [qrels_path]


def _one(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(p for p in folder.glob(pattern) if p.is_file())
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise DataError(f"{folder}: expected exactly one {what} file matching {pattern!r}, found {names}"
                        f"{' (choose with --param first_stage=NAME)' if what.startswith('first') else ''}")
    return found[0]


def _read_json(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError(f"{path}: empty file (expected a JSON list of {{query, hits}})")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON at column {e.colno} ({e.msg}); truncated file?") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {{query, hits}} objects, got {type(data).__name__}")
    queries, hits, seen = [], [], {}
    for k, entry in enumerate(data):
        at = f"{path}: entry [{k}]"
        if not isinstance(entry, dict) or "query" not in entry or "hits" not in entry:
            raise DataError(f"{at}: expected an object with 'query' and 'hits'")
        if not entry["hits"]:
            raise DataError(f"{at}: 'hits' is empty")
        if not isinstance(entry["hits"], list):
            raise DataError(f"{at}.hits: expected a list of hits, got {type(entry['hits']).__name__}")
        qid = None
        docs: set[str] = set()
        for j, h in enumerate(entry["hits"]):
            if not isinstance(h, dict):
                raise DataError(f"{at}.hits[{j}]: expected an object, got {type(h).__name__}")
            missing = [f for f in ("qid", "docid", "rank", "content") if f not in h]
            if missing:
                raise DataError(f"{at}.hits[{j}]: missing field(s) {', '.join(missing)}")
            hq = _json_id(h["qid"], f"{at}.hits[{j}].qid")
            if qid is None:
                qid = hq
            elif hq != qid:
                raise DataError(f"{at}.hits[{j}].qid: {h['qid']!r} differs from the entry's qid {qid!r}")
            d = _json_id(h["docid"], f"{at}.hits[{j}].docid")
            if d in docs:
                raise DataError(f"{at}.hits[{j}].docid: duplicate docid {d!r} within query {qid}")
            docs.add(d)
            rank = h["rank"]
            if isinstance(rank, bool) or not isinstance(rank, int):
                raise DataError(f"{at}.hits[{j}].rank: expected an integer, got {rank!r}")
            hits.append((qid, d, rank, _json_score(h.get("score"), f"{at}.hits[{j}].score"),
                         str(h["content"])[:MAX_TEXT_CHARS]))
        if qid in seen:
            raise DataError(f"{at}: duplicate query id {qid!r} (first at entry [{seen[qid]}])")
        seen[qid] = k
        queries.append((qid, str(entry["query"])))
    return (pd.DataFrame(queries, columns=["qid", "query"]),
            pd.DataFrame(hits, columns=["qid", "docid", "rank", "score", "text"]))


def _json_id(value, at: str) -> str:
    """A query or passage id from JSON, as the qrels spell it: an integer (`264014`) or a string (`"264014"`,
    `"msmarco_passage_08_24643970"`) becomes its decimal or literal text; anything else would silently miss the
    qrels (`264014.0`), so it stops the ingest."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip() and not any(c.isspace() for c in value):
        return value
    raise DataError(f"{at}: expected an integer or a string without spaces (as in the qrels), got {value!r}")


def _json_score(value, at: str) -> float:
    """The first stage's score, NaN when the input gives none (absent or null)."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{at}: expected a finite number (or no score), got {value!r}")
    return float(value)


def _read_trec_layout(run: Path, queries_path: Path, collection: Path) -> tuple[pd.DataFrame, pd.DataFrame, list]:
    queries, qline = [], {}
    for n, r in _headerless(queries_path, ["qid", "query"]):
        if r[0] in qline:
            raise DataError(f"{queries_path}:{n}: duplicate qid {r[0]!r} (first on line {qline[r[0]]})")
        qline[r[0]] = n
        queries.append((r[0], r[1]))
    hits, pairs = [], set()
    if not run.exists():
        raise DataError(f"{run}: no such file (--param run=NAME names the TREC run file inside the folder)")
    for n, line in enumerate(run.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        p = line.split()
        if len(p) != 6:
            raise DataError(f"{run}:{n}: expected 'qid Q0 docid rank score tag' (6 fields), got {len(p)}")
        if p[0] not in qline:
            raise DataError(f"{run}:{n}: unknown query id {p[0]!r}: not in {queries_path.name}")
        if (p[0], p[2]) in pairs:
            raise DataError(f"{run}:{n}: duplicate docid {p[2]!r} for query {p[0]!r}")
        pairs.add((p[0], p[2]))
        score = to_float(run, n, "score", p[4])
        if not math.isfinite(score):
            raise DataError(f"{run}:{n}: column score: expected a finite number, got {p[4]!r}")
        hits.append([p[0], p[2], int(to_float(run, n, "rank", p[3])), score, None])
    if not hits:
        raise DataError(f"{run}: empty file (expected 'qid Q0 docid rank score tag' lines)")
    wanted = {h[1] for h in hits}
    texts: dict[str, str] = {}
    for _, r in _headerless(collection, ["docid", "text"]):
        if r[0] in wanted:
            texts[r[0]] = r[1]
    for h in hits:
        if h[1] not in texts:
            raise DataError(f"{collection}: docid {h[1]!r} (retrieved in {run.name}) has no text")
        h[4] = texts[h[1]][:MAX_TEXT_CHARS]
    return (pd.DataFrame(queries, columns=["qid", "query"]),
            pd.DataFrame(hits, columns=["qid", "docid", "rank", "score", "text"]), [run, queries_path, collection])


def _headerless(path: Path, columns: list[str]):
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (expected {'<TAB>'.join(columns)} lines)")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split("\t", len(columns) - 1)
            if len(parts) != len(columns):
                raise DataError(f"{path}:{n}: expected {len(columns)} tab-separated fields "
                                f"({', '.join(columns)}), got {len(parts)}")
            yield n, parts


def _read_qrels(path: Path, known: set[str]) -> pd.DataFrame:
    """TREC qrels: `qid ITER docid grade`, whitespace-separated. ITER (the iteration) is unused by trec_eval and
    by us, so any token is accepted: `0` (NIST's DL19/DL21 files) and `Q0` (NovelEval) alike."""
    if not path.exists():
        raise DataError(f"{path}: no such file (qrels: 'qid 0 docid grade' lines)")
    rows, first = [], {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        p = line.split()
        if len(p) != 4:
            hint = " - a TREC run ('qid Q0 docid rank score tag')?" if len(p) == 6 else ""
            raise DataError(f"{path}:{n}: expected 'qid 0 docid grade' (4 fields; the second, the iteration, "
                            f"may be any token such as 0 or Q0), got {len(p)}{hint}")
        if p[0] not in known:
            sample = ", ".join(repr(q) for q in sorted(known, key=lambda q: (len(q), q))[:3])
            raise DataError(f"{path}:{n}: unknown query id {p[0]!r}: not among the {len(known)} queries of this "
                            f"data set (e.g. {sample}); do the qrels belong to this first stage?")
        try:
            grade = int(p[3])
        except ValueError:
            raise DataError(f"{path}:{n}: grade: expected an integer, got {p[3]!r}") from None
        if (p[0], p[2]) in first:
            raise DataError(f"{path}:{n}: duplicate judgment of {p[2]!r} for query {p[0]!r} "
                            f"(first on line {first[(p[0], p[2])]})")
        first[(p[0], p[2])] = n
        rows.append((p[0], p[2], grade))
    if not rows:
        raise DataError(f"{path}: empty file (expected 'qid 0 docid grade' lines)")
    return pd.DataFrame(rows, columns=["qid", "docid", "grade"])


def build_instances(tables: dict[str, pd.DataFrame], params: PassageParams,
                    dataset: str) -> tuple[list[RankingInstance], dict]:
    fractions = parse_split(params.split)
    splits = assign_splits_exact((f"query:{q}" for q in tables["queries"]["qid"]), params.seed, fractions)
    grades: dict[str, dict[str, int]] = {}
    for q, d, g in tables["qrels"].itertuples(index=False):
        grades.setdefault(q, {})[d] = g
    hits = tables["first_stage"].sort_values(["qid", "rank"], kind="stable")
    by_q = {q: g.head(params.depth) for q, g in hits.groupby("qid", sort=False)}
    out, no_relevant = [], 0
    for qid, query in tables["queries"].itertuples(index=False):
        top = by_q[qid]
        rel = {d: float(grades.get(qid, {}).get(d, 0)) for d in top["docid"]}
        rel = {d: g for d, g in rel.items() if g > 0}
        no_relevant += not rel
        candidates = [{"id": d, "text": t, "features": _features(rank, score)}
                      for rank, (d, t, score) in enumerate(zip(top["docid"], top["text"], top["score"],
                                                                strict=True), 1)]
        out.append(RankingInstance(
            id=f"{dataset}-q{qid}", scenario="passage", dataset=dataset, query=query, candidates=candidates,
            relevance=rel, split=splits[f"query:{qid}"]))
    return out, {"queries_without_relevant_in_top_k": no_relevant}


def _features(rank: int, score: float) -> dict:
    """A candidate's first-stage signals: its 1-based position in the list as ingested, and the score if given."""
    return {"rank": rank} if math.isnan(score) else {"rank": rank, "score": float(score)}
