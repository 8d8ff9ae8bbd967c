"""The wire protocols the server speaks, their request and response types, and how each maps to RankRequests.

    KServe v1   POST /v1/models/NAME:predict   {"instances": [RankRequest, ...]}  ->  {"predictions": [RankResponse]}
    KServe v2   POST /v2/models/NAME/infer     one BYTES input, each element a RankRequest JSON  ->  one BYTES output
    Rerank      POST /v1/rerank, /v2/rerank, /openai/v1/rerank   the shape Cohere, Jina, vLLM and LiteLLM share:
                {model, query, documents: [str | {text}], top_n, return_documents}
                ->  {id, model, results: [{index, relevance_score, document?}], usage}
    Chat        POST /openai/v1/chat/completions   OpenAI's chat completions, answered by the LLM the router picks

The rerank `relevance_score` of the document at final rank r (0 = first) among n is (n - r) / n: the survivor of
the elimination scores 1, the first eliminated 1/n. It is monotone in the model's ranking and says nothing more:
the elimination method ranks, it does not score.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from kserve.errors import InvalidInput
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from iranker.schema import (
    MAX_CANDIDATES,
    MAX_QUERY_CHARS,
    MAX_TASK_CHARS,
    MAX_TEXT_CHARS,
    PREFERENCES,
    Candidate,
    RankRequest,
    RankResponse,
    describe_error,
)
from serving.policy import ServeConfig

PREFERENCE_HEADER = "x-iranker-preference"
TASK_HEADER = "x-iranker-task"
ROUTE_HEADER = "x-iranker-route"


MAX_JSON_DEPTH = 64  # objects and arrays inside one another: a RankRequest needs 5


class JSONProblem(ValueError):
    """JSON text that must be refused; the message says where and why."""


class MalformedJSON(JSONProblem):
    """Text that is not JSON at all (a syntax error)."""


def json_depth_problem(text: str | bytes, at: str = "body") -> str | None:
    """JSON nested deeper than MAX_JSON_DEPTH (counted outside strings, before a parser recurses into it: Python's
    would hit its recursion limit)."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return f"{at}: JSON nested more than {MAX_JSON_DEPTH} levels deep"
        elif byte in (0x7D, 0x5D):
            depth -= 1
    return None


