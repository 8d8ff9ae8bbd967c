"""Served calls and their outcomes -> ranking instances: the way back from production into training.

Input: a collector folder (`iranker collect --out DIR`: `events/date=YYYY-MM-DD/events.jsonl`) holding, per call,
the CloudEvent pair KServe's InferenceService `logger` (or `iranker serve --log-url`) posts - the request as received
and the response as sent, sharing the request id - and the events the server adds itself:

    org.iranker.feedback        POST /v1/feedback: {"request_id", "instance", "chosen" | "grades" | "verdict"}
    org.iranker.route.outcome   every routed chat call: the routing request (query, preference, task, candidates),
                                the ranking, the route used, the fallbacks, upstream status, latency, tokens, cost

Canonical tables:
  - `calls` (request_id, instance, kind, scenario, time, event_id, query, user_id, history, preference, task):
    one row per ranking a call asked for (a v1/v2 call may hold several; rerank and chat one each);
  - `shown` (request_id, instance, candidate_id, position, text): what the answer showed, in its order;
  - `outcomes` (request_id, instance, candidate_id, grade, source, time, event_id): what happened, one row per
    candidate an outcome names (source: chosen, grades, verdict, or fallback - an LLM that failed before the
    route that answered).

Instances (one per ranking with outcomes), relevance from the outcomes, only over candidates that were shown:
  - `chosen`: the chosen candidates grade 1, the others shown grade 0 (implicit feedback: seen and passed over);
  - `grades`: the graded candidates with their grades; candidates left ungraded are left out;
  - `verdict` (a routed call): the route that answered grades 1 (good) or 0 (bad); an LLM that failed before it
    grades 0. Candidates without an outcome are left out.
  Several feedback events on one ranking: the latest per candidate counts. A ranking left with fewer than two
  candidates, or with none above grade 0, carries no ranking signal and is skipped (counted in the manifest), as is
  a recommendation with more than one chosen item. Splits, by time and per user (recommendation) or query, so that
  a user's or a query's rankings stay in one split: the latest `holdout` share of users and queries (by their first
  call) is the test split, the held-out slice a promotion gate evaluates on; of the others, a seeded `validation`
  share (`assign_split`) is the validation split.

The Great Expectations suite of `iranker.validation` for these tables checks that no event is stored twice, that
every outcome names a candidate its call showed, and that no outcome is older than its call.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from iranker.data.base import DataError, assign_split
from iranker.schema import MAX_QUERY_CHARS, RankingInstance

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
FEEDBACK_TYPE = "org.iranker.feedback"
ROUTE_OUTCOME_TYPE = "org.iranker.route.outcome"


def read_events(root: str | Path):
    """Every stored event of a collector folder, oldest day first, in the order received (whole lines only: a line
    a crash cut short is never acknowledged, so never read)."""
    for day in sorted((Path(root) / "events").glob("date=*")):
        path = day / "events.jsonl"
        if not path.exists():
            continue
        with path.open("rb") as f:
            for n, line in enumerate(f, 1):
                if line.endswith(b"\n"):
                    try:
                        yield json.loads(line)
                    except ValueError:
                        raise DataError(f"{path}:{n}: not a JSON event line") from None


@dataclasses.dataclass
class FeedbackParams:
    holdout: float = 0.2  # the latest share of users / queries (by their first call) held out as the test split
    validation: float = 0.1  # of the others, a seeded share for validation
    seed: int = 0
    dataset: str = "feedback"

    def check(self) -> None:
        for name in ("holdout", "validation"):
            if not 0 <= getattr(self, name) < 1:
                raise DataError(f"--param {name}={getattr(self, name)}: expected a fraction in [0, 1)")


CALL_COLUMNS = ["request_id", "instance", "kind", "scenario", "time", "event_id", "query", "user_id", "history",
                "preference", "task"]
SHOWN_COLUMNS = ["request_id", "instance", "candidate_id", "position", "text"]
OUTCOME_COLUMNS = ["request_id", "instance", "candidate_id", "grade", "source", "time", "event_id"]


def _event_id(e: dict) -> str:
    return e.get("attributes", {}).get("eventid") or f"{e['source']}|{e['id']}|{e['type']}"


def _requests_of(body: Any) -> tuple[str, list[dict]] | None:
    """(kind, [RankRequest JSON]) of a logged request body, or None for a body that is no ranking call."""
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("instances"), list):
        return "v1", [r for r in body["instances"] if isinstance(r, dict)]
    if isinstance(body.get("inputs"), list):
        out = []
        for tensor in body["inputs"]:
            for el in (tensor.get("data") or []) if isinstance(tensor, dict) else []:
                try:
                    out.append(json.loads(el) if isinstance(el, str) else el)
                except ValueError:
                    return None
        return "v2", [r for r in out if isinstance(r, dict)]
    if isinstance(body.get("documents"), list) and isinstance(body.get("query"), str):
        docs = [d if isinstance(d, str) else (d or {}).get("text", "") for d in body["documents"]]
        return "rerank", [{"scenario": "passage", "query": body["query"],
                           "candidates": [{"id": str(i), "text": t} for i, t in enumerate(docs)]}]
    return None


def _rankings_of(kind: str, body: Any) -> list[list[str]] | None:
    """The candidate ids each ranking of a logged response showed, in order."""
    if not isinstance(body, dict):
        return None
    if kind == "v1":
        return [list(p.get("ranking") or []) for p in body.get("predictions") or []]
    if kind == "v2":
        out = []
        for tensor in body.get("outputs") or []:
            for el in tensor.get("data") or []:
                out.append(list((json.loads(el) if isinstance(el, str) else el).get("ranking") or []))
        return out
    if kind == "rerank":
        return [[str(r["index"]) for r in body.get("results") or []]]
    return None


def read_feedback(path: Path, params: FeedbackParams) -> tuple[dict[str, pd.DataFrame], list[Path]]:
    """The `calls`, `shown` and `outcomes` tables of a collector folder (module doc)."""
    if not path.is_dir() or not (path / "events").is_dir():
        raise DataError(f"{path}: not a collector folder (expected events/date=YYYY-MM-DD/events.jsonl, as "
                        "`iranker collect --out DIR` writes)")
    files = sorted((path / "events").glob("date=*/events.jsonl"))
    calls: dict[str, dict] = {}  # request id -> the latest call with that id (a client may reuse an id)
    responses: dict[str, dict] = {}
    routes: dict[str, dict] = {}
    feedback: list[dict] = []
    for e in read_events(path):
        t, rid = e.get("type"), str(e.get("id"))
        if t == REQUEST_TYPE:
            calls[rid] = e
        elif t == RESPONSE_TYPE:
            responses[rid] = e
        elif t == ROUTE_OUTCOME_TYPE:
            routes[rid] = e
        elif t == FEEDBACK_TYPE:
            feedback.append(e)
    call_rows, shown_rows, outcome_rows = [], [], []
    for rid, e in calls.items():
        parsed = _requests_of(e.get("data"))
        resp = responses.get(rid)
        if parsed is None or resp is None:
            continue
        kind, reqs = parsed
        rankings = _rankings_of(kind, resp.get("data"))
        if not rankings or len(rankings) != len(reqs):
            continue
        for k, (req, ranking) in enumerate(zip(reqs, rankings, strict=True)):
            texts = {str(c.get("id")): str(c.get("text", "")) for c in req.get("candidates") or []
                     if isinstance(c, dict)}
            call_rows.append(_call_row(rid, k, kind, e, req))
            shown_rows += [(rid, k, cid, pos, texts.get(cid, "")) for pos, cid in enumerate(ranking)]
    for rid, e in routes.items():
        d = e.get("data") or {}
        req = d.get("request") or {}
        call_rows.append(_call_row(rid, 0, "chat", e, req))
        texts = {str(c.get("id")): str(c.get("text", "")) for c in req.get("candidates") or []}
        shown_rows += [(rid, 0, cid, pos, texts.get(cid, "")) for pos, cid in enumerate(d.get("ranking") or [])]
        for name in d.get("failed") or []:  # an LLM that failed before the one that answered
            outcome_rows.append((rid, 0, name, 0.0, "fallback", e.get("time", ""), _event_id(e)))
    for e in feedback:
        d = e.get("data") or {}
        rid, k, when, eid = str(e.get("id")), int(d.get("instance") or 0), e.get("time", ""), _event_id(e)
        for cid in d.get("chosen") or []:
            outcome_rows.append((rid, k, str(cid), 1.0, "chosen", when, eid))
        for cid, grade in (d.get("grades") or {}).items():
            outcome_rows.append((rid, k, str(cid), float(grade), "grades", when, eid))
        if d.get("verdict") in ("good", "bad") and d.get("route"):
            outcome_rows.append((rid, k, str(d["route"]), 1.0 if d["verdict"] == "good" else 0.0, "verdict",
                                 when, eid))
    tables = {"calls": pd.DataFrame(call_rows, columns=CALL_COLUMNS),
              "shown": pd.DataFrame(shown_rows, columns=SHOWN_COLUMNS),
              "outcomes": pd.DataFrame(outcome_rows, columns=OUTCOME_COLUMNS).astype({"grade": "float64"})}
    for df in tables.values():
        if "instance" in df:
            df["instance"] = df["instance"].astype("int64")
    tables["shown"]["position"] = tables["shown"]["position"].astype("int64")
    if tables["outcomes"].empty:
        raise DataError(f"{path}: no outcomes (no feedback events and no routed calls that fell back); send "
                        "outcomes with POST /v1/feedback")
    return tables, files


def _call_row(rid: str, k: int, kind: str, event: dict, req: dict) -> tuple:
    history = req.get("history")
    return (rid, k, kind, str(req.get("scenario") or ("routing" if kind == "chat" else "")), event.get("time", ""),
            _event_id(event), (req.get("query") or None), req.get("user_id"),
            json.dumps(history) if history else None, req.get("preference"), req.get("task"))


def build_instances(tables: dict[str, pd.DataFrame], params: FeedbackParams,
                    dataset: str) -> tuple[list[RankingInstance], dict]:
    calls, shown, outcomes = tables["calls"], tables["shown"], tables["outcomes"]
    fracs = [("train", 1 - params.validation), ("validation", params.validation)]
    shown_by = {key: g for key, g in shown.groupby(["request_id", "instance"], sort=False)}
    latest = (outcomes.assign(_order=range(len(outcomes))).sort_values(["time", "_order"])
              .groupby(["request_id", "instance", "candidate_id"], sort=False).last().reset_index())
    out_by = {key: g for key, g in latest.groupby(["request_id", "instance"], sort=False)}
    stats: Counter = Counter()
    out = []
    groups = {}  # (scenario, user or query) -> the time of its first call
    for call in calls.sort_values("time", kind="stable").itertuples(index=False):
        groups.setdefault(_group(call), call.time)
    ordered = sorted(groups, key=lambda g: (groups[g], g))
    held_out = set(ordered[len(ordered) - round(params.holdout * len(ordered)):]) if params.holdout else set()
    for call in calls.itertuples(index=False):
        key = (call.request_id, call.instance)
        if key not in out_by:
            stats["rankings without an outcome"] += 1
            continue
        seen = shown_by.get(key)
        if seen is None:
            continue
        ids = list(seen["candidate_id"])
        text = dict(zip(seen["candidate_id"], seen["text"], strict=True))
        got = out_by[key]
        grades = {c: g for c, g in zip(got["candidate_id"], got["grade"], strict=True) if c in text}
        chosen = [c for c, s in zip(got["candidate_id"], got["source"], strict=True) if s == "chosen" and c in text]
        if chosen and not set(got["source"]) - {"chosen"}:
            grades = {c: (1.0 if c in chosen else 0.0) for c in ids}  # seen and passed over: grade 0
        if call.scenario == "recommendation" and len(chosen) > 1:
            stats["recommendations with more than one chosen item"] += 1
            continue
        keep = [c for c in ids if c in grades]
        if len(keep) < 2 or not any(grades[c] > 0 for c in keep):
            stats["rankings with fewer than two candidates with an outcome, or none above grade 0"] += 1
            continue
        group = _group(call)
        try:
            out.append(RankingInstance(
                id=f"{dataset}-{call.request_id}-{call.instance}", scenario=call.scenario, dataset=dataset,
                query=(call.query or None) and str(call.query)[-MAX_QUERY_CHARS:], user_id=call.user_id or None,
                history=json.loads(call.history) if call.history else [], preference=call.preference or None,
                task=call.task or None, candidates=[{"id": c, "text": text[c] or "(no text)"} for c in keep],
                relevance={c: grades[c] for c in keep if grades[c] > 0},
                split="test" if group in held_out else assign_split(str(group), params.seed, fracs)))
        except ValueError:
            stats["rankings whose call is not a valid ranking request"] += 1
    return out, {"skipped": dict(sorted(stats.items())), "events": _event_counts(tables)}


def _group(call) -> tuple[str, str]:
    """What keeps rankings in one split: the user (recommendation; else the history) or the query."""
    who = (call.user_id or call.history) if call.scenario == "recommendation" else call.query
    return call.scenario, str(who)


def _event_counts(tables: dict[str, pd.DataFrame]) -> dict[str, int]:
    return {"rankings": len(tables["calls"]), "outcomes": len(tables["outcomes"])}
