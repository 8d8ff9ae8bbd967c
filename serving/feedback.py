"""Outcomes: `POST /v1/feedback` says what happened after a call, and the router reports each routed call's outcome.

    POST /v1/feedback  {"request_id": ID, "instance": 0,           # which ranking of a v1/v2 call (default 0)
                        "chosen": [candidate ids],                 # the item taken, the passage clicked
                        "grades": {candidate id: number >= 0},     # a rating, a relevance grade
                        "verdict": "good" | "bad"}                 # a routed call: was the answer good
    -> 202 {"request_id": ID, "accepted": true}

The server remembers what each of its last `capacity` calls showed (`Shown`: request id -> per ranking, the
candidate ids in the order answered; for a routed call the route that answered). Feedback on an id it does not know,
on a candidate that was not shown, a verdict on a call that was not routed, or a malformed body gets a 4xx naming the
field. Accepted feedback is posted to the inference log as an `org.iranker.feedback` CloudEvent named by the
request id (`iranker data ingest feedback` joins it with the call). An item chosen in a recommendation made for a
`user_id` is also pushed to the user's context in Feast's online store (with `--feature-repo`), so that their next
request's history ends with it. Behind several replicas, feedback must reach
the replica that answered the call (session affinity), since each remembers only its own calls.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from kserve.errors import InvalidInput
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

MAX_IDS = 100


@dataclass(frozen=True)
class Call:
    kind: str  # v1, v2, rerank, chat
    rankings: tuple[tuple[str, ...], ...]  # per ranking of the call, the candidate ids in the order answered
    route: str | None = None  # a routed call: the LLM that answered
    users: tuple[tuple[str, dict[str, str]] | None, ...] = ()  # per ranking: a recommendation's user id and the
    # candidates' texts (a chosen item goes to the user's Feast history), else None


class Shown:
    """What the last `capacity` calls showed, by request id (a reused id keeps the latest call)."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self._calls: OrderedDict[str, Call] = OrderedDict()

    def remember(self, rid: str, call: Call) -> None:
        self._calls[rid] = call
        self._calls.move_to_end(rid)
        while len(self._calls) > self.capacity:
            self._calls.popitem(last=False)

    def get(self, rid: str) -> Call | None:
        return self._calls.get(rid)


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: StrictStr = Field(min_length=1, max_length=200)
    instance: StrictInt = Field(default=0, ge=0)
    chosen: list[StrictStr | StrictInt] | None = Field(default=None, min_length=1, max_length=MAX_IDS)
    grades: dict[str, float] | None = Field(default=None, min_length=1, max_length=MAX_IDS)
    verdict: Literal["good", "bad"] | None = None

    @field_validator("grades")
    @classmethod
    def _finite(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for cid, g in (v or {}).items():
            if not (math.isfinite(g) and 0 <= g <= 1e6):
                raise ValueError(f"grades[{cid!r}]: a number from 0 to 1e6, got {g}")
        return v


def check(body: object, shown: Shown) -> tuple[Feedback, Call]:
    """The feedback in `body`, checked against the call it names; InvalidInput (400) or LookupError (404) else."""
    from iranker.schema import describe_error

    if not isinstance(body, dict):
        raise InvalidInput("body: expected a JSON object {\"request_id\": ..., \"chosen\" | \"grades\" | \"verdict\"}")
    try:
        fb = Feedback.model_validate(body)
    except ValidationError as e:
        raise InvalidInput(describe_error(e)) from None
    if fb.chosen is None and fb.grades is None and fb.verdict is None:
        raise InvalidInput("body: say what happened: chosen (candidate ids), grades ({id: number}) or verdict "
                           "(good | bad)")
    call = shown.get(fb.request_id)
    if call is None:
        raise LookupError(f"request_id: no call {fb.request_id!r} among the last {shown.capacity} this server "
                          "answered (the id is the x-request-id header, or the id field, of the answer)")
    if fb.instance >= len(call.rankings):
        raise InvalidInput(f"instance: call {fb.request_id!r} ranked {len(call.rankings)} request(s); expected 0.."
                           f"{len(call.rankings) - 1}, got {fb.instance}")
    ids = set(call.rankings[fb.instance])
    for k, cid in enumerate(fb.chosen or []):
        if str(cid) not in ids:
            raise InvalidInput(f"chosen[{k}]: {cid!r} was not among the candidates call {fb.request_id!r} showed")
    for cid in fb.grades or {}:
        if cid not in ids:
            raise InvalidInput(f"grades[{cid!r}]: not among the candidates call {fb.request_id!r} showed")
    if fb.verdict is not None and call.route is None:
        raise InvalidInput(f"verdict: call {fb.request_id!r} was not a routed chat completion (verdicts are for "
                           "routed calls; use chosen or grades)")
    return fb, call


def event_data(fb: Feedback, call: Call) -> dict:
    """The body of the org.iranker.feedback event: the feedback, ids as strings, and the route a verdict is on."""
    data = fb.model_dump(exclude_none=True)
    if fb.chosen is not None:
        data["chosen"] = [str(c) for c in fb.chosen]
    if fb.verdict is not None:
        data["route"] = call.route
    data["kind"] = call.kind
    return data
