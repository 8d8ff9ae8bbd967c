"""Turning a `Prompt` into token ids with the tokenizer's chat template, part by part.

Each part (head, every candidate line, tail) is tokenised on its own and the ids concatenated, so the token span
of every candidate is known exactly and each candidate's tokens can be capped. Training, evaluation and serving
all encode prompts here, so they see the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from iranker.prompts import LABELS, Prompt

_SENTINEL = "\u2063IRANKER_USER\u2063"


@dataclass(frozen=True)
class EncodedPrompt:
    head: list[int]  # chat header + system + the context block
    items: list[list[int]]  # one list per candidate line
    tail: list[int]  # question + end of the user turn + assistant header + answer prefix

    @property
    def ids(self) -> list[int]:
        return self.head + [t for item in self.items for t in item] + self.tail

    def __len__(self) -> int:
        return len(self.head) + sum(len(i) for i in self.items) + len(self.tail)


class PromptEncoder:
    def __init__(self, tokenizer, max_item_tokens: int = 192):
        self.tokenizer = tokenizer
        self.max_item_tokens = max_item_tokens
        self._chat: dict[str, tuple[str, str]] = {}
        self._newline = self._encode("\n")
        self.label_ids = self._label_token_ids()

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def _label_token_ids(self) -> dict[str, int]:
        """The token that follows the answer prefix `[` for each label; each label must be exactly one token."""
        base = self._encode("[")
        out = {}
        for lab in LABELS:
            ids = self._encode("[" + lab)
            if ids[: len(base)] != base or len(ids) != len(base) + 1:
                raise ValueError(f"tokenizer: label {lab!r} after '[' is not one token ({ids}); fast mode needs "
                                 "single-token labels - use reasoning mode or another model")
            out[lab] = ids[-1]
        return out

    def chat_frame(self, system: str) -> tuple[str, str]:
        """(text before the user content, text after it up to the assistant's turn) for this system message."""
        if system not in self._chat:
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": _SENTINEL}]
            text = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            before, sep, after = text.partition(_SENTINEL)
            if not sep:
                raise ValueError("tokenizer: its chat template drops the user message")
            self._chat[system] = (before, after)
        return self._chat[system]

    def encode(self, prompt: Prompt) -> EncodedPrompt:
        before, after = self.chat_frame(prompt.system)
        items = []
        for line in prompt.items:
            ids = self._encode(line)
            if len(ids) > self.max_item_tokens:
                ids = ids[: self.max_item_tokens - len(self._newline)] + self._newline
            items.append(ids)
        return EncodedPrompt(self._encode(before + prompt.head), items,
                             self._encode(prompt.tail + after + prompt.answer_prefix))

    def render(self, prompt: Prompt) -> str:
        """The full prompt as text (for completion endpoints): what `encode` tokenises, without its per-candidate
        token cap (candidate texts are already capped in words by `sanitize`)."""
        before, after = self.chat_frame(prompt.system)
        return before + prompt.user + after + prompt.answer_prefix
