"""What a connection may hold before it is a request: a deadline for its headers and a bound per client address.

uvicorn (under KServe's ModelServer) reads a request's headers without a deadline - a client that sends half a
request line and then nothing keeps its connection, and its slot, for as long as it likes - and a single address
may open any number of connections. `install(header_timeout_s, max_per_client)` replaces uvicorn's "auto" HTTP
protocol, for this process, with a subclass of it that:

- closes a connection whose request headers have not all arrived `header_timeout_s` after the request's first byte
  (`iranker_connections_closed_total{reason="header_timeout"}`), and one that sends nothing at all within uvicorn's
  keep-alive timeout (`reason="idle"`; a proxy's pre-opened connections are not cut sooner); the body has its own
  deadline (`--body-timeout`, the guard middleware in serving/routes.py: 408);
- takes no websocket upgrade (no route serves one);
- refuses (closes at once) a connection from an address that already holds `max_per_client` open connections
  (`reason="per_client"`). Behind a proxy or a sidecar every connection comes from the proxy's address: set the
  bound above the proxy's connection pool, or 0 (off).

Idle kept-alive connections between requests stay governed by uvicorn's keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import collections

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from serving import metrics as m

_OPEN: collections.Counter[str] = collections.Counter()  # open connections per client address (this process)


class GuardedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    header_timeout_s: float = 10.0
    max_per_client: int = 0  # 0: no bound

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # no websocket upgrades (no route takes one): an upgraded connection would leave this protocol's books
        self.ws_protocol_class = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._waiting_on = None
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) and peer else None
        super().connection_made(transport)
        if self._peer is not None:
            _OPEN[self._peer] += 1
            if self.max_per_client and _OPEN[self._peer] > self.max_per_client:
                m.CONNECTIONS_CLOSED.labels("per_client").inc()
                transport.close()
                return
        # until its first byte, an idle connection is held as a kept-alive one is (uvicorn's keep-alive timeout)
        self._arm(self.timeout_keep_alive, "idle")

    def data_received(self, data: bytes) -> None:
        between = self.cycle is None or self.cycle.response_complete
        if between and (self._header_timer is None or self._reason == "idle" or self._waiting_on is not self.cycle):
            self._arm(self.header_timeout_s, "header_timeout")  # a request's first bytes: its headers are due
        super().data_received(data)
        if self._header_timer is not None and self.cycle is not self._waiting_on:
            self._disarm()  # its headers are complete

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._peer is not None:
            _OPEN[self._peer] -= 1
            if _OPEN[self._peer] <= 0:
                del _OPEN[self._peer]
            self._peer = None
        super().connection_lost(exc)

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._waiting_on = self.cycle  # the cycle before the request whose headers are awaited (None at first)
        self._reason = reason
        self._header_timer = self.loop.call_later(seconds, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.cycle is not self._waiting_on:
            return  # a new request's headers arrived in time
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request still in flight on this connection
        m.CONNECTIONS_CLOSED.labels(self._reason).inc()
        self.transport.close()


def install(header_timeout_s: float, max_per_client: int) -> None:
    """Make uvicorn's "auto" HTTP protocol the guarded one, with these limits, for servers configured after this."""
    import uvicorn.config

    if header_timeout_s <= 0:
        raise ValueError(f"header_timeout_s: must be > 0, got {header_timeout_s}")
    if max_per_client < 0:
        raise ValueError(f"max_per_client: must be >= 0 (0: no bound), got {max_per_client}")
    GuardedHTTPProtocol.header_timeout_s = header_timeout_s
    GuardedHTTPProtocol.max_per_client = max_per_client
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:GuardedHTTPProtocol"
