"""The LLM router: the model ranks the LLMs of a routes file for a chat request (routing scenario), the request
goes to the first, and falls down the ranking when an LLM answers 5xx or does not answer in time.

A routes file (YAML or JSON)::

    router: iranker-router          # the model name clients put in their chat requests
    default_preference: balance     # performance | balance | cost, when a request names none
    timeout_s: 60                   # per LLM attempt (connect and first byte)
    routes:
      - name: small                 # shown to the ranking model, returned in the x-iranker-route header
        description: "Llama 3.1 8B Instruct: fast, good at short factual answers"
        cost_per_million_tokens: 0.2
        base_url: http://small-llm.example/v1     # an OpenAI-compatible API root
        api_key_env: SMALL_LLM_KEY                # optional: the variable holding its key
        model: meta-llama/Llama-3.1-8B-Instruct   # optional: the model name the LLM expects (default: name)

The answer comes back as the LLM gave it (a stream is passed through chunk by chunk); a 4xx from an LLM is the
client's and is returned as is, without falling back.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from iranker.schema import Candidate, RankRequest, describe_error

logger = logging.getLogger("iranker.serving")


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=2000)
    cost_per_million_tokens: float = Field(ge=0)
    base_url: str = Field(pattern=r"^https?://")
    api_key_env: str | None = None
    model: str | None = None

    def text(self) -> str:
        return f"{self.name}: {self.description} Cost: ${self.cost_per_million_tokens:g} per million tokens."


class Routes(BaseModel):
    model_config = ConfigDict(extra="forbid")
    router: str = Field(default="iranker-router", min_length=1)
    default_preference: Literal["performance", "balance", "cost"] = "balance"
    timeout_s: float = Field(default=60.0, gt=0)
    routes: list[Route] = Field(min_length=2, max_length=26)

    @model_validator(mode="after")
    def _unique(self) -> Routes:
        names = [r.name for r in self.routes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"routes: duplicate names {dup}")
        return self


def load_routes(path: str | Path) -> Routes:
    """Read and check a routes file; errors name the file and the field."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: routes file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML or JSON ({e})") from None
    try:
        routes = Routes.model_validate(raw)
    except ValidationError as e:
        raise ValueError(f"{path}: {describe_error(e)}") from None
    for r in routes.routes:
        if r.api_key_env and not os.environ.get(r.api_key_env):
            logger.warning("route %s: %s is not set; calls go without a key", r.name, r.api_key_env)
    return routes


def routing_request(routes: Routes, query: str, preference: str, task: str | None = None) -> RankRequest:
    return RankRequest(scenario="routing", query=query, preference=preference, task=task,
                       candidates=[Candidate(id=r.name, text=r.text()) for r in routes.routes])


class Upstream:
    """One attempt's outcome: the status, headers and either the whole body or an open stream."""

    def __init__(self, route: Route, response: httpx.Response, stream: bool):
        self.route, self.response, self.stream = route, response, stream

    @property
    def status(self) -> int:
        return self.response.status_code

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.aiter_raw():
                yield chunk
        finally:
            await self.response.aclose()


class NoRoute(Exception):
    """Every LLM of the ranking failed (5xx or no answer)."""

    def __init__(self, tried: list[str]):
        super().__init__("no LLM answered: " + "; ".join(tried))
        self.tried = tried


class Router:
    def __init__(self, routes: Routes):
        self.routes = routes
        self.by_name = {r.name: r for r in routes.routes}
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(routes.timeout_s))

    async def forward(self, body: dict, ranking: list[str], stream: bool) -> tuple[Upstream, list[str]]:
        """Send `body` to the LLMs in `ranking` order until one answers without a 5xx; returns its answer (the
        stream still open when `stream`) and the attempts that failed before it."""
        tried: list[str] = []
        for name in ranking:
            route = self.by_name[name]
            headers = {"Content-Type": "application/json"}
            key = os.environ.get(route.api_key_env) if route.api_key_env else None
            if key:
                headers["Authorization"] = f"Bearer {key}"
            payload = {**body, "model": route.model or route.name}
            url = route.base_url.rstrip("/") + "/chat/completions"
            try:
                req = self.client.build_request("POST", url, content=json.dumps(payload), headers=headers)
                response = await self.client.send(req, stream=True)
            except httpx.HTTPError as e:  # connect error, timeout before the first byte
                tried.append(f"{name}: {type(e).__name__}")
                continue
            if response.status_code >= 500:
                tried.append(f"{name}: HTTP {response.status_code}")
                await response.aclose()
                continue
            if not stream:
                try:
                    await response.aread()
                except httpx.HTTPError as e:
                    tried.append(f"{name}: {type(e).__name__} while reading")
                    await response.aclose()
                    continue
            return Upstream(route, response, stream), tried
        raise NoRoute(tried)

    async def close(self) -> None:
        await self.client.aclose()
