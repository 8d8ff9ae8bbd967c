"""The one data contract: ranking instances (data, training, evaluation) and rank requests/responses (CLI, API, server).

Every part of iranker passes these classes around. Validation errors name the bad field::

    >>> RankRequest.model_validate({"scenario": "passage", "query": "q", "candidates": []})
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: ... candidates ... at least one candidate ...
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

Scenario = Literal["recommendation", "routing", "passage"]
Preference = Literal["performance", "balance", "cost"]
Split = Literal["train", "validation", "test"]
SCENARIOS: tuple[str, ...] = ("recommendation", "routing", "passage")
PREFERENCES: tuple[str, ...] = ("performance", "balance", "cost")
# a routing preference's utility = a*quality - b*cost/(highest cost): (a, b) per preference (RouterBench's settings)
PREFERENCE_WEIGHTS = {"performance": (1.0, 0.0), "balance": (0.5, 0.5), "cost": (0.2, 0.8)}

# Size limits for anything that reaches the model from outside (requests and ingested instances alike).
MAX_CANDIDATES = 100
MAX_ID_CHARS = 200
MAX_TEXT_CHARS = 8_000
MAX_QUERY_CHARS = 8_000
MAX_HISTORY_ITEMS = 200
MAX_TASK_CHARS = 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class CandidateFeatures(_Strict):
    """What the first stage knows about a candidate, shown to the model beside its text (all optional).

    recommendation: `ratings` (interactions before the request) and `mean_rating` (1-5), `classes`;
    routing: `price` (mean USD per query) and `quality` (share of queries answered well, 0-1);
    passage: the first stage's `rank` (1 = top) and `score`. Training and evaluation read them from Feast's
    offline store (point in time), the server from its online store; a request may carry them itself.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    ratings: int | None = Field(default=None, ge=0, description="interactions with the item known so far")
    mean_rating: float | None = Field(default=None, ge=0, le=5, description="mean rating, on a 1-5 scale")
    classes: list[str] | None = Field(default=None, max_length=8, description="the item's classes (genres)")
    price: float | None = Field(default=None, ge=0, description="mean cost of one query, USD")
    quality: float | None = Field(default=None, ge=0, le=1, description="share of queries answered well")
    rank: int | None = Field(default=None, ge=1, description="the first stage's rank (1 = top)")
    score: float | None = Field(default=None, description="the first stage's score")

    @field_validator("classes")
    @classmethod
    def _short_classes(cls, v: list[str] | None) -> list[str] | None:
        for i, c in enumerate(v or []):
            if len(c) > 60:
                raise ValueError(f"classes[{i}]: at most 60 characters")
        return v


class Candidate(_Strict):
    """One thing to rank: a passage, an item, or an LLM. `text` is untrusted and shown to the model after sanitising."""

    id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="caller's id, returned in the ranking")
    text: str = Field(max_length=MAX_TEXT_CHARS, description="what the model reads about this candidate")
    features: CandidateFeatures | None = Field(default=None, description="the first stage's signals (optional)")

    @field_validator("id")
    @classmethod
    def _id_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("candidate id must not be blank")
        return v


def _check_candidates(candidates: list[Candidate]) -> None:
    if not candidates:
        raise ValueError("candidates: at least one candidate is required")
    seen: set[str] = set()
    for i, c in enumerate(candidates):
        if c.id in seen:
            raise ValueError(f"candidates[{i}].id: duplicate id {c.id!r}; candidate ids must be unique")
        seen.add(c.id)


def _check_scenario_fields(scenario: str, query: str | None, history: list[str] | None, user_id: str | None,
                           preference: str | None, need_context: bool, task: str | None = None) -> None:
    if task is not None and scenario != "routing":
        raise ValueError(f"task: only routing takes a task family, not scenario {scenario!r}")
    if task is not None and not task.strip():
        raise ValueError("task: a task family name, or leave it out")
    if scenario == "routing" and preference is None:
        raise ValueError("preference: a routing request needs a preference (performance, balance or cost)")
    if scenario != "routing" and preference is not None:
        raise ValueError(f"preference: only routing takes a preference, not scenario {scenario!r}")
    if scenario in ("routing", "passage") and not (query and query.strip()):
        raise ValueError(f"query: a {scenario} request needs a non-empty query")
    if need_context and scenario == "recommendation" and not history and not user_id:
        raise ValueError("history: a recommendation request needs a history or a user_id to look it up")


