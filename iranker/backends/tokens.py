"""Turning a `Prompt` into token ids with the tokenizer's chat template, part by part.

Each part (head, every candidate line, tail) is tokenised on its own and the ids concatenated, so the token span
of every candidate is known exactly and each candidate's tokens can be capped. Training, evaluation and serving
all encode prompts here, so they see the same ids.

Fast mode reads the logits of ONE label token right after the answer prefix `[`. How a tokenizer writes `[A` at
that position differs between families, and within a family between letters, so the label scheme and the letters
fast mode labels candidates with are decided per tokenizer by probing it in the exact context where the label is
read (the end of the chat template's assistant header), never assumed:

- "split": `[` is a token of its own and each letter is one token after it (SmolLM2, Llama-3 style). The encoded
  tail ends with the `[` token; the label tokens are `A`..`Z`.
- "merged": the tokenizer writes `[A` as ONE token where it starts a line or a turn (Qwen2.5). The `[` is then
  part of the label token: the encoded (and rendered) tail ends with the assistant header, and the label tokens
  are `[A`..`[Z` as the tokenizer writes them there - for the letters it merges: the real Qwen2.5 vocabulary has no
  `[O` and `[Q` tokens, so its fast-mode alphabet is the other 24 letters (`labels`), in order.
The scheme that reads the most letters wins. Reasoning mode reads labels from generated text and needs none of
this: it labels pools A..Z with any tokenizer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from iranker.prompts import ANSWER_PREFIX, LABELS, TEMPLATES, Prompt, RankContext, iterative_prompt

_SENTINEL = "\u2063IRANKER_USER\u2063"


@dataclass(frozen=True)
class LabelScheme:
    """How fast mode's answer prefix and label are split into tokens.

    `answer_prefix` is the text that stands in the encoded/rendered prompt in place of the prompt's `[` (the tail
    ends with it, right before the label token); `label_format` is the label token's text (`{}` -> the letter).
    """

    name: str
    answer_prefix: str
    label_format: str

    def label_text(self, label: str) -> str:
        return self.label_format.format(label)


SPLIT = LabelScheme("split", answer_prefix=ANSWER_PREFIX, label_format="{}")
MERGED = LabelScheme("merged", answer_prefix="", label_format=ANSWER_PREFIX + "{}")
SCHEMES: dict[str, LabelScheme] = {s.name: s for s in (SPLIT, MERGED)}  # tried in this order


@dataclass(frozen=True)
class EncodedPrompt:
    head: list[int]  # chat header + system + the context block
    items: list[list[int]]  # one list per candidate line
    tail: list[int]  # question + end of the user turn + assistant header (+ `[` in the split scheme)

    @property
    def ids(self) -> list[int]:
        return self.head + [t for item in self.items for t in item] + self.tail

    def __len__(self) -> int:
        return len(self.head) + sum(len(i) for i in self.items) + len(self.tail)


def special_tokens(tokenizer) -> list[str]:
    """Every special token string of a tokenizer (its named ones and every added token marked special), longest
    first."""
    found = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(tok, "special", False):
            found.add(str(tok.content if hasattr(tok, "content") else tok))
    return sorted((t for t in found if t and t.strip()), key=lambda t: (-len(t), t))


_DEFUSE = str.maketrans({"<": "\u2039", ">": "\u203a", "[": "(", "]": ")", "{": "(", "}": ")"})


def _defuse(token: str) -> str:
    out = token.translate(_DEFUSE)
    return out if out != token else token[0] + "\u200b" + token[1:]  # no bracket to change: split it


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


class PromptEncoder:
    """Encodes prompts for one tokenizer.

    `label_scheme` ("split" | "merged", or a `LabelScheme`) forces a scheme (e.g. the one a trained model's
    settings recorded); it is still probed and refused if this tokenizer reads no label that way.
    Attributes: `scheme` (the `LabelScheme`), `label_scheme` (its name), `answer_prefix` (the text the fast-mode
    tail ends with), `labels` (fast mode's alphabet), `label_ids` (label -> token id, for those letters),
    `label_texts` (label -> the label token's text) and `unreadable` (which letters are not one token, and why).
    Nothing here refuses a tokenizer: `fast_labels(n)` does, for a fast-mode pool larger than `labels`.
    """

    def __init__(self, tokenizer, max_item_tokens: int = 192, label_scheme: str | LabelScheme | None = None):
        self.tokenizer = tokenizer
        self.max_item_tokens = max_item_tokens
        self._chat: dict[str, tuple[str, str]] = {}
        self._newline = self._encode("\n")
        self.scheme, self.label_ids = self._choose_scheme(label_scheme)
        self.label_texts = {lab: self.tokenizer.decode([i]) for lab, i in self.label_ids.items()}
        self._by_text = {t.strip(): lab for lab, t in self.label_texts.items()}
        self.special_tokens = special_tokens(tokenizer)
        self._special = (re.compile("|".join(re.escape(t) for t in self.special_tokens))
                         if self.special_tokens else None)

    @property
    def label_scheme(self) -> str:
        return self.scheme.name

    @property
    def answer_prefix(self) -> str:
        return self.scheme.answer_prefix

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def _probe_tails(self) -> list[str]:
        """The text of every fast-mode tail before its answer prefix, exactly as `encode` tokenises it."""
        tails = []
        for scenario in TEMPLATES:
            p = iterative_prompt(RankContext(scenario, "", ("x",)), [0])
            tails.append(p.tail + self.chat_frame(p.system)[1])
        return list(dict.fromkeys(tails))

    def _try_scheme(self, scheme: LabelScheme, tails: list[str]) -> tuple[dict[str, int], dict[str, str]]:
        """(label -> token id for every letter that is exactly one token after every tail + the scheme's prefix,
        letter -> why not for the others)."""
        out: dict[str, int] = {}
        why: dict[str, str] = {}
        toks = self.tokenizer.convert_ids_to_tokens
        for lab in LABELS:
            for tail in tails:
                base = self._encode(tail + scheme.answer_prefix)
                ids = self._encode(tail + scheme.answer_prefix + scheme.label_text(lab))
                if ids[: len(base)] != base or len(ids) != len(base) + 1:
                    n = next((i for i, (a, b) in enumerate(zip(base, ids)) if a != b), min(len(base), len(ids)))
                    alone = f" where {scheme.answer_prefix!r} alone is {toks(base[n:])}" if base[n:] else ""
                    written = scheme.answer_prefix + scheme.label_text(lab)
                    why[lab] = (f"label {lab!r}: {written!r} after the assistant header is {toks(ids[n:])}{alone}, "
                                "not one token more")
                    break
                if out.setdefault(lab, ids[-1]) != ids[-1]:
                    why[lab] = f"label {lab!r} is a different token after different tails"
                    break
            else:
                if ids[-1] in list(out.values())[:-1]:
                    why[lab] = f"label {lab!r} shares its token with another label"
            if lab in why:
                out.pop(lab, None)
        return out, why

    def _choose_scheme(self, forced: str | LabelScheme | None) -> tuple[LabelScheme, dict[str, int]]:
        """The scheme that reads the most letters as one token (the first on a tie), and those letters' ids.

        Fast mode labels a pool with those letters, in order (`labels`); a tokenizer that reads none leaves
        `labels` empty and only reasoning mode can rank with it. A forced scheme that reads no letter is an error."""
        if isinstance(forced, str):
            if forced not in SCHEMES:
                raise ValueError(f"label_scheme: expected one of {sorted(SCHEMES)}, got {forced!r}")
            forced = SCHEMES[forced]
        candidates = [forced] if forced is not None else list(SCHEMES.values())
        tails = self._probe_tails()
        tried = []
        for scheme in candidates:
            ids, why = self._try_scheme(scheme, tails)
            tried.append((len(ids), scheme, ids, why))
        best = max(tried, key=lambda t: t[0])  # max keeps the first of equals
        if best[2]:  # which letters the chosen scheme cannot read, and why (the first two)
            self.unreadable = (f"{best[1].name}: " + "; ".join(list(best[3].values())[:2])) if best[3] else ""
        else:
            self.unreadable = "; ".join(f"{scheme.name}: {next(iter(why.values()))}" for _, scheme, _, why in tried)
        if forced is not None and not best[2]:
            raise ValueError(f"tokenizer {_tokenizer_name(self.tokenizer)!r}: label scheme {forced.name!r} reads no "
                             f"label as one token ({self.unreadable})")
        return best[1], best[2]

    @property
    def labels(self) -> tuple[str, ...]:
        """Fast mode's label alphabet: the letters this tokenizer reads as one token where the label is read, in
        order (all 26 for SmolLM2 and Llama-3; 24 for Qwen2.5, whose `[O` and `[Q` are two tokens)."""
        return tuple(self.label_ids)

    def fast_labels(self, pool: int) -> tuple[str, ...]:
        """The alphabet fast mode labels a pool of `pool` candidates with; a clear error when it is too short."""
        if pool > len(self.label_ids):
            readable = (f"reads only {len(self.label_ids)} labels as one token ({''.join(self.label_ids)})"
                        if self.label_ids else "reads no label as one token")
            why = f" ({self.unreadable})" if self.unreadable else ""
            raise ValueError(f"fast mode: tokenizer {_tokenizer_name(self.tokenizer)!r} {readable} where the "
                             f"label is read{why}, so a pool holds at most {len(self.label_ids)} "
                             f"candidates; this one has {pool}. Rank with a window of at most "
                             f"{len(self.label_ids)} or in reasoning mode")
        return self.labels

    def label_of(self, token_text: str) -> str | None:
        """The label a generated token's text stands for under this scheme (`[A` merged, `A` split), else None."""
        return self._by_text.get(token_text.strip())

    def _answer_prefix(self, prompt: Prompt) -> str:
        return self.scheme.answer_prefix if prompt.answer_prefix == ANSWER_PREFIX else prompt.answer_prefix

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

    def neutralize(self, text: str) -> str:
        """`text` with every special token of this tokenizer defused (`[INST]` -> `(INST)`, `<|im_end|>` ->
        `‹|im_end|›`), so untrusted text is never read as one. Applied to the user message (query, history,
        candidates) by `encode` and `render`; the chat template's own frame is left as it is."""
        if self._special is None:
            return text
        return self._special.sub(lambda mt: _defuse(mt.group(0)), text)

    def encode(self, prompt: Prompt) -> EncodedPrompt:
        """Token ids in parts; in fast mode the tail ends right before the label token."""
        before, after = self.chat_frame(prompt.system)
        items = []
        for line in prompt.items:
            ids = self._encode(self.neutralize(line))
            if len(ids) > self.max_item_tokens:
                ids = ids[: self.max_item_tokens - len(self._newline)] + self._newline
            items.append(ids)
        return EncodedPrompt(self._encode(before + self.neutralize(prompt.head)), items,
                             self._encode(self.neutralize(prompt.tail) + after + self._answer_prefix(prompt)))

    def render(self, prompt: Prompt) -> str:
        """The full prompt as text (for completion endpoints): what `encode` tokenises, without its per-candidate
        token cap (candidate texts are already capped in words by `sanitize`). In fast mode the text ends where
        the label token starts (after `[` in the split scheme, after the assistant header in the merged one)."""
        before, after = self.chat_frame(prompt.system)
        return before + self.neutralize(prompt.user) + after + self._answer_prefix(prompt)
