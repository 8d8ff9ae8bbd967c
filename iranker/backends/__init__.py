"""Backends that run the ranking model: transformers (in process, default), openai (HTTP), vllm (in process, GPU)."""

from __future__ import annotations

from iranker.backends.base import Backend, Choice, Generation

BACKENDS = ("transformers", "openai", "vllm")


def load_backend(kind: str = "transformers", model: str | None = None, **kwargs) -> Backend:
    """Create a backend by name; its heavy dependencies are imported only here."""
    if kind == "transformers":
        from iranker.backends.transformers import TransformersBackend

        return TransformersBackend(model, **kwargs)
    if kind == "openai":
        from iranker.backends.openai import OpenAIBackend

        if not kwargs.get("base_url"):
            raise ValueError("base_url: the openai backend needs the endpoint's API root, e.g. http://host/v1")
        return OpenAIBackend(kwargs.pop("base_url"), model or "iranker", **kwargs)
    if kind == "vllm":
        from iranker.backends.vllm import VLLMBackend

        return VLLMBackend(model, **kwargs)
    raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {kind!r}")


__all__ = ["BACKENDS", "Backend", "Choice", "Generation", "load_backend"]
