"""HTTP: the routes the server adds to KServe's FastAPI app, the guard in front of every route, and how the
service's errors become HTTP answers. Each route only looks up its handler on the model and calls it.

    POST /v1/rerank, /v2/rerank, {prefix}/v1/rerank     ->  IRankerModel.rerank
    POST {prefix}/v1/chat/completions                   ->  IRankerModel.route (with a routes file)
    POST /v1/feedback                                   ->  IRankerModel.feedback (only with an inference log)
    GET  {prefix}/v1/models                             ->  the ranker and, with a routes file, the router

`{prefix}` is KServe's OpenAI route prefix (`/openai`, or KSERVE_OPENAI_ROUTE_PREFIX). KServe's own v1/v2 routes
stay as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from fastapi import Request  # module level: the routes' annotations are resolved against these globals
from kserve.errors import InvalidInput

from serving.eventlog import MAX_LOGGED_BODY, request_id
from serving.model import IRankerModel
from serving.policy import DeadlineExceeded, Overloaded, Unauthorized, authorized
from serving.protocol import ROUTE_HEADER, JSONProblem, MalformedJSON, strict_json
from serving.router import NoRoute


def openai_prefix() -> str:
    prefix = os.environ.get("KSERVE_OPENAI_ROUTE_PREFIX", "/openai").strip("/")
    return f"/{prefix}" if prefix else ""


class Guard:
    """ASGI middleware in front of every route: the bearer token is checked before a POST body is read (401), and
    the body is refused with 413 once more than `max_body_bytes` have arrived - counted as read, so a chunked body
    without a Content-Length is held to the limit too - and with 408 when it has not all arrived within
    `body_timeout_s`. Health, readiness and metrics (GET) stay open."""

    def __init__(self, app, model: IRankerModel):
        self.app = app
        self.model = model

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        from serving import metrics as m

        path = scope.get("path", "")
        kind = route_kind(path)
        send_on = send
        # the request id: the client's x-request-id where plausible, else a new one; the routes see it, the answer
        # carries it, and the inference log's events are named by it
        raw = scope.get("headers") or []
        rid = request_id(dict(raw).get(b"x-request-id", b"").decode("latin-1") or None)
        scope = {**scope, "headers": [*[(k, v) for k, v in raw if k.lower() != b"x-request-id"],
                                      (b"x-request-id", rid.encode())]}
        log = self.model.event_log if kind in LOGGED and self.model.log_calls else None
        started = finished = False
        answer: dict = {"chunks": [], "size": 0, "type": "application/json", "logged": False}

        async def send(message):  # every POST answer counted by route and status, whoever gives it
            nonlocal started, finished
            if message["type"] == "http.response.start":
                started = True
                m.RESPONSES.labels(kind, str(message["status"])).inc()
                message = {**message, "headers": [*[(k, v) for k, v in message.get("headers", [])
                                                    if k.lower() != b"x-request-id"], (b"x-request-id", rid.encode())]}
                answer["type"] = dict(message["headers"]).get(b"content-type", b"application/json").decode("latin-1")
            elif message["type"] == "http.response.body":
                if answer["logged"] and answer["size"] < MAX_LOGGED_BODY:
                    answer["chunks"].append(message.get("body", b""))
                    answer["size"] += len(answer["chunks"][-1])
                if not message.get("more_body", False):
                    finished = True
                    log_response()
            await send_on(message)

        def log_response(cut: bool = False) -> None:  # once, when the answer ends or is cut off
            if answer["logged"]:
                answer["logged"] = False
                body = b"".join(answer["chunks"])
                log.emit(rid, "response", body[:MAX_LOGGED_BODY], answer["type"],
                         truncated=cut or len(body) > MAX_LOGGED_BODY)

        def logged(body: bytes, content_type: str) -> None:  # the body was read and passed the guard's checks
            if log is not None:
                log.emit(rid, "request", body, content_type)
                answer["logged"] = True

        try:
            await self._guarded(scope, receive, send, path, kind, lambda: finished, logged)
        except Exception:
            if not started:  # answered 500 by the server's outermost handler, outside this wrapper
                m.RESPONSES.labels(kind, "500").inc()
            raise
        finally:  # a client that left mid-answer, or a 500: what was sent, marked truncated
            log_response(cut=True)

    async def _guarded(self, scope, receive, send, path: str, kind: str, finished, logged) -> None:
        from starlette.responses import JSONResponse

        from serving import metrics as m

        if ":explain" in path or path.startswith("/v2/repository"):
            # no explainer, and the model repository is fixed at start: loading or unloading through the API
            # would only take the served model down
            await JSONResponse(status_code=404, content={"error": f"{path}: not served here (this server ranks with "
                                                                  "the one model it was started with)"})(
                scope, receive, send)
            return
        config = self.model.config
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1") or None
        if not authorized(config, auth):
            m.REQUESTS.labels("unknown", "unauthorized").inc()
            await JSONResponse(status_code=401, headers={"WWW-Authenticate": "Bearer"}, content={
                "error": "missing or wrong bearer token (header Authorization: Bearer TOKEN)"})(scope, receive, send)
            return
        limit = config.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await JSONResponse(status_code=413, content={"error": f"body: at most {limit} bytes, got {int(length)}"})(
                scope, receive, send)
            return
        body, size = [], 0
        loop = asyncio.get_running_loop()
        until = loop.time() + config.body_timeout_s
        while True:
            try:  # a body that trickles in (or a Content-Length that lies) holds a connection no longer than this
                message = await asyncio.wait_for(receive(), timeout=max(until - loop.time(), 0.001))
            except asyncio.TimeoutError:
                m.REQUESTS.labels("unknown", "timeout").inc()
                await JSONResponse(status_code=408, headers={"Connection": "close"}, content={
                    "error": f"body: not received within {config.body_timeout_s:g} s"})(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await JSONResponse(status_code=413, content={
                    "error": f"body: at most {limit} bytes, got more"})(scope, receive, send)
                return
            body.append(chunk)
            if not message.get("more_body", False):
                break
        whole = b"".join(body)
        problem = body_problem(whole, headers)
        if problem:
            m.REQUESTS.labels("unknown", "invalid").inc()
            await JSONResponse(status_code=400, content={"error": problem})(scope, receive, send)
            return
        if (kind == "v2" and b"inference-header-content-length" not in headers
                and b"json" not in headers.get(b"content-type", b"").lower() and whole.lstrip()[:1] == b"{"):
            # a v2 request in JSON sent without a JSON content type (tritonclient's JSON mode sends none): KServe
            # would read it as the binary tensor extension and refuse it; it is JSON, so say so
            scope = {**scope, "headers": [(k, v) for k, v in scope.get("headers") or [] if k.lower() != b"content-type"]
                     + [(b"content-type", b"application/json")]}
        logged(whole, dict(scope.get("headers") or []).get(b"content-type", b"application/json").decode("latin-1"))
        await self._answer(scope, whole, receive, send, finished)

    async def _answer(self, scope, body: bytes, receive, send, finished) -> None:
        """Run the route with the body already read, while watching the connection: a client that goes away
        cancels the route's work (the ranking queue then drops its requests, between steps and inside a prefill),
        instead of ranking them for nobody. The route sees the disconnect too, if it listens (a streamed answer)."""
        from serving import metrics as m

        sent = False
        gone = asyncio.Event()

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        route = asyncio.ensure_future(self.app(scope, replay, send))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({route, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            route.cancel()
            raise
        finally:
            watcher.cancel()
        if route.done() or finished():  # answered (work after the answer, if any, is not cut short)
            await route
            return
        route.cancel()  # the client left first
        m.CONNECTIONS_CLOSED.labels("client_left").inc()
        with contextlib.suppress(asyncio.CancelledError):
            await route


LOGGED = ("v1", "v2", "rerank", "chat")  # the route families whose calls the inference log records


def route_kind(path: str) -> str:
    """The route family a path belongs to (the label of iranker_http_responses_total: a bounded set)."""
    if path.endswith("/rerank"):
        return "rerank"
    if path.endswith("/chat/completions"):
        return "chat"
    if path == "/v1/feedback":
        return "feedback"
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        return "v1"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "v2"
    return "other"


def body_problem(body: bytes, headers: dict[bytes, bytes]) -> str | None:
    """Why a JSON body must be refused before any route reads it (None when it is fine): what
    `serving.protocol.strict_json` refuses - not UTF-8 or behind a byte order mark, nested deeper than
    MAX_JSON_DEPTH (Python's parser would hit its recursion limit: a 500), NaN, Infinity or a number past the float
    range (not JSON), an integer of more than 4,300 digits, a string holding a lone UTF-16 surrogate
    (`"\\ud800"`). Bodies that are not JSON (KServe's binary tensor extension, an empty body, text that is not
    JSON) are left to their route, which says what it expected."""
    if not body.strip() or b"inference-header-content-length" in headers:
        return None
    bom = body.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")) or b"\x00" in body[:4]
    declared = b"json" in headers.get(b"content-type", b"").lower()
    if not (bom or declared or body.lstrip()[:1] in (b"{", b"[")):
        return None
    try:
        strict_json(body)
    except MalformedJSON:
        return None  # the route says where
    except JSONProblem as e:
        return str(e)
    return None


def install(app, model: IRankerModel) -> None:
    """Add the rerank and chat routes, the guard and the error mapping to KServe's app."""
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    async def body_of(request: Request):
        raw = await request.body()
        return raw if raw else b""

    async def rerank(request: Request):
        return JSONResponse(await model.rerank(await body_of(request), request.headers.get("x-request-id")))

    async def chat(request: Request):
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            routed = await model.route(await body_of(request), headers)
        except (InvalidInput, NoRoute, Overloaded, DeadlineExceeded) as e:  # in the shape OpenAI clients read
            status, kind = {InvalidInput: (400, "invalid_request_error"), NoRoute: (502, "upstream_error"),
                            Overloaded: (503, "overloaded"), DeadlineExceeded: (504, "timeout")}[type(e)]
            retry = getattr(e, "retry_after", None)
            return JSONResponse(status_code=status, headers={"Retry-After": str(retry)} if retry else None,
                                content={"error": {"message": str(e), "type": kind, "param": None, "code": status}})
        upstream = routed.upstream
        extra = {ROUTE_HEADER: upstream.route.name, f"{ROUTE_HEADER}-ranking": ",".join(routed.ranking)}
        if routed.failed:
            extra[f"{ROUTE_HEADER}-fallbacks"] = str(len(routed.failed))
        content_type = upstream.response.headers.get("content-type", "application/json")
        if upstream.stream:
            async def relay():  # the stream as it comes; its outcome (with the last chunk's usage) when it ends
                tail = b""
                try:
                    async for chunk in upstream.chunks():
                        tail = (tail + chunk)[-16384:]
                        yield chunk
                finally:
                    model.route_done(routed, tail)

            return StreamingResponse(relay(), status_code=upstream.status, media_type=content_type, headers=extra)
        model.route_done(routed, upstream.response.content)
        return Response(content=upstream.response.content, status_code=upstream.status, media_type=content_type,
                        headers=extra)

    async def feedback(request: Request):
        try:
            answer = await model.feedback(strict_json(await body_of(request)))
        except (JSONProblem, InvalidInput) as e:
            return JSONResponse(status_code=400, content={"error": str(e)})
        except LookupError as e:
            return JSONResponse(status_code=404, content={"error": str(e)})
        return JSONResponse(status_code=202, content=answer)

    async def models(_: Request):
        data = [{"id": model.name, "object": "model", "created": int(time.time()), "owned_by": "iranker"}]
        if model.router is not None:
            data.append({"id": model.router.routes.router, "object": "model", "created": int(time.time()),
                         "owned_by": "iranker"})
        return JSONResponse({"object": "list", "data": data})

    prefix = openai_prefix()
    for path in ("/v1/rerank", "/v2/rerank", f"{prefix}/v1/rerank"):
        app.add_api_route(path, rerank, methods=["POST"], tags=["rerank"])
    app.add_api_route(f"{prefix}/v1/chat/completions", chat, methods=["POST"], tags=["router"])
    if model.event_log is not None:  # outcomes are kept in the inference log: without one there is no route
        app.add_api_route("/v1/feedback", feedback, methods=["POST"], tags=["feedback"], status_code=202)
    app.add_api_route(f"{prefix}/v1/models", models, methods=["GET"], tags=["router"])
    install_handlers(app)
    app.add_middleware(Guard, model=model)


def install_handlers(app) -> None:
    """503 + Retry-After (queue full), 504 + Retry-After (deadline), 401, 502 (no LLM of the ranking answered)."""
    from fastapi.responses import JSONResponse

    async def overloaded(_, exc: Overloaded):
        return JSONResponse(status_code=503, content={"error": str(exc)},
                            headers={"Retry-After": str(exc.retry_after)})

    async def deadline(_, exc: DeadlineExceeded):
        return JSONResponse(status_code=504, content={"error": str(exc)},
                            headers={"Retry-After": str(exc.retry_after)})

    async def unauthorized(_, exc: Unauthorized):
        return JSONResponse(status_code=401, content={"error": str(exc)}, headers={"WWW-Authenticate": "Bearer"})

    async def no_route(_, exc: NoRoute):
        return JSONResponse(status_code=502, content={"error": str(exc)})

    app.add_exception_handler(Overloaded, overloaded)
    app.add_exception_handler(DeadlineExceeded, deadline)
    app.add_exception_handler(Unauthorized, unauthorized)
    app.add_exception_handler(NoRoute, no_route)
