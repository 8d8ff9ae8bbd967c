"""The inference-log collector: receives CloudEvents (binary or structured mode, as KServe's InferenceService
`logger` and `iranker serve --log-url` send them) and keeps each exactly once.

    iranker collect --out DIR [--port 8090] [--token-env VAR]

Storage: `DIR/events/date=YYYY-MM-DD/events.jsonl` by the day the event was received (UTC), one JSON object per line:
`{"id", "type", "source", "time", "received", "attributes": {extension attributes}, "content_type", "data"}` where
`data` is the body parsed when it is JSON, else `data_base64`. A line is appended and fsynced before the sender gets
its 2xx, so an acknowledged event survives a crash; a line cut short by a crash (no newline) is skipped by readers
and removed at the next start. Deduplication: an event is known by its `eventid` extension where the sender sets
one (`iranker serve --log-url` does: a client may reuse an x-request-id, and each call is kept), else by (source, id,
type) - the request and the response of a call share the id - and a known one is acknowledged (200) and not written
again. With at-least-once senders (the
spool of `iranker serve --log-url`, KServe's retries) that makes exactly once in the store. The index of known
events is rebuilt from the files at start.

Bad input: a missing bearer token (when `--token-env` names one) is a 401 before the body is read; a body over
`--max-body-bytes` a 413; a body that is not a CloudEvent a 400 naming what is missing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

from iranker.data.feedback import read_events

__all__ = ["Store", "event_key", "make_app", "parse_event", "read_events", "run"]

logger = logging.getLogger("iranker.collector")

CORE = ("id", "type", "source", "specversion", "time", "datacontenttype")


class Store:
    """Append-only, fsynced, deduplicated event files (module doc). Thread-safe."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "events").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._repair()
        self.known = {event_key(e) for e in read_events(self.root)}

    def _repair(self) -> None:
        """Cut a last line a crash left without its newline (it was never acknowledged)."""
        for path in (self.root / "events").glob("date=*/events.jsonl"):
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                with path.open("r+b") as f:
                    f.truncate(keep)
                    os.fsync(f.fileno())
                logger.warning("%s: removed a partial last line (%d bytes)", path, len(data) - keep)

    def add(self, event: dict) -> bool:
        """Write `event` unless its (id, type) is stored; True when written."""
        key = event_key(event)
        with self._lock:
            if key in self.known:
                return False
            day = event["received"][:10]
            folder = self.root / "events" / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            line = (json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
            fd = os.open(folder / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                done = 0
                while done < len(line):
                    done += os.write(fd, line[done:])
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, start)  # nothing half written stays behind; the sender is told to retry
                raise
            finally:
                os.close(fd)
            self.known.add(key)
            return True


def event_key(event: dict) -> tuple:
    """What makes two stored events the same (module doc)."""
    eventid = event.get("attributes", {}).get("eventid")
    return ("eventid", eventid) if eventid else (event["source"], event["id"], event["type"])


class BadEvent(ValueError):
    pass


def parse_event(headers: dict[str, str], body: bytes) -> dict:
    """A stored event from an HTTP CloudEvent (binary or structured mode), made with the cloudevents SDK."""
    from cloudevents.http import from_http

    try:
        event = from_http(headers, body, data_unmarshaller=lambda b: b)
    except Exception as e:  # noqa: BLE001 - the SDK's errors are many kinds; all mean "not a CloudEvent"
        raise BadEvent(f"body: not a CloudEvent ({type(e).__name__}: {e}); expected ce-id, ce-type, ce-source and "
                       "ce-specversion headers (binary mode) or an application/cloudevents+json body") from None
    attrs = event.get_attributes()
    for name in ("id", "type", "source"):
        if not attrs.get(name):
            raise BadEvent(f"{name}: a CloudEvent needs a non-empty {name}")
    data = event.get_data()
    if isinstance(data, str):
        data = data.encode()
    content_type = attrs.get("datacontenttype") or headers.get("content-type") or ""
    out = {"id": str(attrs["id"]), "type": str(attrs["type"]), "source": str(attrs["source"]),
           "time": str(attrs.get("time") or ""), "received": datetime.now(timezone.utc).isoformat(),
           "attributes": {k: str(v) for k, v in attrs.items() if k not in CORE}, "content_type": content_type}
    if data is None or isinstance(data, bytes):
        raw = data or b""
        try:
            out["data"] = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            out["data_base64"] = base64.b64encode(raw).decode()
    else:  # structured mode: the SDK has parsed it already
        out["data"] = data
    return out


def make_app(store: Store, token: str | None = None, max_body_bytes: int = 8 << 20):
    """The collector's ASGI app: POST / (any path) takes one CloudEvent; GET /healthz answers ok."""
    import hmac

    from starlette.responses import JSONResponse

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            ok = scope["path"] in ("/healthz", "/ready")
            await JSONResponse({"status": "ok", "events": len(store.known)} if ok else {"error": "not found"},
                               status_code=200 if ok else 404)(scope, receive, send)
            return
        if scope["method"] != "POST":
            await JSONResponse({"error": "POST a CloudEvent"}, status_code=405)(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        if token is not None:
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                await JSONResponse({"error": "missing or wrong bearer token (header Authorization: Bearer TOKEN)"},
                                   status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > max_body_bytes:
            await JSONResponse({"error": f"body: at most {max_body_bytes} bytes, got {length}"},
                               status_code=413)(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > max_body_bytes:
                await JSONResponse({"error": f"body: at most {max_body_bytes} bytes"}, status_code=413)(
                    scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        try:
            event = parse_event(headers, b"".join(chunks))
        except BadEvent as e:
            await JSONResponse({"error": str(e)}, status_code=400)(scope, receive, send)
            return
        written = await asyncio.to_thread(store.add, event)
        await JSONResponse({"stored": written, "id": event["id"], "type": event["type"]},
                           status_code=201 if written else 200)(scope, receive, send)

    return app


def run(out: str | Path, port: int = 8090, host: str = "0.0.0.0", token: str | None = None,
        max_body_bytes: int = 8 << 20) -> None:
    """Serve the collector until stopped (blocks)."""
    import uvicorn

    store = Store(out)
    logger.info("collector: %d events stored in %s", len(store.known), out)
    uvicorn.run(make_app(store, token, max_body_bytes), host=host, port=port, log_level="warning",
                lifespan="off")
