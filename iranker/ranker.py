"""IterativeRanker (eliminate the worst candidate, step by step) and DirectRanker (one call, whole order).

Both batch the work of many requests: at every step the pending decisions of all requests in a batch go to the
backend together.

Iterative ranking of n candidates takes n-1 decisions; the ranking is the survivor, then the eliminated in reverse
order. Fast mode (default): one forward pass per decision, restricted to the pool's labels - always valid.
Reasoning mode: the model writes `<think>..</think><answer>[X]</answer>`; a response that does not parse is counted
in `parse_failures` and the step eliminates the pool's LAST candidate (the lowest in the request's order, e.g.
the first stage's) - the documented fallback.

Layouts of fast mode:
- `cached` (default where the backend has it): list the candidates once, mask the eliminated ones out of the
  key/value cache at each step (see `iranker.backends.transformers.CachedPools`).
- `relist`: re-list the remaining pool, relabelled A.., in a fresh prompt at every step (the method as published;
  also what remote backends do, where the server's prefix cache shares the header).
Pools hold at most `window` candidates (<= 26 labels; in fast mode at most the tokenizer's single-token labels,
`fast_alphabet`). A longer list is ranked with sliding windows (as RankGPT):
rank the last `window` candidates of the request's order fully, move the window up by `stride` and rank again,
until the window reaches the top; the best candidates bubble up. `eliminated` then lists every window's
eliminations, numbered across windows.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from iranker.backends.base import Backend
from iranker.parsing import parse_label, parse_permutation
from iranker.prompts import LABELS, MAX_POOL, RankContext, build_context, direct_prompt, iterative_prompt
from iranker.schema import Elimination, RankRequest, RankResponse, Usage
from iranker.thoughts import ThoughtStore, retrieval_text


@dataclass
class RankerConfig:
    reasoning: bool = False  # think + answer instead of one restricted forward pass
    layout: Literal["cached", "relist"] = "cached"  # fast mode only; see module doc
    window: int = 20  # most candidates in one prompt
    stride: int = 10  # how far a sliding window moves up on longer lists
    batch_size: int = 16  # requests ranked together
    max_new_tokens: int = 256  # reasoning mode, per step
    temperature: float = 0.0  # reasoning / direct generation
    max_words: int = 120  # per candidate text shown to the model
    speculate: int = 1  # cached layout: guessed eliminations verified in the same pass (exact; 0 = off)
    thoughts: ThoughtStore | None = None  # thought templates retrieved per request (iranker.thoughts)
    templates_k: int = 3  # how many
    open_think: bool = False  # reasoning mode: the assistant turn opens with <think> (iranker.prompts.iterative_prompt)

    def __post_init__(self):
        if not 2 <= self.window <= MAX_POOL:
            raise ValueError(f"window: must be between 2 and {MAX_POOL}, got {self.window}")
        if not 1 <= self.stride <= self.window:
            raise ValueError(f"stride: must be between 1 and window ({self.window}), got {self.stride}")
        if self.speculate < 0:
            raise ValueError(f"speculate: must be >= 0, got {self.speculate}")
        if self.layout not in ("cached", "relist"):
            raise ValueError(f"layout: expected 'cached' or 'relist', got {self.layout!r}")
        if self.templates_k < 0:
            raise ValueError(f"templates_k: must be >= 0, got {self.templates_k}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")


PARSE_FAILURE = "parse failure"  # how a reasoning-mode elimination that fell back begins its `reasoning`


def request_context(req: RankRequest, config: RankerConfig) -> RankContext:
    """The context block `req` is ranked with under `config`: with its thought templates when the configuration has
    a store - the one place evaluation, serving, cost estimates and printed prompts build it, so they render
    templates alike. Training shows no templates (the method retrieves them at inference)."""
    templates: list[str] = []
    if config.thoughts is not None and config.templates_k:
        text = retrieval_text(req.scenario, req.query, req.history)
        templates = config.thoughts.nearest(req.scenario, text, config.templates_k)
    return build_context(req, config.max_words, templates=templates)


def _always() -> bool:
    return True


def fast_alphabet(backend: Backend, pool: int) -> tuple[str, ...]:
    """The labels fast mode gives a pool of `pool` candidates on this backend: its tokenizer's single-token letters
    (`PromptEncoder.fast_labels`, a clear error when there are too few), or A..Z where the backend reads any
    spelling of a label (a remote endpoint without a local tokenizer)."""
    encoder = getattr(backend, "encoder", None)
    return encoder.fast_labels(pool) if encoder is not None else LABELS


@dataclass
class _Task:
    req: RankRequest
    ctx: RankContext
    pool: list[int]  # candidate indices in the pool, in request order
    eliminated: list[Elimination] = field(default_factory=list)
    eliminated_idx: list[int] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    parse_failures: int = 0
    alive: Callable[[], bool] = _always  # asked between steps: False = the caller no longer wants the answer
    dropped: bool = False

    @property
    def active(self) -> bool:
        return len(self.pool) > 1 and not self.dropped

    def poll(self) -> None:
        """Ask the caller, once per elimination step, whether the answer is still wanted."""
        if len(self.pool) > 1 and not self.dropped and not self.alive():
            self.dropped = True

    def eliminate(self, pos: int, reasoning: str | None = None) -> None:
        cid = self.pool.pop(pos)
        self.eliminated_idx.append(cid)
        self.eliminated.append(Elimination(id=self.req.candidates[cid].id, step=len(self.eliminated) + 1,
                                           reasoning=reasoning))

    def count(self, prompt_tokens: int, completion_tokens: int, calls: int = 1) -> None:
        self.usage.llm_calls += calls
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens

    def ranked(self) -> list[int]:
        """Survivor first, then the eliminated in reverse order."""
        return self.pool + self.eliminated_idx[::-1]

    def absorb(self, window: _Task) -> None:
        """Take over the trace of a sliding window's run."""
        for e in window.eliminated:
            self.eliminated.append(e.model_copy(update={"step": len(self.eliminated) + 1}))
        for k in ("llm_calls", "prompt_tokens", "completion_tokens"):
            setattr(self.usage, k, getattr(self.usage, k) + getattr(window.usage, k))
        self.parse_failures += window.parse_failures

    def response(self, model: str, order: list[int] | None = None) -> RankResponse:
        ranking = [self.req.candidates[i].id for i in (order if order is not None else self.ranked())]
        if self.req.top_k:
            ranking = ranking[: self.req.top_k]
        return RankResponse(ranking=ranking, eliminated=self.eliminated, model=model, usage=self.usage,
                            parse_failures=self.parse_failures)


