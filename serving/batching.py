"""The ranking queue: concurrent requests are ranked together, and no request can spoil another's answer.

`Batcher` holds a bounded queue in front of one ranking worker. While the worker ranks one batch, new requests
queue up and form the next one, so the model sees up to `max_batch` requests at a time under load - and at most
`max_batch_tokens` estimated prompt tokens (`iranker.ranker.estimate_cost`; the first request of a batch always
goes), so that one batch, and the wait of a request queued behind it, stays short. The next batch takes the
waiting requests cheapest first (those waiting over AGING_S first of all): a small request does not wait behind
queued large ones.

- A full queue answers 503 with Retry-After; a request past its deadline answers 504 with Retry-After.
- The ranking function gets, beside the requests, one `alive()` callable per request: the ranker asks it between
  elimination steps and stops ranking a request whose client has gone or whose deadline has passed.
- A batch that fails is ranked again one request at a time, so only the request that caused the failure fails:
  with a 400 when the request was at fault (a `ValueError` from the ranker), otherwise with the error.
- Small requests do not wait for a large batch to end. While a batch of more than LARGE_BATCH_TOKENS runs, a
  request of at most EXPRESS_TOKENS goes to an express line instead of the queue, and the ranking thread ranks the
  express line between the large batch's steps (at its `alive()` checks: between elimination steps and between
  1,024-token prefill chunks), then resumes the large batch for at least a third of the time the express batch
  took (LARGE_SHARE: a stream of small requests gets at most three quarters of the time and never starves a large
  one; it is slowed to a quarter of its speed at worst, and its deadline still holds). Small requests already
  waiting when a large batch starts join the express line too. So a small request waits for about one step or
  chunk of a large one, not for all of it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence

from kserve.errors import InvalidInput

from iranker.schema import RankRequest, RankResponse
from serving import metrics as m
from serving.policy import DeadlineExceeded, Overloaded, ServeConfig

logger = logging.getLogger("iranker.serving")
AGING_S = 5.0  # a request queued longer than this is batched before cheaper ones (no starvation of large requests)
EXPRESS_TOKENS = 1024  # a request this small is ranked between the steps of a large batch ...
LARGE_BATCH_TOKENS = 2048  # ... that is, of a batch estimated at more than this
EXPRESS_EVERY_S = 0.05  # how often the ranking thread looks at the express line (at most)
LARGE_SHARE = 0.25  # after an express batch that took T, the large batch runs at least T * share / (1 - share)

RankFn = Callable[[list[RankRequest], list[Callable[[], bool]]], list[RankResponse]]


def _large(items) -> bool:
    """A batch whose steps the express line runs between: over LARGE_BATCH_TOKENS, and ranked iteratively (the
    ranker asks alive() between steps; a direct ranking is one pass, with no step to run anything between)."""
    return (sum(i.cost for i in items) > LARGE_BATCH_TOKENS
            and all(i.request.options.method == "iterative" for i in items))


@dataclasses.dataclass
class _Item:
    request: RankRequest
    future: asyncio.Future
    deadline: float
    cost: int = 0  # estimated prompt tokens
    arrived: float = dataclasses.field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return not self.future.done() and time.monotonic() < self.deadline


class Batcher:
    def __init__(self, rank: RankFn, config: ServeConfig):
        self.rank = rank
        self.config = config
        self.queue: asyncio.Queue[_Item] | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="iranker-rank")
        self.worker: asyncio.Task | None = None
        self._waiting: list[_Item] = []  # taken from the queue, not yet in a batch
        self._express: collections.deque[_Item] = collections.deque()  # small requests beside a large batch
        self._large = False  # a large batch is being ranked (set and read on the event loop)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._looked = 0.0  # when the ranking thread last looked at the express line
        self._took = 0.0  # how long its last express batch took (the large batch's slice follows from it)
        self._inline = threading.local()

    def _start(self) -> None:
        if self.worker is None or self.worker.done():
            self.queue = asyncio.Queue()
            self.worker = asyncio.get_running_loop().create_task(self._work())

    async def submit(self, requests: Sequence[RankRequest], deadline_s: float | None = None,
                     costs: Sequence[int] | None = None) -> list[RankResponse]:
        self._start()
        assert self.queue is not None
        if self.waiting() + len(requests) > self.config.max_queue:
            raise Overloaded(self.config.retry_after_s)
        loop = asyncio.get_running_loop()
        limit = deadline_s or self.config.deadline_s
        deadline = time.monotonic() + limit
        items = [_Item(r, loop.create_future(), deadline, c) for r, c in zip(requests, costs or [0] * len(requests),
                                                                              strict=True)]
        for item in items:
            if self._large and item.cost <= EXPRESS_TOKENS:
                self._express.append(item)  # ranked between the running large batch's steps
            else:
                self.queue.put_nowait(item)
        m.QUEUE_DEPTH.set(self.waiting())
        try:
            return list(await asyncio.wait_for(asyncio.gather(*(i.future for i in items)),
                                               timeout=max(0.0, deadline - time.monotonic())))
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"deadline of {limit:g} s exceeded", self.config.retry_after_s) from None
        finally:
            for i in items:  # a request that failed, timed out or whose client left stops being ranked
                if not i.future.done():
                    i.future.cancel()

    def _drain(self) -> None:
        assert self.queue is not None
        while True:
            try:
                self._waiting.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _collect(self) -> list[_Item]:
        """The next batch: the waiting requests cheapest first (a request waiting longer than AGING_S goes first,
        so that large ones are not starved), up to `max_batch` requests and `max_batch_tokens` estimated tokens; the
        first always goes. A small request thus never waits behind queued giants, only behind the batch running."""
        assert self.queue is not None
        self._drain()
        if not self._waiting:
            self._waiting.append(await self.queue.get())
            self._drain()
        wait_until = time.monotonic() + self.config.max_wait_ms / 1000
        while len(self._waiting) < self.config.max_batch:  # a moment for company
            remaining = wait_until - time.monotonic()
            if remaining <= 0:
                break
            try:
                self._waiting.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
            self._drain()
        self._waiting = [i for i in self._waiting if i.alive()]  # the abandoned and the late leave the line
        if not self._waiting:
            return []
        now = time.monotonic()
        order = sorted(self._waiting, key=lambda i: (now - i.arrived < AGING_S, i.cost if now - i.arrived < AGING_S
                                                      else 0, i.arrived))
        batch, tokens = [], 0
        for item in order:
            if len(batch) == self.config.max_batch:
                break
            if batch and tokens + item.cost > (self.config.max_batch_tokens or 1 << 30):
                continue
            batch.append(item)
            tokens += item.cost
        large_only = [i for i in batch if i.cost > EXPRESS_TOKENS]
        if len(large_only) < len(batch) and _large(large_only):
            # a large batch ranks its large requests only: the small ones go to the express line (_work), ranked
            # between its steps instead of waiting for all of them
            batch = large_only
        chosen = {id(i) for i in batch}
        self._waiting = [i for i in self._waiting if id(i) not in chosen]
        return batch

    def waiting(self) -> int:
        """Requests queued or taken from the queue but not yet ranked."""
        return (self.queue.qsize() if self.queue is not None else 0) + len(self._waiting) + len(self._express)

    async def _work(self) -> None:
        assert self.queue is not None
        loop = self._loop = asyncio.get_running_loop()
        while True:
            # express requests the last large batch did not reach join the line (no await since it ended)
            self._waiting.extend(self._express)
            self._express.clear()
            batch = await self._collect()
            m.QUEUE_DEPTH.set(self.waiting())
            live = [i for i in batch if i.alive()]
            if not live:
                continue
            m.BATCH_SIZE.observe(len(live))
            self._large = _large(live)
            if self._large:  # small requests already in line need not wait for it either
                self._drain()
                self._express.extend(i for i in self._waiting if i.cost <= EXPRESS_TOKENS)
                self._waiting = [i for i in self._waiting if i.cost > EXPRESS_TOKENS]
            try:
                self._settle(live, await loop.run_in_executor(self.executor, self._rank, live))
            except Exception as e:  # noqa: BLE001 - find the request at fault: rank each one alone
                if len(live) == 1:
                    self._fail(live[0], e)
                    continue
                logger.warning("a batch of %d failed (%s); ranking its requests one at a time", len(live), e)
                for item in live:
                    if not item.alive():
                        continue
                    try:
                        self._settle([item], await loop.run_in_executor(self.executor, self._rank, [item]))
                    except Exception as e1:  # noqa: BLE001
                        self._fail(item, e1)
            finally:
                self._large = False

    def _rank(self, items: list[_Item]) -> list[RankResponse]:
        """Rank `items` (in the ranking thread); a large batch's `alive()` checks also rank the express line."""
        large = _large(items) and not getattr(self._inline, "on", False)

        def checked(item: _Item) -> Callable[[], bool]:
            def alive() -> bool:
                slice_s = self._took * LARGE_SHARE / (1 - LARGE_SHARE)
                if self._express and time.monotonic() - self._looked >= max(EXPRESS_EVERY_S, slice_s):
                    self._run_express()
                return item.alive()
            return alive

        responses = self.rank([i.request for i in items], [checked(i) if large else i.alive for i in items])
        if len(responses) != len(items):
            raise RuntimeError(f"ranking returned {len(responses)} responses for {len(items)} requests")
        return responses

    def _run_express(self) -> None:
        """In the ranking thread, between two steps of a large batch: rank what waits on the express line (up to
        max_batch requests and LARGE_BATCH_TOKENS, so memory stays bounded), and hand the answers to the event
        loop; the rest waits for the next check."""
        self._looked = started = time.monotonic()
        items: list[_Item] = []
        tokens = 0
        while self._express and len(items) < self.config.max_batch:  # at most LARGE_BATCH_TOKENS beside the large
            if items and tokens + self._express[0].cost > LARGE_BATCH_TOKENS:
                break
            item = self._express.popleft()
            if item.alive():
                items.append(item)
                tokens += item.cost
        if not items:
            return
        assert self._loop is not None
        self._inline.on = True
        try:
            responses = self._rank(items)
        except Exception as e:  # noqa: BLE001 - the express batch alone fails, one request at a time
            for item in items:
                try:
                    self._loop.call_soon_threadsafe(self._settle, [item], self._rank([item]))
                except Exception as e1:  # noqa: BLE001
                    self._loop.call_soon_threadsafe(self._fail, item, e1)
            logger.warning("an express batch of %d failed (%s); ranked one at a time", len(items), e)
        else:
            m.BATCH_SIZE.observe(len(items))
            self._loop.call_soon_threadsafe(self._settle, items, responses)
        finally:
            self._inline.on = False
            self._looked = time.monotonic()
            self._took = self._looked - started

    @staticmethod
    def _settle(items: list[_Item], responses: list[RankResponse]) -> None:
        for i, r in zip(items, responses, strict=True):
            if not i.future.done():
                i.future.set_result(r)

    @staticmethod
    def _fail(item: _Item, e: Exception) -> None:
        if item.future.done():
            return
        if isinstance(e, ValueError):  # the ranker refused this request's content
            item.future.set_exception(InvalidInput(f"request: {e}"))
        else:
            logger.error("ranking failed", exc_info=e)
            item.future.set_exception(e)
