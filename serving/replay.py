"""Simulated users: a dataset's instances replayed through a running server, each call's outcome posted from the gold
grades. The loop's dry run on held-out data (serve -> log -> outcomes -> `iranker data ingest feedback`) before real
traffic, and its end-to-end test.

    iranker replay --url http://127.0.0.1:8080 --data data/ml-100k --split test --limit 50 [--router iranker-router]

Each instance is sent as its first stage would list it (`iranker.listing`), under a request id of its own
(`replay-RUN-N`), and then:
- recommendation: a v1 call; the user takes the shown candidates with a positive grade (`chosen`);
- passage: a v1 call; the grades of the shown passages are posted (`grades`, a relevance judgment);
- routing: with `router`, a chat completion through the router (the instance's query, preference and task); the
  verdict is "good" when the LLM that answered has the instance's highest grade, else "bad" (an answering LLM that is
  not among the instance's candidates gets none). Without `router`, a v1 ranking of the models and their grades.
A call without a positive grade among what was shown gets no outcome (counted as `no_outcome`).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from iranker.schema import RankingInstance


@dataclass
class Replayed:
    """What a replay did: counts per scenario and outcome, and the request id of every answered call."""

    calls: Counter = field(default_factory=Counter)  # scenario -> calls made
    answered: dict[str, str] = field(default_factory=dict)  # request id -> instance id, for each 2xx answer
    failed: Counter = field(default_factory=Counter)  # "scenario status" -> calls not answered
    outcomes: Counter = field(default_factory=Counter)  # "chosen" / "grades" / "verdict good" ... -> accepted
    refused: Counter = field(default_factory=Counter)  # feedback not accepted: "status: error"
    no_outcome: int = 0

    def summary(self) -> dict:
        return {"calls": dict(self.calls), "answered": len(self.answered), "failed": dict(self.failed),
                "outcomes": dict(self.outcomes), "refused": dict(self.refused), "no_outcome": self.no_outcome}


def pick(sources: Sequence[str | Path], split: str = "test", limit: int = 0, seed: int = 0) -> list[RankingInstance]:
    """The instances of `split` ("all": every one) from dataset folders or instances files, at most `limit` per
    dataset and scenario (a seeded sample), each listed in its first stage's order."""
    from iranker.io import load_instances, seeded_rng
    from iranker.listing import listed

    out: list[RankingInstance] = []
    for src in sources:
        p = Path(src)
        file = p / "instances.jsonl" if p.is_dir() else p
        if not file.exists():
            raise FileNotFoundError(f"data: {src} holds no instances.jsonl (a folder from `iranker data ingest`, or an "
                                    f"instances JSONL file)")
        groups: dict[tuple[str, str], list[RankingInstance]] = {}
        for inst in load_instances(file):
            if split == "all" or inst.split == split:
                groups.setdefault((inst.dataset, inst.scenario), []).append(inst)
        if not groups:
            raise ValueError(f"data: no instances of split {split!r} in {src}")
        for key, group in sorted(groups.items()):
            if limit and len(group) > limit:
                group = seeded_rng(seed, "replay", *key).sample(group, limit)
            out += [listed(i, "first-stage") for i in group]
    return out


def replay(url: str, instances: Sequence[RankingInstance], *, model: str = "iranker", router: str | None = None,
           token: str | None = None, clients: int = 1, timeout: float = 300.0,
           progress: Callable[[str], None] | None = None) -> Replayed:
    """Send each instance to the server at `url` as a user would, then post its outcome (module docstring)."""
    import httpx

    run = uuid.uuid4().hex[:8]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    result = Replayed()
    client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def call(n: int, inst: RankingInstance) -> tuple[str, str | None, str, str]:
        """-> (request id, the call's failure or None, the outcome's kind, the refusal or "")"""
        rid = f"replay-{run}-{n}"
        routed = inst.scenario == "routing" and router is not None
        if routed:
            body = {"model": router, "messages": [{"role": "user", "content": inst.query}],
                    "preference": inst.preference, "task": inst.task}
            r = client.post("/openai/v1/chat/completions", json={k: v for k, v in body.items() if v is not None},
                            headers={"x-request-id": rid})
        else:
            req = inst.to_request().model_dump(exclude_none=True, exclude={"options"})
            r = client.post(f"/v1/models/{model}:predict", json={"instances": [req]}, headers={"x-request-id": rid})
        if r.status_code // 100 != 2:
            return rid, f"{inst.scenario} {r.status_code}", "", ""
        fb = outcome(inst, rid, r.headers.get("x-iranker-route") if routed else r.json()["predictions"][0]["ranking"])
        if fb is None:
            return rid, None, "", ""
        kind = next(k for k in ("chosen", "grades", "verdict") if k in fb)
        got = client.post("/v1/feedback", json=fb)
        if got.status_code != 202:
            return rid, None, kind, f"{got.status_code}: {got.text[:200]}"
        return rid, None, kind if kind != "verdict" else f"verdict {fb['verdict']}", ""

    try:
        with ThreadPoolExecutor(max(1, clients)) as pool:
            for n, (inst, (rid, failed, kind, refused)) in enumerate(
                    zip(instances, pool.map(lambda a: call(*a), enumerate(instances))), 1):
                result.calls[inst.scenario] += 1
                if failed:
                    result.failed[failed] += 1
                    continue
                result.answered[rid] = inst.id
                if refused:
                    result.refused[refused] += 1
                elif kind:
                    result.outcomes[kind] += 1
                else:
                    result.no_outcome += 1
                if progress and (n % 10 == 0 or n == len(instances)):
                    progress(f"replayed {n}/{len(instances)}: {len(result.answered)} answered, "
                             f"{sum(result.outcomes.values())} outcomes")
    finally:
        client.close()
    return result


def outcome(inst: RankingInstance, rid: str, shown: list[str] | str | None) -> dict | None:
    """The feedback a user with the gold grades gives on what was shown: a ranking (ids) or, routed, the answering
    LLM's name. None when there is nothing to say."""
    if isinstance(shown, str) or inst.scenario == "routing" and shown is None:
        best = max(inst.relevance.values(), default=0.0)
        if shown is None or shown not in {c.id for c in inst.candidates} or best <= 0:
            return None
        return {"request_id": rid, "verdict": "good" if inst.grade(shown) >= best else "bad"}
    positive = [c for c in shown if inst.grade(c) > 0]
    if not positive:
        return None
    if inst.scenario == "recommendation":
        return {"request_id": rid, "chosen": positive}
    return {"request_id": rid, "grades": {c: inst.relevance[c] for c in shown if c in inst.relevance}}
