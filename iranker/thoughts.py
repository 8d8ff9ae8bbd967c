"""Thought templates (the method's IRanker-COT): the reasoning a model wrote on training queries, kept when it was
rewarded, and retrieved for similar queries as templates in the prompt of any model.

A thought store is a folder, a model artifact beside the checkpoint it came from:

- `thoughts.jsonl`: one kept thought per line - `scenario`, `query` (the text retrieval matches: the query, or the
  user's history for recommendation), `thought` (the text inside `<think>`), `reward` (the exclusion reward of the
  decision it led to), `pool` (candidates in that pool), `source` (what wrote it: a training run, a collection).
- `store.json`: `{"format": 1, "index": "bm25", "count": N}`.

Only rewarded thoughts are kept: those whose decision removed a candidate of the pool's lowest grade (exclusion reward
1). Retrieval is BM25 (`bm25s`) over the stored queries of the request's scenario: queries are short and lexical
overlap finds the same task and topic; it installs from the package registry with numpy/scipy only, so the serving
image needs no embedding model. Identical thoughts are returned once. `retrieval="minilm"` (cosine similarity of
all-MiniLM-L6-v2 embeddings, `iranker.embedding`) is the alternative `benchmarks/bench_templates.py --retrieval`
measures against it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Self

FORMAT = 1
STORE_FILE = "store.json"
THOUGHTS_FILE = "thoughts.jsonl"
RETRIEVALS = ("bm25", "minilm")
KEEP_REWARD = 1.0  # a thought is kept when its decision earned this exclusion reward (the lowest grade removed)
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)


def retrieval_text(scenario: str, query: str | None, history: Sequence[str] | None) -> str:
    """The text a request is matched on: its query, or for recommendation its history (the titles, oldest first)."""
    if scenario == "recommendation":
        return " ".join(history or [])
    return query or ""


def thought_of(response: str) -> str | None:
    """The text inside the response's `<think>` block, stripped; None when there is none or it is empty."""
    m = _THINK.search(response or "")
    text = m.group(1).strip() if m else ""
    return text or None


@dataclass(frozen=True)
class Thought:
    scenario: str
    query: str
    thought: str
    reward: float
    pool: int
    source: str = ""


class ThoughtWriter:
    """Appends rewarded thoughts to a store folder (created if missing); `close()` writes `store.json`."""

    def __init__(self, folder: str | os.PathLike, source: str = ""):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.source = source
        self._file = open(self.folder / THOUGHTS_FILE, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.kept = 0
        self.seen = 0

    def add(self, scenario: str, query: str, thought: str | None, reward: float, pool: int) -> bool:
        """Keep `thought` (the text inside `<think>`; `thought_of` a response) when `reward` reaches KEEP_REWARD;
        True when it was kept."""
        self.seen += 1
        thought = (thought or "").strip()
        if not thought or reward < KEEP_REWARD or not query.strip():
            return False
        row = Thought(scenario, query, thought, float(reward), int(pool), self.source)
        self._file.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
        self._file.flush()
        self.kept += 1
        return True

    def close(self) -> Path:
        self._file.close()
        with open(self.folder / THOUGHTS_FILE, encoding="utf-8") as f:
            count = sum(1 for line in f if line.strip())
        (self.folder / STORE_FILE).write_text(json.dumps({"format": FORMAT, "index": "bm25", "count": count},
                                                         indent=1) + "\n")
        return self.folder

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ThoughtStore:
    """A loaded thought store with an index per scenario (BM25, or MiniLM embeddings)."""

    def __init__(self, thoughts: Iterable[Thought], path: str = "", retrieval: str = "bm25"):
        if retrieval not in RETRIEVALS:
            raise ValueError(f"thought templates: retrieval {retrieval!r} is not one of {', '.join(RETRIEVALS)}")
        self.path, self.retrieval = path, retrieval
        self.by_scenario: dict[str, list[Thought]] = {}
        for t in thoughts:
            self.by_scenario.setdefault(t.scenario, []).append(t)
        self._index: dict[str, object] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_scenario.values())

    @classmethod
    def load(cls, folder: str | os.PathLike, retrieval: str = "bm25") -> ThoughtStore:
        """Read a store folder; a missing file or a malformed line is a ValueError naming the file and line."""
        folder = Path(folder)
        meta_path, rows_path = folder / STORE_FILE, folder / THOUGHTS_FILE
        if not rows_path.is_file():
            raise ValueError(f"thought templates: {rows_path} not found (a thought store folder holds {THOUGHTS_FILE}"
                             f" and {STORE_FILE}; `iranker thoughts collect` or a reasoning-mode training run "
                             "writes one)")
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != FORMAT:
                raise ValueError(f"thought templates: {meta_path}: format {meta.get('format')!r}, expected {FORMAT}")
        thoughts = []
        with open(rows_path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    thoughts.append(Thought(**{k: row[k] for k in ("scenario", "query", "thought", "reward",
                                                                   "pool")}, source=row.get("source", "")))
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"thought templates: {rows_path} line {n}: expected a JSON object with "
                                     f"scenario, query, thought, reward and pool ({e})") from None
        return cls(thoughts, str(folder), retrieval)

    def _bm25(self, scenario: str):
        if scenario not in self._index:
            import bm25s

            corpus = [t.query for t in self.by_scenario[scenario]]
            retriever = bm25s.BM25()
            retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
            self._index[scenario] = retriever
        return self._index[scenario]

    def _scores(self, scenario: str, text: str) -> list[float]:
        """Similarity of `text` to each stored query of `scenario`; 0 means nothing in common (BM25)."""
        if self.retrieval == "minilm":
            from iranker.embedding import embed

            if scenario not in self._index:
                self._index[scenario] = embed([t.query for t in self.by_scenario[scenario]])
            # cosine similarity, shifted into (0, 2] so that every stored query can be returned
            return [float(v) + 1.0 + 1e-6 for v in self._index[scenario] @ embed([text])[0]]
        import bm25s

        tokens = bm25s.tokenize([text], stopwords="en", show_progress=False, return_ids=False)[0]
        if not tokens:
            return []
        return [float(v) for v in self._bm25(scenario).get_scores(tokens)]

    def nearest(self, scenario: str, text: str, k: int) -> list[str]:
        """The thoughts of the `k` stored queries of `scenario` most similar to `text` (BM25: none that shares no
        term; MiniLM: the k nearest), best first, each thought once; fewer when the store holds fewer, none for a
        scenario it lacks or an empty text."""
        rows = self.by_scenario.get(scenario, [])
        if k <= 0 or not rows or not text.strip():
            return []
        scores = self._scores(scenario, text)
        if not scores:
            return []
        order = sorted(range(len(rows)), key=lambda i: (-float(scores[i]), i))
        out: list[str] = []
        for i in order:
            if float(scores[i]) <= 0 or len(out) == k:
                break
            if rows[i].thought not in out:
                out.append(rows[i].thought)
        return out