class _Progress:
    def __init__(self, total: int, enabled: bool, what: str):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit="req", file=sys.stderr)

    def update(self, n: int) -> None:
        if self.bar:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar:
            self.bar.close()


class _Ranker:
    """Batches requests (`config.batch_size` at a time) through `_rank_batch`, with an optional progress bar."""

    what = "ranking"

    def __init__(self, backend: Backend, config: RankerConfig | None = None):
        self.backend = backend
        self.config = config or RankerConfig()

    def rank(self, request: RankRequest) -> RankResponse:
        return self.rank_many([request])[0]

    def rank_many(self, requests: Sequence[RankRequest], progress: bool = False,
                  alive: Sequence[Callable[[], bool]] | None = None) -> list[RankResponse]:
        """`alive[i]()` is asked between elimination steps; once False, request i is ranked no further (its
        response then holds the eliminations made so far)."""
        out: list[RankResponse] = []
        alive = list(alive) if alive is not None else [_always] * len(requests)
        bar = _Progress(len(requests), progress, self.what)
        for start in range(0, len(requests), self.config.batch_size):
            batch = requests[start: start + self.config.batch_size]
            out.extend(self._rank_batch(batch, alive[start: start + len(batch)]))
            bar.update(len(batch))
        bar.close()
        return out

    def _rank_batch(self, batch: Sequence[RankRequest], alive: Sequence[Callable[[], bool]]) -> list[RankResponse]:
        raise NotImplementedError


