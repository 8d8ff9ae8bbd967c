"""The KServe model `iranker`: loads the ranking model, and answers each protocol (`serving.protocol`) by ranking
through the batching queue (`serving.batching`) under the server's policy (`serving.policy`).

A request with a `user_id` and no `history` gets the user's history from the Feast online store (in a worker
thread, so a slow lookup does not hold up the event loop). With a routes file, the model is also an LLM router
(`serving.router`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kserve
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse

from iranker.schema import RankRequest, RankResponse
from serving import metrics as m
from serving import protocol
from serving.batching import Batcher
from serving.feedback import Call, Shown
from serving.policy import DeadlineExceeded, Overloaded, ServeConfig, Unauthorized, authorized, check_cost, check_policy

__all__ = ["IRankerModel", "ServeConfig"]

logger = logging.getLogger("iranker.serving")


class IRankerModel(kserve.Model):
    """The ranking service. `backend`: 'transformers' (in process, default), 'vllm' (in process, GPU) or 'openai' (a
    remote OpenAI-compatible predictor such as KServe's huggingfaceserver with vLLM; then this server is the
    transformer in front of it). `routes`: a routes file, to answer chat completions as an LLM router."""

    def __init__(self, name: str = "iranker", model: str | None = None, backend: str = "transformers",
                 backend_options: dict[str, Any] | None = None, feature_repo: str | Path | None = None,
                 config: ServeConfig | None = None, ranker_options: dict[str, Any] | None = None,
                 routes: str | Path | None = None, thoughts: str | None = None,
                 templates_k: int | None = None):
        super().__init__(name)
        self.thoughts, self.templates_k = thoughts, templates_k  # thought templates (iranker.thoughts)
        self.model_name = model
        self.backend_kind = backend
        self.backend_options = backend_options or {}
        self.feature_repo = feature_repo
        self.config = config or ServeConfig()
        self.config.token_limits_for(backend)
        self.ranker_options = ranker_options or {}
        self.routes_file = routes
        self.router = None
        self.backend = None
        self.features = None
        self.candidate_features = None  # the candidates' first-stage signals from Feast's online store
        self.batcher: Batcher | None = None
        self.ranker_config = None  # what the loaded model ranks under (load())
        self.event_log = None  # serving.eventlog.EventLog: the inference log (iranker serve --log-url)
        self.log_calls = True  # post the calls themselves too (off where KServe's InferenceService logger does)
        self.shown = Shown()  # what recent calls showed, for POST /v1/feedback

    def get_input_types(self) -> list[dict]:
        """The v2 input generic clients (tritonclient, the v2 metadata route) read: one BYTES tensor whose elements
        are RankRequest JSON."""
        return [{"name": "request", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        """The v2 output: one BYTES tensor whose elements are RankResponse JSON, in request order."""
        return [{"name": "response", "datatype": "BYTES", "shape": [-1]}]

    def load(self) -> bool:
        from dataclasses import replace

        from iranker.ranker import open_model, rank_requests

        self.backend, ranker_config = open_model(self.model_name, self.backend_kind, dict(self.ranker_options),
                                                 thoughts=self.thoughts, templates_k=self.templates_k,
                                                 **self.backend_options)
        if self.feature_repo is not None:
            from iranker.features import CandidateFeatureStore, UserFeatures, served_datasets

            self.features = UserFeatures(self.feature_repo)
            try:  # an unapplied or unmaterialized repository: serve without lookups rather than fail requests
                self.features.context(["iranker-readiness-probe"])
                datasets = served_datasets(self.feature_repo)
                self.candidate_features = CandidateFeatureStore(self.feature_repo, datasets)
                for scenario in datasets:
                    self.candidate_features.lookup(scenario, ["iranker-readiness-probe"])
            except Exception as e:  # noqa: BLE001 - Feast raises many types here
                logger.warning("iranker: Feast lookups off: %s is not usable (%s); run `iranker features apply` "
                               "and `materialize`", self.feature_repo, str(e).splitlines()[0] if str(e) else e)
                self.features = self.candidate_features = None
        if self.routes_file is not None:
            from serving.router import Router, load_routes

            self.router = Router(load_routes(self.routes_file))
        config = replace(ranker_config, batch_size=self.config.max_batch)
        self.config.window, self.config.stride = config.window, config.stride
        self.ranker_config = config
        backend = self.backend
        self.batcher = Batcher(lambda reqs, alive: rank_requests(backend, reqs, config, alive=alive), self.config)
        self.ready = True
        logger.info("iranker: model %s loaded (%s backend); Feast: %s; router: %s", self.backend.name,
                    self.backend_kind, self.feature_repo or "off", self.routes_file or "off")
        return self.ready

    @property
    def engine(self) -> bool:  # KServe awaits start_engine() on its event loop for a model with an engine
        return self.event_log is not None

    @engine.setter
    def engine(self, value: bool) -> None:  # BaseKServeModel.__init__ sets False; whether to start is the log's say
        pass

    async def start_engine(self) -> None:
        """Called by KServe's server once its event loop runs: the inference log starts sending, and re-sends what an
        earlier run left in the spool, without waiting for the first call."""
        if self.event_log is not None:
            self.event_log.start()

    def stop(self) -> None:
        """Called by KServe's server on shutdown (SIGTERM): what the inference log has not delivered is spooled."""
        if self.event_log is not None:
            n = self.event_log.spool_pending()
            if n:
                logger.info("iranker: %d inference-log events spooled at shutdown", n)

    # ------------------------------------------------------------------------------------------------ ranking

    async def _admit(self, requests: list[RankRequest], where: str) -> list[RankRequest]:
        """Policy checks, then histories from Feast: what a request must pass before it may join a batch."""
        from iranker.ranker import fast_alphabet

        for k, req in enumerate(requests):
            check_policy(req, self.config, f"{where}[{k}]")
            if req.options.method == "iterative" and not req.options.reasoning:  # the tokenizer's labels suffice
                try:
                    fast_alphabet(self.backend, min(len(req.candidates), self.config.window))
                except ValueError as e:
                    raise InvalidInput(f"{where}[{k}].candidates: {e}") from None
        return [await self._with_candidate_features(await self._with_history(req, f"{where}[{k}]"))
                for k, req in enumerate(requests)]

    async def _costs(self, requests: list[RankRequest], where: str) -> list[int]:
        """Each request's estimated prompt tokens (tokenised off the event loop); over the cap: 400."""
        from iranker.ranker import estimate_cost

        def cost(k: int, req: RankRequest) -> int:
            try:
                return estimate_cost(self.backend, self.ranker_config, req).tokens
            except ValueError as e:  # the request's content (the ranker would refuse it too)
                raise InvalidInput(f"{where}[{k}]: {e}") from None
            except Exception as e:  # noqa: BLE001 - an estimate is no reason to fail a request: rank it uncapped
                logger.warning("iranker: no cost estimate for %s[%d] (%s); admitted without one", where, k, e)
                return 0

        costs = await asyncio.to_thread(lambda: [cost(k, r) for k, r in enumerate(requests)])
        for k, (req, tokens) in enumerate(zip(requests, costs, strict=True)):
            check_cost(tokens, len(req.candidates), self.config, f"{where}[{k}]")
        return costs

    async def _with_candidate_features(self, req: RankRequest) -> RankRequest:
        """Candidates without features get those the online store holds for their ids (what training showed)."""
        missing = [c.id for c in req.candidates if c.features is None]
        if self.candidate_features is None or not missing:
            return req
        found = dict(zip(missing, await asyncio.to_thread(self.candidate_features.lookup, req.scenario, missing,
                                                                     task=req.task),
                         strict=True))
        if not any(found.values()):
            return req
        m.FEAST_LOOKUPS.inc()
        return req.model_copy(update={"candidates": [c if c.features is not None or found[c.id] is None else
                                                     c.model_copy(update={"features": found[c.id]})
                                                     for c in req.candidates]})

    async def _with_history(self, req: RankRequest, at: str) -> RankRequest:
        if req.scenario != "recommendation" or req.history or not req.user_id:
            return req
        if self.features is None:
            raise InvalidInput(f"{at}.history: required (user features are not configured on this server, so "
                               f"user_id {req.user_id!r} cannot be looked up)")
        history = await asyncio.to_thread(self.features.history, req.user_id)
        if not history:
            raise InvalidInput(f"{at}.user_id: unknown user {req.user_id!r} and no history given")
        m.FEAST_LOOKUPS.inc()
        return req.model_copy(update={"history": history})

    async def rank(self, requests: list[RankRequest], where: str = "instances") -> list[RankResponse]:
        """Admit, queue, rank and count `requests` (one HTTP call's worth)."""
        assert self.batcher is not None
        try:
            requests = await self._admit(requests, where)
            costs = await self._costs(requests, where)
        except InvalidInput:
            _count(requests, "bad_request")
            raise
        t0 = time.perf_counter()
        try:
            responses = await self.batcher.submit(requests, costs=costs)
        except Overloaded:
            _count(requests, "overloaded")
            raise
        except DeadlineExceeded:
            _count(requests, "deadline")
            raise
        except asyncio.CancelledError:  # the client went away (serving/routes.py: Guard)
            _count(requests, "client_left")
            raise
        except InvalidInput:
            _count(requests, "bad_request")
            raise
        elapsed = time.perf_counter() - t0
        for req, resp in zip(requests, responses, strict=True):
            m.REQUESTS.labels(req.scenario, "ok").inc()
            m.LATENCY.labels(req.scenario).observe(elapsed)
            m.MODEL_CALLS.observe(resp.usage.llm_calls)
            m.PARSE_FAILURES.labels(req.scenario).inc(resp.parse_failures)
        return responses

    def _authorize(self, headers: dict[str, str] | None) -> None:
        """Also checked by the HTTP guard before the body is read; here for callers that bypass it."""
        given = {k.lower(): v for k, v in (headers or {}).items()}.get("authorization")
        if not authorized(self.config, given):
            m.REQUESTS.labels("unknown", "unauthorized").inc()
            raise Unauthorized("missing or wrong bearer token (header Authorization: Bearer TOKEN)")

    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> dict | InferResponse:
        """KServe v1 and v2."""
        self._authorize(headers)
        try:
            if isinstance(payload, InferRequest):
                requests = protocol.v2_requests(payload, self.config)
            else:
                requests = protocol.v1_requests(payload, self.config)
        except InvalidInput:
            m.REQUESTS.labels("unknown", "bad_request").inc()
            raise
        where = f"inputs[{payload.inputs[0].name}]" if isinstance(payload, InferRequest) else "instances"
        responses = await self.rank(requests, where)
        rid = {k.lower(): v for k, v in (headers or {}).items()}.get("x-request-id")
        if rid:
            users = tuple((req.user_id, {c.id: c.text for c in req.candidates})
                          if req.scenario == "recommendation" and req.user_id else None for req in requests)
            self.shown.remember(rid, Call("v2" if isinstance(payload, InferRequest) else "v1",
                                          tuple(tuple(r.ranking) for r in responses), users=users))
        if isinstance(payload, InferRequest):
            return protocol.v2_response(self.name, payload.id or rid, responses)
        out = {"predictions": [r.model_dump(exclude_none=True) for r in responses]}
        return {"id": rid, **out} if rid else out

    # ----------------------------------------------------------------------------------------- rerank, chat

    async def rerank(self, body: Any, request_id: str | None = None) -> dict:
        try:
            req = protocol.rerank_request(body, self.config)
            if req.model is not None and req.model != self.name:
                raise InvalidInput(f"model: this server reranks with model {self.name!r}, got {req.model!r}")
            rank_req = protocol.rerank_to_rank(req)
        except InvalidInput:
            m.REQUESTS.labels("passage", "bad_request").inc()
            raise
        (resp,) = await self.rank([rank_req], "documents")
        answer = protocol.rerank_response(req, resp, self.name, request_id)
        if request_id:
            self.shown.remember(request_id, Call("rerank", (tuple(str(r["index"]) for r in answer["results"]),)))
        return answer

    async def route(self, body: Any, headers: dict[str, str]) -> Routed:
        """Rank the routes for the chat request, then forward it down the ranking (the answer's stream, if any,
        still open). When every LLM fails, the outcome is reported (`route_done`) and NoRoute raised."""
        from pydantic import ValidationError

        from iranker.schema import describe_error
        from serving.router import NoRoute, routing_request

        started = time.perf_counter()
        if self.router is None:
            raise InvalidInput("model: this server has no LLM routes (start it with --routes FILE to route chat "
                               "completions)")
        req = protocol.chat_request(body)
        if req.model != self.router.routes.router:
            raise InvalidInput(f"model: this server routes chat completions for model "
                               f"{self.router.routes.router!r}, got {req.model!r}")
        preference = protocol.preference_of(req, headers, self.router.routes.default_preference)
        try:
            rank_req = routing_request(self.router.routes, protocol.last_user_text(req), preference,
                                       protocol.task_of(req, headers))
        except ValidationError as e:  # the query the routing request was built from
            raise InvalidInput(f"messages: {describe_error(e)}") from None
        (resp,) = await self.rank([rank_req], "messages")
        forward = req.model_dump(exclude_none=True, exclude={"preference", "task"})
        routed = Routed(headers.get("x-request-id", ""), rank_req, resp.ranking, started, req.stream)
        try:
            routed.upstream, routed.failed = await self.router.forward(forward, resp.ranking, req.stream)
        except NoRoute as e:
            routed.failed = e.tried
            self.route_done(routed)
            raise
        m.ROUTES.labels(routed.upstream.route.name, preference).inc()
        if routed.failed:
            m.ROUTE_FALLBACKS.inc(len(routed.failed))
        routed.answered_s = time.perf_counter() - started
        self.shown.remember(routed.rid, Call("chat", (tuple(resp.ranking),), routed.upstream.route.name))
        return routed

    def route_done(self, routed: Routed, body: bytes | None = None) -> None:
        """Report a routed call's outcome to the inference log (an org.iranker.route.outcome event): the routing
        request, the ranking, the route that answered and those that failed before it, the upstream status,
        latency, token use (from the answer's `usage`, streamed or not) and so cost."""
        if self.event_log is None or not routed.rid:
            return
        from iranker.data.feedback import ROUTE_OUTCOME_TYPE

        up = routed.upstream
        usage = _usage(body) if body else None
        route = up.route if up is not None else None
        tokens = (usage or {}).get("total_tokens")
        data = {"request": routed.request.model_dump(exclude_none=True, include={"scenario", "query", "preference",
                                                                                 "task", "candidates"}),
                "ranking": routed.ranking, "route": route.name if route else None,
                "failed": [f.rpartition(": ")[0] for f in routed.failed], "failures": routed.failed,
                "status": up.status if up is not None else 502, "stream": routed.stream,
                "latency_ms": round(1000 * (routed.answered_s or time.perf_counter() - routed.started), 1),
                "total_ms": round(1000 * (time.perf_counter() - routed.started), 1), "usage": usage,
                "cost_usd": (tokens * route.cost_per_million_tokens / 1e6
                             if route is not None and isinstance(tokens, int | float) else None)}
        self.event_log.emit_json(routed.rid, ROUTE_OUTCOME_TYPE, data)

    # ------------------------------------------------------------------------------------------------ feedback

    async def feedback(self, body: Any) -> dict:
        """POST /v1/feedback (serving.feedback): check the outcome against the call it names, log it, and push an
        item a known user chose to their Feast history."""
        from iranker.data.feedback import FEEDBACK_TYPE
        from serving import feedback

        assert self.event_log is not None, "the feedback route is published only with an inference log"
        fb, call = feedback.check(body, self.shown)
        self.event_log.emit_json(fb.request_id, FEEDBACK_TYPE, feedback.event_data(fb, call))
        m.FEEDBACK.labels(call.kind).inc()
        answer = {"request_id": fb.request_id, "accepted": True}
        user = call.users[fb.instance] if fb.instance < len(call.users) else None
        if user is not None and fb.chosen and self.features is not None:
            user_id, texts = user
            try:
                answer["history_updated"] = all([await asyncio.to_thread(self.features.add_chosen, user_id, cid,
                                                                         texts.get(cid, cid))
                                                 for cid in map(str, fb.chosen)])
            except Exception as e:  # noqa: BLE001 - the outcome is logged; a Feast outage must not lose it
                logger.warning("iranker: could not push %s's chosen item to Feast: %s", user_id, e)
                answer["history_updated"] = False
        return answer


class Routed:
    """A routed chat call in flight: the routing request, its ranking, the upstream that answered (or None), the
    attempts that failed before it, and when it started."""

    def __init__(self, rid: str, request: RankRequest, ranking: list[str], started: float, stream: bool):
        self.rid, self.request, self.ranking, self.started, self.stream = rid, request, ranking, started, stream
        self.upstream = None
        self.failed: list[str] = []
        self.answered_s: float | None = None


def _usage(body: bytes) -> dict | None:
    """The `usage` object of an OpenAI answer: the JSON body's, or a stream's last chunk that carries one."""
    import json

    try:
        return json.loads(body).get("usage")
    except (ValueError, AttributeError):
        pass
    for line in reversed(body.splitlines()):
        if line.startswith(b"data:") and b'"usage"' in line:
            try:
                usage = json.loads(line[5:]).get("usage")
            except (ValueError, AttributeError):
                continue
            if usage:
                return usage
    return None


def _count(requests: Sequence[RankRequest], status: str) -> None:
    for r in requests:
        m.REQUESTS.labels(r.scenario, status).inc()
