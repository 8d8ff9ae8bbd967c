"""Readers for the public data the project develops and benchmarks on (`../shared/data`, see its README).

- TREC DL 2019 passages: first-stage results with texts (JSON) + official qrels.
- MovieLens-100K (RecBole atomic files): users as ranking requests, with the protocol of the design notes
  (first 20 interactions by time as history, the 21st as target, 19 random unseen negatives, shuffled, seeded).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from iranker.schema import RankRequest


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """TREC qrels `qid 0 docid grade` -> {qid: {docid: grade}}."""
    qrels: dict[str, dict[str, int]] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise ValueError(f"{path}:{n}: expected 'qid 0 docid grade', got {line[:80]!r}")
        qrels.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return qrels


def dl19_requests(shared: str | Path, depth: int = 20, first_stage: str = "bm25") -> list[tuple[str, RankRequest]]:
    """[(qid, RankRequest of the first-stage top-`depth` passages, first-stage order)] of TREC DL 2019."""
    entries = json.loads((Path(shared) / "passage" / f"dl19_{first_stage}_top100.json").read_text())
    out = []
    for e in entries:
        hits = e["hits"][:depth]
        out.append((str(hits[0]["qid"]), RankRequest(scenario="passage", query=e["query"], candidates=[
            {"id": h["docid"], "text": h["content"]} for h in hits])))
    return out


def dl19_qrels(shared: str | Path) -> dict[str, dict[str, int]]:
    return read_qrels(Path(shared) / "passage" / "qrels.dl19-passage.txt")


def movielens_requests(shared: str | Path, n_users: int, seed: int = 0, history: int = 20,
                       negatives: int = 19) -> list[tuple[str, RankRequest]]:
    """[(target item id, RankRequest)] for the first `n_users` users (by id) with more than `history` ratings."""
    base = Path(shared) / "recommendation" / "ml-100k"
    titles = {}
    for line in (base / "ml-100k.item").read_text(encoding="latin-1").splitlines()[1:]:
        parts = line.split("\t")
        titles[parts[0]] = f"{parts[1]} ({parts[2]})" if len(parts) > 2 and parts[2] else parts[1]
    by_user: dict[str, list[tuple[float, str]]] = {}
    for line in (base / "ml-100k.inter").read_text().splitlines()[1:]:
        u, i, _, ts = line.split("\t")
        by_user.setdefault(u, []).append((float(ts), i))
    rng = random.Random(seed)
    items = sorted(titles)
    out = []
    for u in sorted(by_user, key=int):
        seq = [i for _, i in sorted(by_user[u])]
        if len(seq) <= history:
            continue
        seen = set(seq)
        cands = [seq[history]] + rng.sample([i for i in items if i not in seen], negatives)
        rng.shuffle(cands)
        out.append((seq[history], RankRequest(scenario="recommendation", user_id=u,
                                              history=[titles[i] for i in seq[:history]],
                                              candidates=[{"id": i, "text": titles[i]} for i in cands])))
        if len(out) == n_users:
            break
    return out
