"""Inference logging in KServe's format: every ranking, rerank and routed call becomes a pair of CloudEvents (binary
mode), the request as received and the response as sent, as KServe's InferenceService `logger` posts them:

    ce-id           the request id (the x-request-id header a client sent, else a new one; both events share it)
    ce-type         org.kubeflow.serving.inference.request | org.kubeflow.serving.inference.response
    ce-source       the server's URL
    ce-time         when the event was made
    ce-inferenceservicename, ce-namespace, ce-component, ce-endpoint
    ce-eventid      this event's own id (a client may send the same x-request-id twice: each call is kept)
    content-type    the body's (application/json; text/event-stream for a streamed chat answer)
    body            the HTTP body, unchanged

On a cluster the InferenceService's `logger` sends these and the server emits none; locally `iranker serve --log-url
URL` makes the server post them itself, off the request path: `emit` only queues. A sender task posts them; a full
queue or a sink that is down or answers 5xx, 408 or 429 never delays or fails a ranking: the event goes to a spool
folder (one file per event, written atomically, off the event loop) and is sent again, oldest first, once the sink
answers. An event the sink refuses for good (another 4xx) is dropped, so that it cannot hold up the spool. A spool
over its bound drops the newest events. At shutdown (SIGTERM) the events still queued, and the one being posted,
are spooled, and the next start sends them. `iranker_log_events_total{outcome}` counts each: sent, spooled, resent,
rejected, dropped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from iranker.data.feedback import REQUEST_TYPE, RESPONSE_TYPE

logger = logging.getLogger("iranker.eventlog")

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 200
MAX_LOGGED_BODY = 4 << 20  # a streamed answer longer than this is logged cut, with ce-truncated: true


def request_id(given: str | None) -> str:
    """The id of a request: the client's x-request-id where it is a plausible id (1-200 visible ASCII characters),
    else a new one."""
    if given and len(given) <= MAX_REQUEST_ID_CHARS and all(33 <= ord(ch) < 127 for ch in given):
        return given
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Origin:
    """Who emits: the extension attributes KServe's logger sets."""

    source: str = "http://localhost:8080/"
    service: str = "iranker"
    namespace: str = "default"
    component: str = "predictor"
    endpoint: str = "default"


def event_headers(rid: str, kind: str, origin: Origin, content_type: str, truncated: bool = False) -> dict[str, str]:
    """The binary-mode CloudEvent headers of one logged request or response (`kind` 'request' or 'response'), or
    of an event of another type (`kind` the whole type, e.g. org.iranker.feedback); made with the cloudevents SDK."""
    from cloudevents.conversion import to_binary
    from cloudevents.http import CloudEvent

    kind = {"request": REQUEST_TYPE, "response": RESPONSE_TYPE}.get(kind, kind)
    attrs = {"id": rid, "type": kind, "source": origin.source,
             "specversion": "1.0", "time": datetime.now(timezone.utc).isoformat(),
             "datacontenttype": content_type or "application/json", "inferenceservicename": origin.service,
             "namespace": origin.namespace, "component": origin.component, "endpoint": origin.endpoint}
    attrs["eventid"] = uuid.uuid4().hex
    if truncated:
        attrs["truncated"] = "true"
    headers, _ = to_binary(CloudEvent(attrs, b""), data_marshaller=lambda d: d)
    return dict(headers)