class IterativeRanker(_Ranker):
    def _rank_batch(self, batch: Sequence[RankRequest], alive: Sequence[Callable[[], bool]]) -> list[RankResponse]:
        cfg = self.config
        tasks = [_Task(req, request_context(req, cfg), list(range(len(req.candidates))), alive=ok)
                 for req, ok in zip(batch, alive, strict=True)]
        largest = max((min(len(t.pool), cfg.window) for t in tasks), default=0)
        self.alphabet = LABELS if cfg.reasoning else fast_alphabet(self.backend, largest)  # refused before any work
        self._run([t for t in tasks if len(t.pool) <= cfg.window])
        orders = self._run_windows([t for t in tasks if len(t.pool) > cfg.window])
        return [t.response(self.backend.name, orders.get(id(t))) for t in tasks]

    def _run(self, tasks: list[_Task]) -> None:
        if self._use_cached():
            self._run_cached(tasks)
        else:
            self._run_relist(tasks)

    def _run_windows(self, tasks: list[_Task]) -> dict[int, list[int]]:
        """Sliding windows, bottom to top; all tasks' current windows are ranked together."""
        w, stride = self.config.window, self.config.stride
        orders = {id(t): list(t.pool) for t in tasks}
        starts = {id(t): len(t.pool) - w for t in tasks}
        pending = list(tasks)
        while pending:
            windows = [_Task(t.req, t.ctx, orders[id(t)][starts[id(t)]: starts[id(t)] + w], alive=t.alive)
                       for t in pending]
            self._run(windows)
            still = []
            for t, win in zip(pending, windows):
                s = starts[id(t)]
                orders[id(t)][s: s + w] = win.ranked()
                t.absorb(win)
                if s > 0 and not win.dropped:
                    starts[id(t)] = max(s - stride, 0)
                    still.append(t)
            pending = still
        return orders

    def _use_cached(self) -> bool:
        return not self.config.reasoning and self.config.layout == "cached" and hasattr(self.backend, "open_pools")

    def _run_cached(self, tasks: list[_Task]) -> None:
        tasks = [t for t in tasks if t.active]
        if not tasks:
            return
        session = self.backend.open_pools([iterative_prompt(t.ctx, t.pool, alphabet=self.alphabet) for t in tasks],
                                          speculate=self.config.speculate, alive=[t.alive for t in tasks])
        first = [list(t.pool) for t in tasks]  # item position i of prompt b is candidate first[b][i]
        for t, n in zip(tasks, session.prompt_tokens):
            t.usage.prompt_tokens += n
        while True:
            for t in tasks:
                t.poll()
            if not any(t.active for t in tasks):
                return
            # a finished or dropped prompt keeps a pool of one: it gets no more decisions
            remaining = [[first[b].index(c) for c in (t.pool if t.active else t.pool[:1])]
                         for b, t in enumerate(tasks)]
            for b, (t, decisions) in enumerate(zip(tasks, session.decide(remaining))):
                for j, (item, ch) in enumerate(decisions):
                    t.count(ch.prompt_tokens, ch.completion_tokens, calls=int(j == 0))  # one pass, many decisions
                    t.eliminate(t.pool.index(first[b][item]))

    def _run_relist(self, tasks: list[_Task]) -> None:
        cfg = self.config
        while True:
            for t in tasks:
                t.poll()
            active = [t for t in tasks if t.active]
            if not active:
                return
            prompts = [iterative_prompt(t.ctx, t.pool, reasoning=cfg.reasoning, alphabet=self.alphabet,
                                        open_think=cfg.open_think) for t in active]
            if cfg.reasoning:
                gens = self.backend.generate(prompts, cfg.max_new_tokens, cfg.temperature)
                for t, p, g in zip(active, prompts, gens):
                    t.count(g.prompt_tokens, g.completion_tokens)
                    ans = parse_label(p.answer_prefix + g.text, p.labels, reasoning=True)
                    if ans.ok:
                        t.eliminate(p.labels.index(ans.label), ans.think)
                    else:
                        t.parse_failures += 1
                        t.eliminate(len(t.pool) - 1, f"{PARSE_FAILURE} ({ans.error}); fallback: removed the last")
            else:
                for t, p, ch in zip(active, prompts, self.backend.choose(prompts)):
                    t.count(ch.prompt_tokens, ch.completion_tokens)
                    if ch.label is None:
                        t.parse_failures += 1
                        t.eliminate(len(t.pool) - 1, f"no valid choice ({ch.error}); fallback: removed the last")
                    else:
                        t.eliminate(p.labels.index(ch.label))


class DirectRanker(_Ranker):
    """One generation returns the whole order (`[B] > [A] > ...`), parsed strictly.

    Candidates the answer leaves out follow in request order; an answer with any missing, duplicate or unknown
    label counts as one parse failure.
    """

    what = "ranking (direct)"

    def _rank_batch(self, batch: Sequence[RankRequest], alive: Sequence[Callable[[], bool]]) -> list[RankResponse]:
        cfg = self.config
        prompts = []
        for req in batch:
            if len(req.candidates) > MAX_POOL:
                raise ValueError(f"candidates: direct ranking takes at most {MAX_POOL} candidates, "
                                 f"got {len(req.candidates)}; use the iterative method")
            prompts.append(direct_prompt(request_context(req, cfg), list(range(len(req.candidates))),
                                         reasoning=cfg.reasoning))
        budget = 4 * max(len(p.labels) for p in prompts) + 8 + (cfg.max_new_tokens if cfg.reasoning else 0)
        out = []
        for req, p, g in zip(batch, prompts, self.backend.generate(prompts, budget, cfg.temperature)):
            ans = parse_permutation(g.text, p.labels, reasoning=cfg.reasoning)
            order = [p.labels.index(lab) for lab in ans.order]
            order += [i for i in range(len(p.labels)) if i not in order]
            ranking = [req.candidates[i].id for i in order][: req.top_k or None]
            out.append(RankResponse(ranking=ranking, eliminated=[], model=self.backend.name,
                                    usage=Usage(llm_calls=1, prompt_tokens=g.prompt_tokens,
                                                completion_tokens=g.completion_tokens),
                                    parse_failures=0 if ans.ok else 1))
        return out


