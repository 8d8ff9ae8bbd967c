"""The KServe model server `iranker`: RankRequests in over KServe's v1 and v2 protocols, RankResponses out.

    v1  POST /v1/models/iranker:predict   {"instances": [RankRequest, ...]}  ->  {"predictions": [RankResponse, ...]}
    v2  POST /v2/models/iranker/infer     one BYTES input, each element a RankRequest JSON  ->  one BYTES output

A request with a `user_id` and no `history` gets the user's history from the Feast online store. Requests are
queued and the elimination steps of concurrent requests are ranked together (`Batcher`): a bounded queue (a full
queue answers 503 with Retry-After), a bounded wait to fill a batch, and a per-request deadline (504).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hmac
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import kserve
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from pydantic import ValidationError

from iranker.schema import MAX_CANDIDATES, RankRequest, RankResponse, describe_error
from serving import metrics as m

logger = logging.getLogger("iranker.serving")


@dataclasses.dataclass
class ServeConfig:
    max_queue: int = 64          # requests waiting to be ranked; beyond it: 503 + Retry-After
    max_batch: int = 16          # requests ranked together (their elimination steps share forward passes)
    max_wait_ms: float = 5.0     # how long the first request of a batch waits for company
    deadline_s: float = 60.0     # per request, queueing included; beyond it: 504
    max_instances: int = 32      # requests in one HTTP call
    max_candidates: int = MAX_CANDIDATES
    max_body_bytes: int = 4_000_000
    token: str | None = None     # bearer token; None: no auth (behind a gateway that does it)
    retry_after_s: int = 1


class Overloaded(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"server overloaded: the ranking queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    pass


class Unauthorized(Exception):
    pass


@dataclasses.dataclass
class _Item:
    request: RankRequest
    future: asyncio.Future
    deadline: float


class Batcher:
    """A bounded queue in front of one ranking worker. While the worker ranks one batch, new requests queue up and
    form the next one, so the model sees up to `max_batch` requests at a time under load."""

    def __init__(self, rank: Callable[[list[RankRequest]], list[RankResponse]], config: ServeConfig):
        self.rank = rank
        self.config = config
        self.queue: asyncio.Queue[_Item] | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="iranker-rank")
        self.worker: asyncio.Task | None = None

    def _start(self) -> None:
        if self.worker is None or self.worker.done():
            self.queue = asyncio.Queue()
            self.worker = asyncio.get_running_loop().create_task(self._work())

    async def submit(self, requests: Sequence[RankRequest], deadline_s: float | None = None) -> list[RankResponse]:
        self._start()
        assert self.queue is not None
        if self.queue.qsize() + len(requests) > self.config.max_queue:
            raise Overloaded(self.config.retry_after_s)
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + (deadline_s or self.config.deadline_s)
        items = [_Item(r, loop.create_future(), deadline) for r in requests]
        for item in items:
            self.queue.put_nowait(item)
        m.QUEUE_DEPTH.set(self.queue.qsize())
        try:
            return list(await asyncio.wait_for(asyncio.gather(*(i.future for i in items)),
                                               timeout=max(0.0, deadline - time.monotonic())))
        except asyncio.TimeoutError:
            for i in items:
                i.future.cancel()
            raise DeadlineExceeded(f"deadline of {deadline_s or self.config.deadline_s:g} s exceeded") from None

    async def _work(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            wait_until = time.monotonic() + self.config.max_wait_ms / 1000
            while len(batch) < self.config.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = wait_until - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            m.QUEUE_DEPTH.set(self.queue.qsize())
            now = time.monotonic()
            live = [i for i in batch if not i.future.done() and i.deadline > now]
            if not live:
                continue
            m.BATCH_SIZE.observe(len(live))
            try:
                responses = await loop.run_in_executor(self.executor, self.rank, [i.request for i in live])
                if len(responses) != len(live):
                    raise RuntimeError(f"ranking returned {len(responses)} responses for {len(live)} requests")
            except Exception as e:  # a failed batch fails its requests, not the worker
                logger.exception("ranking failed")
                for i in live:
                    if not i.future.done():
                        i.future.set_exception(e)
                continue
            for i, r in zip(live, responses, strict=True):
                if not i.future.done():
                    i.future.set_result(r)


class IRankerModel(kserve.Model):
    """The ranking service. `backend`: 'transformers' (in process, default), 'vllm' (in process, GPU) or 'openai' (a
    remote OpenAI-compatible predictor such as KServe's huggingfaceserver with vLLM; then this server is the
    transformer in front of it)."""

    def __init__(self, name: str = "iranker", model: str | None = None, backend: str = "transformers",
                 backend_options: dict[str, Any] | None = None, feature_repo: str | Path | None = None,
                 config: ServeConfig | None = None, ranker_options: dict[str, Any] | None = None):
        super().__init__(name)
        self.model_name = model
        self.backend_kind = backend
        self.backend_options = backend_options or {}
        self.feature_repo = feature_repo
        self.config = config or ServeConfig()
        self.ranker_options = ranker_options or {}
        self.backend = None
        self.features = None
        self.batcher: Batcher | None = None

    def load(self) -> bool:
        from dataclasses import replace

        from iranker.ranker import open_model, rank_requests

        self.backend, ranker_config = open_model(self.model_name, self.backend_kind, dict(self.ranker_options),
                                                 **self.backend_options)
        if self.feature_repo is not None:
            from iranker.features import UserFeatures

            self.features = UserFeatures(self.feature_repo)
            try:  # an unapplied or unmaterialized repository: serve without lookups rather than fail requests
                self.features.context(["iranker-readiness-probe"])
            except Exception as e:  # noqa: BLE001 - Feast raises many types here
                logger.warning("iranker: Feast lookups off: %s is not usable (%s); run `iranker features apply` "
                               "and `materialize`", self.feature_repo, str(e).splitlines()[0] if str(e) else e)
                self.features = None
        config = replace(ranker_config, batch_size=self.config.max_batch)
        backend = self.backend
        self.batcher = Batcher(lambda reqs: rank_requests(backend, reqs, config), self.config)
        self.ready = True
        logger.info("iranker: model %s loaded (%s backend); Feast: %s", self.backend.name, self.backend_kind,
                    self.feature_repo or "off")
        return self.ready

    # ------------------------------------------------------------------------------------------------ requests

    def _authorize(self, headers: dict[str, str] | None) -> None:
        if not self.config.token:
            return
        given = {k.lower(): v for k, v in (headers or {}).items()}.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.config.token}".encode()):
            raise Unauthorized("missing or wrong bearer token (header Authorization: Bearer TOKEN)")

    def _parse(self, items: Sequence[Any], where: str) -> list[RankRequest]:
        if not isinstance(items, (list, tuple)) or not items:
            raise InvalidInput(f"{where}: expected a non-empty list of RankRequests")
        if len(items) > self.config.max_instances:
            raise InvalidInput(f"{where}: at most {self.config.max_instances} requests per call, got {len(items)}")
        out = []
        for k, item in enumerate(items):
            at = f"{where}[{k}]"
            if isinstance(item, (bytes, str)):
                try:
                    item = json.loads(item)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise InvalidInput(f"{at}: not valid JSON ({e})") from None
            if not isinstance(item, dict):
                raise InvalidInput(f"{at}: expected a JSON object (a RankRequest), got {type(item).__name__}")
            candidates = item.get("candidates")
            if isinstance(candidates, list) and len(candidates) > self.config.max_candidates:
                raise InvalidInput(f"{at}.candidates: at most {self.config.max_candidates} candidates")
            try:
                req = RankRequest.model_validate(item)
            except ValidationError as e:
                raise InvalidInput(f"{at}: {describe_error(e)}") from None
            out.append(self._with_history(req, at))
        return out

    def _with_history(self, req: RankRequest, at: str) -> RankRequest:
        if req.scenario != "recommendation" or req.history or not req.user_id:
            return req
        if self.features is None:
            raise InvalidInput(f"{at}.history: required (user features are not configured on this server, so "
                               f"user_id {req.user_id!r} cannot be looked up)")
        history = self.features.history(req.user_id)
        if not history:
            raise InvalidInput(f"{at}.user_id: unknown user {req.user_id!r} and no history given")
        m.FEAST_LOOKUPS.inc()
        return req.model_copy(update={"history": history})

    async def _rank(self, requests: list[RankRequest]) -> list[RankResponse]:
        assert self.batcher is not None
        t0 = time.perf_counter()
        try:
            responses = await self.batcher.submit(requests)
        except Overloaded:
            _count(requests, "overloaded")
            raise
        except DeadlineExceeded:
            _count(requests, "deadline")
            raise
        elapsed = time.perf_counter() - t0
        for req, resp in zip(requests, responses, strict=True):
            m.REQUESTS.labels(req.scenario, "ok").inc()
            m.LATENCY.labels(req.scenario).observe(elapsed)
            m.MODEL_CALLS.observe(resp.usage.llm_calls)
            m.PARSE_FAILURES.labels(req.scenario).inc(resp.parse_failures)
        return responses

    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> dict | InferResponse:
        try:
            self._authorize(headers)
        except Unauthorized:
            m.REQUESTS.labels("unknown", "unauthorized").inc()
            raise
        try:
            if isinstance(payload, (bytes, str)):  # a body sent without a JSON content type
                try:
                    payload = json.loads(payload)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise InvalidInput(f"body: not valid JSON ({e})") from None
            if isinstance(payload, InferRequest):
                if len(payload.inputs) != 1 or payload.inputs[0].datatype != "BYTES":
                    raise InvalidInput("inputs: expected one BYTES input whose elements are RankRequest JSON")
                requests = self._parse(list(payload.inputs[0].data or []), f"inputs[{payload.inputs[0].name}]")
            elif isinstance(payload, dict):
                if "instances" not in payload:
                    raise InvalidInput("instances: required (v1 body {\"instances\": [RankRequest, ...]})")
                requests = self._parse(payload["instances"], "instances")
            else:
                raise InvalidInput(f"body: expected a JSON object, got {type(payload).__name__}")
        except InvalidInput:
            m.REQUESTS.labels("unknown", "bad_request").inc()
            raise
        responses = await self._rank(requests)
        dumped = [r.model_dump(exclude_none=True) for r in responses]
        if isinstance(payload, InferRequest):
            out = InferOutput(name="response", shape=[len(dumped)], datatype="BYTES",
                              data=[json.dumps(d) for d in dumped])
            return InferResponse(model_name=self.name, infer_outputs=[out],
                                 response_id=payload.id or f"iranker-{time.time_ns()}")
        return {"predictions": dumped}


def _count(requests: Sequence[RankRequest], status: str) -> None:
    for r in requests:
        m.REQUESTS.labels(r.scenario, status).inc()


# ------------------------------------------------------------------------------------------ HTTP error mapping

def install_handlers(app) -> None:
    """Map the service's errors to HTTP answers on KServe's FastAPI app: 503 + Retry-After, 504, 401, and a 413 for
    oversize bodies (checked before KServe parses them)."""
    from fastapi.responses import JSONResponse

    async def overloaded(_, exc: Overloaded):
        return JSONResponse(status_code=503, content={"error": str(exc)},
                            headers={"Retry-After": str(exc.retry_after)})

    async def deadline(_, exc: DeadlineExceeded):
        return JSONResponse(status_code=504, content={"error": str(exc)})

    async def unauthorized(_, exc: Unauthorized):
        return JSONResponse(status_code=401, content={"error": str(exc)}, headers={"WWW-Authenticate": "Bearer"})

    app.add_exception_handler(Overloaded, overloaded)
    app.add_exception_handler(DeadlineExceeded, deadline)
    app.add_exception_handler(Unauthorized, unauthorized)


class BodyLimit:
    """ASGI middleware: refuse bodies above `max_bytes` with 413 before they are read."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                from starlette.responses import JSONResponse

                response = JSONResponse(status_code=413, content={
                    "error": f"body: at most {self.max_bytes} bytes, got {int(length)}"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def serve(model: IRankerModel, http_port: int = 8080) -> None:
    """Load the model, then start KServe's model server with it (blocks): readiness comes only after loading."""
    from kserve import ModelServer
    from kserve.model_server import app

    model.load()
    install_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=model.config.max_body_bytes)
    ModelServer(http_port=http_port, enable_grpc=False).start([model])