def strict_json(text: str | bytes, at: str = "body") -> Any:
    """Parse JSON the way every route must, or raise JSONProblem naming `at`: UTF-8 without a byte order mark,
    nested at most MAX_JSON_DEPTH deep, no NaN / Infinity and no number past the float range (not JSON), integers
    of at most 4,300 digits (Python's limit), no lone UTF-16 surrogate in a string (no encoding carries it)."""
    if isinstance(text, bytes):
        if text.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")) or b"\x00" in text[:4]:
            raise JSONProblem(f"{at}: JSON must be UTF-8 text without a byte order mark")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JSONProblem(f"{at}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if text.startswith("\ufeff"):
        raise JSONProblem(f"{at}: JSON must not start with a byte order mark")
    problem = json_depth_problem(text, at)
    if problem:
        raise JSONProblem(problem)

    def constant(name: str):
        raise JSONProblem(f"{at}: {name} is not a JSON number")

    def number(literal: str) -> float:
        value = float(literal)
        if value in (float("inf"), float("-inf")):
            raise JSONProblem(f"{at}: the number {literal[:40]} is out of the range of a float")
        return value

    try:
        parsed = json.loads(text, parse_constant=constant, parse_float=number)
    except JSONProblem:
        raise
    except json.JSONDecodeError as e:
        raise MalformedJSON(f"{at}: not valid JSON ({e})") from None
    except (ValueError, RecursionError) as e:  # an integer past Python's digit limit
        raise JSONProblem(f"{at}: not valid JSON ({str(e).splitlines()[0][:120]})") from None
    stack = [(parsed, at)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise JSONProblem(f"{where}: holds a lone UTF-16 surrogate (such as \\ud800), which is not "
                                  "text") from None
        elif isinstance(item, dict):
            stack += [(v, f"{where}.{k}") for k, v in item.items()]
            stack += [(k, f"{where} (a key)") for k in item]
        elif isinstance(item, list):
            stack += [(v, f"{where}[{i}]") for i, v in enumerate(item)]
    return parsed


def _json(item: Any, at: str) -> Any:
    if isinstance(item, (bytes, str)):
        try:
            return strict_json(item, at)
        except JSONProblem as e:
            raise InvalidInput(str(e)) from None
    return item


def _object(raw: Any, at: str, what: str) -> dict:
    """A JSON object (given parsed, or as JSON text), or a 400 naming where and what was expected."""
    raw = _json(raw, at)
    if not isinstance(raw, dict):
        raise InvalidInput(f"{at}: expected a JSON object ({what}), got {type(raw).__name__}")
    return raw


def _validate(cls, obj: dict, prefix: str = ""):
    try:
        return cls.model_validate(obj)
    except ValidationError as e:
        raise InvalidInput(prefix + describe_error(e)) from None


def parse_rank_requests(items: Sequence[Any], where: str, config: ServeConfig) -> list[RankRequest]:
    """A list of RankRequests (objects or JSON strings) from a v1 or v2 body; errors name the element and field."""
    if not isinstance(items, (list, tuple)) or not items:
        raise InvalidInput(f"{where}: expected a non-empty list of RankRequests")
    if len(items) > config.max_instances:
        raise InvalidInput(f"{where}: at most {config.max_instances} requests per call, got {len(items)}")
    out = []
    for k, item in enumerate(items):
        at = f"{where}[{k}]"
        item = _object(item, at, "a RankRequest")
        candidates = item.get("candidates")
        if isinstance(candidates, list) and len(candidates) > config.max_candidates:
            raise InvalidInput(f"{at}.candidates: at most {config.max_candidates} candidates")
        out.append(_validate(RankRequest, item, f"{at}: "))
    return out


def v1_requests(payload: Any, config: ServeConfig) -> list[RankRequest]:
    payload = _json(payload, "body")
    if not isinstance(payload, dict):
        raise InvalidInput(f"body: expected a JSON object, got {type(payload).__name__}")
    if "instances" not in payload:
        raise InvalidInput("instances: required (v1 body {\"instances\": [RankRequest, ...]})")
    return parse_rank_requests(payload["instances"], "instances", config)


def v2_requests(payload, config: ServeConfig) -> list[RankRequest]:
    if len(payload.inputs) != 1 or payload.inputs[0].datatype != "BYTES":
        raise InvalidInput("inputs: expected one BYTES input whose elements are RankRequest JSON")
    return parse_rank_requests(list(payload.inputs[0].data or []), f"inputs[{payload.inputs[0].name}]", config)


def v2_response(name: str, request_id: str | None, responses: Sequence[RankResponse]):
    from kserve.protocol.infer_type import InferOutput, InferResponse

    dumped = [json.dumps(r.model_dump(exclude_none=True)) for r in responses]
    out = InferOutput(name="response", shape=[len(dumped)], datatype="BYTES", data=dumped)
    return InferResponse(model_name=name, infer_outputs=[out], response_id=request_id or f"iranker-{time.time_ns()}")


# ------------------------------------------------------------------------------------------------------ rerank

class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields of their own (rank_fields, max_tokens_per_doc)


class RerankDocument(_Lenient):
    text: str = Field(max_length=MAX_TEXT_CHARS)


DocumentText = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class RerankRequest(_Lenient):
    model: str | None = None
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    documents: list[DocumentText | RerankDocument] = Field(min_length=1, max_length=MAX_CANDIDATES)
    top_n: StrictInt | None = Field(default=None, ge=1)
    return_documents: StrictBool = False


def rerank_request(body: Any, config: ServeConfig) -> RerankRequest:
    body = _object(body, "body", "a rerank request")
    docs = body.get("documents")
    if isinstance(docs, list) and len(docs) > config.max_candidates:
        raise InvalidInput(f"documents: at most {config.max_candidates} documents, got {len(docs)}")
    return _validate(RerankRequest, body)


def rerank_texts(req: RerankRequest) -> list[str]:
    return [d if isinstance(d, str) else d.text for d in req.documents]


def rerank_to_rank(req: RerankRequest) -> RankRequest:
    """A rerank call is a passage-scenario ranking of its documents; ids are the documents' indices."""
    try:
        cands = [Candidate(id=str(i), text=t) for i, t in enumerate(rerank_texts(req))]
        return RankRequest(scenario="passage", query=req.query, candidates=cands)
    except ValidationError as e:
        raise InvalidInput(describe_error(e)) from None


def rerank_response(req: RerankRequest, resp: RankResponse, model: str, request_id: str | None = None) -> dict:
    texts = rerank_texts(req)
    n = len(texts)
    results = []
    for rank, cid in enumerate(resp.ranking[: req.top_n or None]):
        i = int(cid)
        row: dict[str, Any] = {"index": i, "relevance_score": (n - rank) / n}
        if req.return_documents:
            row["document"] = {"text": texts[i]}
        results.append(row)
    tokens = resp.usage.prompt_tokens + resp.usage.completion_tokens
    return {"id": request_id or f"rerank-{uuid.uuid4().hex}", "model": model, "results": results,
            "usage": {"total_tokens": tokens, "prompt_tokens": resp.usage.prompt_tokens},
            "meta": {"billed_units": {"search_units": 1}}}


# -------------------------------------------------------------------------------------------- chat (routing)

class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """The fields the router reads; every other field goes to the chosen LLM unchanged."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    preference: Literal["performance", "balance", "cost"] | None = None
    task: str | None = Field(default=None, min_length=1, max_length=MAX_TASK_CHARS,
                             description="the query's task family (also the x-iranker-task header)")


def chat_request(body: Any) -> ChatRequest:
    return _validate(ChatRequest, _object(body, "body", "a chat completion request"))


def last_user_text(req: ChatRequest) -> str:
    """The text of the conversation's last user message (text parts joined), which the router ranks LLMs for."""
    for msg in reversed(req.messages):
        if msg.role != "user":
            continue
        if isinstance(msg.content, str):
            text = msg.content
        else:
            text = " ".join(str(p.get("text", "")) for p in msg.content or [] if p.get("type") == "text")
        if text.strip():
            return text.strip()[-MAX_QUERY_CHARS:]
    raise InvalidInput("messages: the router needs a user message with text to choose an LLM for")


def task_of(req: ChatRequest, headers: dict[str, str]) -> str | None:
    """The request's task family: its task field, else the x-iranker-task header, else none."""
    value = req.task or headers.get(TASK_HEADER) or None
    if value is not None and not (value.strip() and len(value) <= MAX_TASK_CHARS):
        raise InvalidInput(f"task ({TASK_HEADER} header or the request's task field): a task family name of at most "
                           f"{MAX_TASK_CHARS} characters, got {value[:40]!r}")
    return value


def preference_of(req: ChatRequest, headers: dict[str, str], default: str) -> str:
    value = req.preference or headers.get(PREFERENCE_HEADER) or default
    if value not in PREFERENCES:
        raise InvalidInput(f"preference ({PREFERENCE_HEADER} header or the request's preference field): expected "
                           f"one of {', '.join(PREFERENCES)}, got {value!r}")
    return value
