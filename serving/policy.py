"""What the server allows: limits, the operator's policy on methods and modes, the per-request budget, auth.

Every check raises an error that names the field or option and the limit, and none of them touches the model:
a request refused here never reaches a batch.
"""

from __future__ import annotations

import dataclasses
import hmac
import math

from kserve.errors import InvalidInput

from iranker.prompts import MAX_POOL
from iranker.schema import MAX_CANDIDATES, RankRequest

METHODS = ("iterative", "direct")
CPU_REQUEST_TOKENS = 6_144  # one window of 20 candidates at the 192-token cap, with its header and cue


@dataclasses.dataclass
class ServeConfig:
    max_queue: int = 64          # requests waiting to be ranked; beyond it: 503 + Retry-After
    max_batch: int = 16          # requests ranked together (their elimination steps share forward passes)
    max_wait_ms: float = 5.0     # how long the first request of a batch waits for company
    deadline_s: float = 60.0     # per request, queueing included; beyond it: 504
    max_instances: int = 32      # requests in one HTTP call
    max_candidates: int = MAX_CANDIDATES
    max_body_bytes: int = 4_000_000
    body_timeout_s: float = 10.0  # a POST body must arrive within this time once its headers have; beyond it: 408
    header_timeout_s: float = 10.0  # request headers must arrive within this time (serving/connections.py)
    max_connections_per_client: int = 64  # open connections per client address; 0: no bound
    token: str | None = None     # bearer token; None: no auth (behind a gateway that does it)
    retry_after_s: int = 1
    # policy: what clients may ask for (the operator opts in to the slower modes)
    methods: tuple[str, ...] = ("iterative",)
    allow_reasoning: bool = False
    max_passes: int | None = None  # per request: model passes (elimination decisions; direct: one); None = no cap
    # per request: prompt tokens the model prefills (iranker.ranker.estimate_cost); beyond it: 400. 0: no cap;
    # None: CPU_REQUEST_TOKENS with the in-process transformers backend, no cap with vLLM or a remote endpoint
    max_request_tokens: int | None = None
    max_batch_tokens: int | None = None  # a batch is formed up to this many estimated tokens (None: as above)
    window: int = 20             # the ranker's window and stride (to count the passes a request needs)
    stride: int = 10

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods: expected one or more of {', '.join(METHODS)}, got {list(self.methods)}")
        for name in ("body_timeout_s", "header_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0 seconds, got {getattr(self, name)}")
        if self.max_connections_per_client < 0:
            raise ValueError(f"max_connections_per_client: must be >= 0 (0: no bound), got "
                             f"{self.max_connections_per_client}")
        if (self.max_request_tokens or 0) < 0 or (self.max_batch_tokens is not None and self.max_batch_tokens < 1):
            raise ValueError(f"max_request_tokens: must be >= 0 (0: no cap) and max_batch_tokens >= 1, got "
                             f"{self.max_request_tokens} and {self.max_batch_tokens}")

    def token_limits_for(self, backend: str) -> None:
        """Fill the token limits left to the backend: one window of 20 candidates at the per-candidate token cap
        (CPU_REQUEST_TOKENS) for the in-process transformers backend, which ranks on the CPU by default; none for
        vLLM and remote endpoints (GPUs: the operator sets them)."""
        default = CPU_REQUEST_TOKENS if backend == "transformers" else 0
        if self.max_request_tokens is None:
            self.max_request_tokens = default
        if self.max_batch_tokens is None:
            self.max_batch_tokens = self.max_request_tokens or 1 << 30
        if self.max_passes is not None and self.max_passes < 1:
            raise ValueError(f"max_passes: must be >= 1, got {self.max_passes}")


class Overloaded(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"server overloaded: the ranking queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class Unauthorized(Exception):
    pass


def authorized(config: ServeConfig, authorization: str | None) -> bool:
    """The Authorization header carries the server's bearer token (always true when the server has none)."""
    if not config.token:
        return True
    return hmac.compare_digest((authorization or "").encode(), f"Bearer {config.token}".encode())


def passes_needed(n: int, method: str, window: int, stride: int) -> int:
    """Model passes the ranker spends on n candidates: direct one; iterative n-1 decisions within a window, and
    window-1 per sliding window beyond it."""
    if method == "direct" or n < 2:
        return 1 if method == "direct" else 0
    if n <= window:
        return n - 1
    return (math.ceil((n - window) / stride) + 1) * (window - 1)


def check_policy(req: RankRequest, config: ServeConfig, at: str) -> None:
    """Refuse, naming the option and the limit, what the operator did not enable or what exceeds the budget."""
    method = req.options.method
    if method not in config.methods:
        raise InvalidInput(f"{at}.options.method: {method!r} is not enabled on this server (enabled: "
                           f"{', '.join(config.methods)}; the operator enables it with --allow-method {method})")
    if req.options.reasoning and not config.allow_reasoning:
        raise InvalidInput(f"{at}.options.reasoning: reasoning mode is not enabled on this server (the operator "
                           "enables it with --allow-reasoning)")
    if method == "direct" and len(req.candidates) > MAX_POOL:
        raise InvalidInput(f"{at}.candidates: direct ranking takes at most {MAX_POOL} candidates (one label each), "
                           f"got {len(req.candidates)}; use the iterative method")
    if config.max_passes is not None:
        need = passes_needed(len(req.candidates), method, config.window, config.stride)
        if need > config.max_passes:
            raise InvalidInput(f"{at}: needs {need} model passes ({len(req.candidates)} candidates, {method}); this "
                               f"server allows at most {config.max_passes} per request (--max-passes)")


def check_cost(tokens: int, n_candidates: int, config: ServeConfig, at: str) -> None:
    """Refuse a request whose estimated prompt tokens exceed the server's per-request cap, saying both numbers."""
    if config.max_request_tokens and tokens > config.max_request_tokens:
        raise InvalidInput(f"{at}: ranking it would take about {tokens} prompt tokens ({n_candidates} candidates); "
                           f"this server allows at most {config.max_request_tokens} per request "
                           "(--max-request-tokens): send fewer or shorter candidates, or split the request")