class EventLog:
    """Queue, send and spool CloudEvents to `url` (module doc). Use from the server's event loop."""

    def __init__(self, url: str, spool: str | Path, origin: Origin = Origin(), queue_size: int = 1000,
                 timeout_s: float = 5.0, retry_s: float = 5.0, max_spool_files: int = 100_000,
                 token: str | None = None):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"log url: expected an http(s) URL, got {url!r}")
        self.url, self.origin = url, origin
        self.spool = Path(spool)
        self.spool.mkdir(parents=True, exist_ok=True)
        self.timeout_s, self.retry_s, self.max_spool_files = timeout_s, retry_s, max_spool_files
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._spooled = sum(1 for _ in self.spool.glob("*.json"))  # kept up to date, not listed per event
        self.queue: asyncio.Queue | None = None
        self.queue_size = queue_size
        self._tasks: list[asyncio.Task] = []
        self._client = None
        self._inflight: tuple[dict[str, str], bytes] | None = None  # the event the sender is posting

    # --------------------------------------------------------------------------------------------- the request path

    def emit(self, rid: str, kind: str, body: bytes, content_type: str, truncated: bool = False) -> None:
        """Queue one event; never blocks, never raises (a full queue spools it)."""
        try:
            event = (event_headers(rid, kind, self.origin, content_type, truncated), body)
            self._start()
            assert self.queue is not None
            self.queue.put_nowait(event)
        except asyncio.QueueFull:  # written by a worker thread, not on the event loop
            asyncio.get_running_loop().run_in_executor(None, self._to_spool, *event)
        except Exception as e:  # noqa: BLE001 - logging must never fail a ranking
            logger.warning("event log: could not queue %s %s: %s", kind, rid, e)
            _count("dropped")

    def emit_json(self, rid: str, type_: str, data: dict) -> None:
        """Queue an event of our own (feedback, a routed call's outcome) with a JSON body; as `emit`."""
        try:
            body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        except (TypeError, ValueError) as e:
            logger.warning("event log: could not encode a %s event for %s: %s", type_, rid, e)
            _count("dropped")
            return
        self.emit(rid, type_, body, "application/json")

    # -------------------------------------------------------------------------------------------- in the background

    def start(self) -> None:
        """Start the sender and the resender on the running event loop (idempotent); the server calls it at startup
        so that a spool left by an earlier run is sent before the first call, and `emit` calls it too."""
        self._start()

    def _start(self) -> None:
        if self.queue is None:
            import httpx

            self.queue = asyncio.Queue(self.queue_size)
            self._client = httpx.AsyncClient(timeout=self.timeout_s)
            self._tasks = [asyncio.ensure_future(self._sender()), asyncio.ensure_future(self._resender())]

    async def _post(self, headers: dict[str, str], body: bytes) -> bool | None:
        """True: delivered; False: try again later (down, 5xx, 408, 429); None: refused for good (other 4xx)."""
        try:
            r = await self._client.post(self.url, headers={**headers, **self.auth}, content=body)
        except Exception as e:  # noqa: BLE001 - a sink that is down: spool
            logger.debug("event log: %s unreachable: %s", self.url, e)
            return False
        if 200 <= r.status_code < 300:
            return True
        if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
            logger.warning("event log: %s refused an event with %d: %s", self.url, r.status_code, r.text[:200])
            return None
        return False

    async def _sender(self) -> None:
        while True:
            headers, body = await self.queue.get()
            self._inflight = (headers, body)
            try:
                delivered = await self._post(headers, body)
                if delivered:
                    _count("sent")
                elif delivered is None:
                    _count("rejected")
                else:
                    await asyncio.to_thread(self._to_spool, headers, body)
            finally:
                self._inflight = None
                self.queue.task_done()

    async def _resender(self) -> None:
        while True:
            await asyncio.sleep(self.retry_s)
            with contextlib.suppress(Exception):
                await self.resend()

    async def resend(self) -> int:
        """Send the spooled events again, oldest first, until one fails; returns how many went."""
        sent = 0
        if not self._spooled:
            return 0
        for path in await asyncio.to_thread(lambda: sorted(self.spool.glob("*.json"))):
            saved = await asyncio.to_thread(_read_spooled, path)
            if saved is not None:
                delivered = await self._post(saved["headers"], base64.b64decode(saved["body"]))
                if delivered is False:
                    break
                _count("resent" if delivered else "rejected")
                sent += bool(delivered)
            await asyncio.to_thread(path.unlink, True)
            self._spooled -= 1
        return sent

    def _to_spool(self, headers: dict[str, str], body: bytes) -> None:
        try:
            if self._spooled >= self.max_spool_files:
                _count("dropped")
                return
            name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
            tmp = self.spool / f".{name}.tmp"
            tmp.write_text(json.dumps({"headers": headers, "body": base64.b64encode(body).decode()}))
            os.replace(tmp, self.spool / name)
            self._spooled += 1
            _count("spooled")
        except OSError as e:
            logger.warning("event log: could not spool an event: %s", e)
            _count("dropped")

    def spool_pending(self) -> int:
        """At shutdown: write every event not yet delivered - queued, or being posted - to the spool (synchronously),
        to be sent by the next start. The one being posted may arrive as well: the collector keeps it once."""
        pending = [self._inflight] if self._inflight is not None else []
        while self.queue is not None and not self.queue.empty():
            pending.append(self.queue.get_nowait())
            self.queue.task_done()
        self._inflight = None
        for headers, body in pending:
            self._to_spool(headers, body)
        return len(pending)

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until the queued events are sent or spooled (tests, shutdown)."""
        if self.queue is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.queue.join(), timeout_s)

    async def close(self) -> None:
        await self.drain()
        for t in self._tasks:
            t.cancel()
        if self._client is not None:
            await self._client.aclose()


def _read_spooled(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # half written by a killed process: not an event
        return None


def _count(outcome: str) -> None:
    from serving import metrics as m

    m.LOG_EVENTS.labels(outcome).inc()
