"""Remote backend: any OpenAI-compatible completions endpoint (KServe huggingfaceserver with vLLM, vLLM, TGI...).

`base_url` is the API root, e.g. `http://iranker-predictor/openai/v1` (KServe) or `http://localhost:8000/v1`
(vLLM); requests go to `{base_url}/completions`, one prompt per request, `concurrency` at a time, so that usage is
exact per prompt and any server works.

Prompts are rendered with the model's chat template when a tokenizer is given (`tokenizer=`: a folder, a hub id or
the embedded alias), else as plain "System/User/Assistant" text.

Fast mode asks for one token with its top log-probabilities and picks the most likely label still in the pool.
With a tokenizer, the rendered prompt ends where the label token starts and a returned token counts as a label only
if it is that tokenizer's label token (`[A` in the merged label scheme, `A` after `[` in the split one; see
`iranker.backends.tokens`); without one, `A`, `[A` and `[A]` all count.
When none of the pool's labels is among the returned top tokens, the choice fails with a reason and the ranker
counts it. With `allowed_token_ids=True` (vLLM's extension; needs the tokenizer) the server itself restricts the
token to the pool's labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from iranker.backends.base import Choice, Generation, choice_from_scores
from iranker.prompts import Prompt, render_plain


class OpenAIBackend:
    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, tokenizer: str | None = None,
                 concurrency: int = 8, timeout: float = 120.0, top_logprobs: int = 20,
                 allowed_token_ids: bool = False, client: httpx.Client | None = None):
        self.name = model
        self.model = model
        self.top_logprobs = top_logprobs
        self.concurrency = concurrency
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.Client(base_url=base_url.rstrip("/") + "/", headers=headers, timeout=timeout)
        self.encoder = None
        if tokenizer is not None:
            from transformers import AutoTokenizer

            from iranker.backends.tokens import PromptEncoder
            from iranker.models import resolve_model

            self.encoder = PromptEncoder(AutoTokenizer.from_pretrained(resolve_model(tokenizer)))
        if allowed_token_ids and self.encoder is None:
            raise ValueError("allowed_token_ids: needs tokenizer= to know the labels' token ids")
        self.allowed_token_ids = allowed_token_ids

    def render(self, prompt: Prompt) -> str:
        return self.encoder.render(prompt) if self.encoder else render_plain(prompt)

    def label_of(self, token: str) -> str | None:
        """The label a returned token (its text) stands for, or None."""
        if self.encoder is not None:
            return self.encoder.label_of(token)
        return token.strip().removeprefix("[").removesuffix("]") or None

    def completion_request(self, prompt: Prompt, max_tokens: int, temperature: float, fast: bool) -> dict:
        body = {"model": self.model, "prompt": self.render(prompt), "max_tokens": max_tokens,
                "temperature": temperature}
        if fast:
            body["logprobs"] = self.top_logprobs
            if self.allowed_token_ids:
                body["allowed_token_ids"] = [self.encoder.label_ids[lab] for lab in prompt.labels]
        return body

    def _post(self, body: dict) -> dict:
        resp = self.client.post("completions", json=body)
        if resp.status_code != 200:
            raise RuntimeError(f"{self.client.base_url}completions answered {resp.status_code}: {resp.text[:300]}")
        data = resp.json()
        if not data.get("choices"):
            raise RuntimeError(f"{self.client.base_url}completions: response has no choices: {str(data)[:300]}")
        return data

    def _map(self, fn, items):
        if len(items) <= 1 or self.concurrency <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, items))

    def choose(self, prompts: Sequence[Prompt]) -> list[Choice]:
        def one(prompt: Prompt) -> Choice:
            data = self._post(self.completion_request(prompt, 1, 0.0, fast=True))
            usage = data.get("usage") or {}
            n_prompt = int(usage.get("prompt_tokens", 0))
            choice = data["choices"][0]
            top = ((choice.get("logprobs") or {}).get("top_logprobs") or [{}])[0] or {}
            scores: dict[str, float] = {}
            for token, lp in top.items():
                lab = self.label_of(token)
                if lab in prompt.labels and (lab not in scores or lp > scores[lab]):
                    scores[lab] = lp
            if not scores:
                text = self.label_of(choice.get("text", ""))
                if text in prompt.labels:
                    return Choice(text, {}, None, n_prompt, 1)
                return Choice(None, {}, f"no pool label among the top {self.top_logprobs} tokens "
                                        f"(text {choice.get('text', '')!r})", n_prompt, 1)
            labs = list(scores)
            return choice_from_scores(labs, [scores[lab] for lab in labs], n_prompt)

        return self._map(one, list(prompts))

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int, temperature: float = 0.0) -> list[Generation]:
        def one(prompt: Prompt) -> Generation:
            data = self._post(self.completion_request(prompt, max_new_tokens, temperature, fast=False))
            usage = data.get("usage") or {}
            return Generation(data["choices"][0].get("text", ""), int(usage.get("prompt_tokens", 0)),
                              int(usage.get("completion_tokens", 0)))

        return self._map(one, list(prompts))