def rank_requests(backend: Backend, requests: Sequence[RankRequest], config: RankerConfig | None = None,
                  progress: bool = False, alive: Sequence[Callable[[], bool]] | None = None) -> list[RankResponse]:
    """Rank requests as each one's `options` ask (method, reasoning), batching those that ask alike.

    `alive[i]()` (optional) is asked between elimination steps: once it returns False, request i is ranked no
    further - the server drops a request whose deadline passed instead of ranking it to the end."""
    config = config or RankerConfig()
    groups: dict[tuple[str, bool], list[int]] = {}
    for i, req in enumerate(requests):
        groups.setdefault((req.options.method, req.options.reasoning), []).append(i)
    out: list[RankResponse | None] = [None] * len(requests)
    for (method, reasoning), idx in groups.items():
        cfg = replace(config, reasoning=reasoning)
        ranker = IterativeRanker(backend, cfg) if method == "iterative" else DirectRanker(backend, cfg)
        keep = [alive[i] for i in idx] if alive is not None else None
        for i, resp in zip(idx, ranker.rank_many([requests[i] for i in idx], progress=progress, alive=keep)):
            out[i] = resp
    return out  # type: ignore[return-value]


def first_prompt(backend: Backend, config: RankerConfig, req: RankRequest) -> str:
    """The first model call's prompt for `req`, exactly as the model is shown it (`iranker rank --print-prompts`):
    in-process backends decode the very token ids they run, a remote endpoint gets the text it is sent."""
    from iranker.prompts import render_plain

    ctx = request_context(req, config)
    n = len(req.candidates)
    reasoning = req.options.reasoning
    if req.options.method == "direct":
        prompt = direct_prompt(ctx, list(range(n)), reasoning=reasoning)
    else:
        pool = list(range(n))[-config.window:]  # a longer list is ranked bottom window first
        prompt = iterative_prompt(ctx, pool, reasoning=reasoning, open_think=config.open_think,
                                  alphabet=LABELS if reasoning else fast_alphabet(backend, len(pool)))
    if hasattr(backend, "render"):
        return backend.render(prompt)
    encoder = getattr(backend, "encoder", None)
    if encoder is None:
        return render_plain(prompt)
    return encoder.tokenizer.decode(encoder.encode(prompt).ids)


@dataclass(frozen=True)
class RequestCost:
    """What ranking a request costs the model: the prompt tokens it prefills and the passes it makes."""

    tokens: int
    passes: int