class RankingInstance(_Strict):
    """One line of an instances JSONL file: a query or user context, candidates and graded relevance."""

    id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    scenario: Scenario
    dataset: str = Field(min_length=1)
    query: str | None = Field(default=None, max_length=MAX_QUERY_CHARS)
    user_id: str | None = None
    history: list[str] = Field(default_factory=list, max_length=MAX_HISTORY_ITEMS)
    preference: Preference | None = None
    task: str | None = Field(default=None, max_length=MAX_TASK_CHARS,
                             description="routing: the query's task family (e.g. 'mmlu'); candidates' measured quality "
                                         "and price are then those on that family where known")
    candidates: list[Candidate] = Field(max_length=MAX_CANDIDATES)
    relevance: dict[str, float] = Field(default_factory=dict, description="candidate id -> grade; missing = 0")
    split: Split = "test"

    @model_validator(mode="after")
    def _consistent(self) -> RankingInstance:
        _check_candidates(self.candidates)
        _check_scenario_fields(self.scenario, self.query, self.history, self.user_id, self.preference,
                               need_context=True, task=self.task)
        ids = {c.id for c in self.candidates}
        for cid, grade in self.relevance.items():
            if cid not in ids:
                raise ValueError(f"relevance[{cid!r}]: grade given for an id that is not among the candidates")
            if grade < 0:
                raise ValueError(f"relevance[{cid!r}]: grade must be >= 0, got {grade}")
        return self

    def grade(self, candidate_id: str) -> float:
        return self.relevance.get(candidate_id, 0.0)

    def to_request(self, **options) -> RankRequest:
        return RankRequest(scenario=self.scenario, query=self.query, user_id=self.user_id,
                           history=self.history or None, preference=self.preference,
                           task=self.task, candidates=self.candidates, options=RankOptions(**options))


class RankOptions(_Strict):
    method: Literal["iterative", "direct"] = "iterative"
    reasoning: StrictBool = Field(default=False, description="think + answer (parsed strictly) instead of one fast "
                                                             "choice")


class RankRequest(_Strict):
    """What a caller asks: rank these candidates for this scenario."""

    scenario: Scenario
    query: str | None = Field(default=None, max_length=MAX_QUERY_CHARS)
    user_id: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    history: list[str] | None = Field(default=None, max_length=MAX_HISTORY_ITEMS)
    preference: Preference | None = None
    task: str | None = Field(default=None, max_length=MAX_TASK_CHARS,
                             description="routing: the query's task family (e.g. 'mmlu'); candidates' measured quality "
                                         "and price are then those on that family where known")
    candidates: list[Candidate] = Field(max_length=MAX_CANDIDATES)
    top_k: StrictInt | None = Field(default=None, ge=1)
    options: RankOptions = Field(default_factory=RankOptions)

    @model_validator(mode="after")
    def _consistent(self) -> RankRequest:
        _check_candidates(self.candidates)
        # A recommendation request may arrive with only a user id: the server fills the history from Feast.
        _check_scenario_fields(self.scenario, self.query, self.history, self.user_id, self.preference,
                               need_context=True, task=self.task)
        for i, h in enumerate(self.history or []):
            if len(h) > MAX_TEXT_CHARS:
                raise ValueError(f"history[{i}]: at most {MAX_TEXT_CHARS} characters")
        return self


class Elimination(BaseModel):
    id: str
    step: int
    reasoning: str | None = None


class Usage(BaseModel):
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class RankResponse(BaseModel):
    ranking: list[str]
    eliminated: list[Elimination]
    model: str
    usage: Usage
    parse_failures: int = 0


def describe_error(err: ValidationError) -> str:
    """One line per problem, each naming the field: `candidates.2.id: ...`."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)