def estimate_cost(backend: Backend, config: RankerConfig, req: RankRequest) -> RequestCost:
    """The prompt tokens and model passes ranking `req` will take under `config`, before it runs (the server's
    admission and batching use it; serving/policy.py).

    Candidates are encoded as the model will see them (the backend's tokenizer, the per-candidate token cap), in
    prompts of at most `window`; the estimate then follows the ranker: the cached layout prefills each sliding
    window's prompt once and re-reads its closing cue per decision, the relist layout (and reasoning mode) prefills the
    remaining pool at every step, and reasoning mode adds up to `max_new_tokens` generated per step. Without a
    tokenizer (a test backend), four characters count as a token."""
    ctx = request_context(req, config)
    n, w = len(req.candidates), config.window
    encoder = getattr(backend, "encoder", None)
    overhead, tail, item_tokens = 0, 4, []
    for start in range(0, max(n, 1), w):
        pool = list(range(start, min(start + w, n)))
        prompt = (direct_prompt(ctx, pool) if req.options.method == "direct" else
                  iterative_prompt(ctx, pool, alphabet=LABELS))
        if encoder is not None:
            enc = encoder.encode(prompt)
            overhead = max(overhead, len(enc.head) + len(enc.tail))
            tail = len(enc.tail)
            item_tokens += [len(i) for i in enc.items]
        else:
            overhead = max(overhead, (len(prompt.head) + len(prompt.tail) + len(prompt.system or "")) // 4 + 1)
            item_tokens += [len(line) // 4 + 1 for line in prompt.items]
    mean_item = sum(item_tokens) / max(len(item_tokens), 1)
    reasoning = req.options.reasoning
    if req.options.method == "direct":
        generated = (config.max_new_tokens if reasoning else 4 * n)
        return RequestCost(overhead + sum(item_tokens) + generated, 1)
    if n < 2:
        return RequestCost(0, 0)
    windows = 1 if n <= w else math.ceil((n - w) / config.stride) + 1
    size = min(n, w)
    if reasoning or config.layout == "relist" or not hasattr(backend, "open_pools"):
        per_window = sum(overhead + k * mean_item for k in range(2, size + 1))  # the remaining pool, every step
    else:
        per_window = overhead + size * mean_item + tail * (size - 1)  # listed once; each decision re-reads the cue
    passes = windows * (size - 1)
    tokens = windows * per_window + (passes * config.max_new_tokens if reasoning else 0)
    return RequestCost(math.ceil(tokens), passes)


def model_thoughts(model: str | None) -> Path:
    """The thought store a model folder ships (`thoughts/`, a reasoning-mode training run's), for a model saved with
    `templates_k` > 0; a ValueError when it has none."""
    from iranker.settings import model_folder

    folder = model_folder(model) / "thoughts" if model else None
    if folder is None or not folder.is_dir():
        raise ValueError(f"thought templates: {model}: its ranking settings show templates_k thought templates per "
                         "request, but it has no thoughts/ folder (a reasoning-mode training run's final/ ships one); "
                         "give a store with --thought-templates or turn them off with --templates-k 0")
    return folder


def open_model(model: str | None = None, backend: str = "transformers", explicit: dict | None = None,
               warn=None, thoughts: str | None = None, templates_k: int | None = None,
               **backend_options) -> tuple[Backend, RankerConfig]:
    """The backend and the ranker configuration to rank `model` with - the one way `rank`, `evaluate`, the
    pipeline's evaluate step and `serve` open a model.

    The ranking settings are those saved with a trained model folder (`iranker.settings`), else the defaults;
    `explicit` values (layout, max_words, window, stride, max_item_tokens; None = not given) take precedence, each
    one that differs from the saved value with a warning. Thought templates (`iranker.thoughts`): `thoughts`, a
    store folder whose `templates_k` nearest thoughts (None: the saved setting, else 3) are shown with each request;
    without it, a model saved with `templates_k` > 0 is shown its own store (its `thoughts/` folder), and an
    explicit `templates_k` of 0 turns that off. The store is read before the model loads, so a bad one fails fast.
    For the openai backend the settings come from the
    `tokenizer` folder (the trained model's own folder, whose chat template renders the prompts).
    """
    from iranker.backends import load_backend
    from iranker.settings import settings_for

    source = backend_options.get("tokenizer") if backend == "openai" else model
    settings = settings_for(source if isinstance(source, str) else None, {**(explicit or {}), "templates_k":
                                                                           templates_k}, warn)
    store = None
    if thoughts:
        store = ThoughtStore.load(thoughts)
        settings = settings.model_copy(update={"templates_k": settings.templates_k or 3})
    elif settings.templates_k:
        store = ThoughtStore.load(model_thoughts(source))
    if backend in ("transformers", "vllm"):
        backend_options.setdefault("max_item_tokens", settings.max_item_tokens)
    loaded = load_backend(backend, model, **backend_options)
    encoder = getattr(loaded, "encoder", None)
    scheme = getattr(encoder, "label_scheme", None)
    if settings.label_scheme and scheme and scheme != settings.label_scheme:
        raise ValueError(f"label_scheme: the model was trained reading labels as {settings.label_scheme!r}, but "
                         f"its tokenizer now reads them as {scheme!r}; rank it with the tokenizer it was trained "
                         "with")
    alphabet = "".join(getattr(encoder, "labels", ()))
    if settings.labels is not None and encoder is not None and alphabet != settings.labels:
        raise ValueError(f"labels: the model was trained labelling candidates {settings.labels!r} in fast mode, but "
                         f"its tokenizer now reads {alphabet!r} as single tokens; rank it with the tokenizer it was "
                         "trained with")
    config = RankerConfig(layout=settings.layout, window=settings.window, stride=settings.stride,
                          max_words=settings.max_words, thoughts=store, templates_k=settings.templates_k)
    return loaded, config
