"""In-process backend on transformers (the CPU default; also runs on one GPU).

Fast mode reads the label logits after the answer prefix `[`, restricted to the labels in the pool, so every
decision is valid. `open_pools` gives the cached elimination layout (see `CachedPools`).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache, StaticCache

from iranker.backends.base import Choice, Generation, choice_from_scores
from iranker.backends.tokens import EncodedPrompt, PromptEncoder
from iranker.prompts import Prompt

# a prompt is prefilled in chunks of this many tokens: an abandoned request stops at the next one (serving)
PREFILL_CHUNK = 1_024
CPU_STEP_TOKENS = 4_500  # cached-layout batch on a CPU: ~6 short (600-token) prompts, 2 long ones; docs: Benchmarks
# Decoders whose forward treats `inputs_embeds` as the first layer's input and runs every layer alike, so that the
# layers below a split can run once and the rest from their output; others run whole.
SPLIT_ARCHITECTURES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def splittable(config) -> bool:
    """Whether a decoder's layers can run in two parts (`run_layers`): a SPLIT_ARCHITECTURES model whose layers
    all attend fully (no sliding-window layers, whose cache slots a split would mislabel)."""
    types = getattr(config, "layer_types", None) or ["full_attention"]
    return (getattr(config, "model_type", None) in SPLIT_ARCHITECTURES and set(types) == {"full_attention"}
            and getattr(config, "sliding_window", None) is None)


@contextlib.contextmanager
def run_layers(decoder, lo: int, hi: int | None, final_norm: bool, renumber: bool = False):
    """Run `decoder` over its layers lo:hi only (its own forward: the same masks, positions and attention code),
    fed hidden states as `inputs_embeds` when lo > 0; without the final norm unless `final_norm`. `renumber`: the
    layers write key/value cache slots 0.. (a cache of their own, whose length its first slot tells)."""
    layers, norm = decoder.layers, decoder.norm
    part = list(layers)[lo:hi]
    numbers = [layer.self_attn.layer_idx for layer in part] if renumber else []
    try:
        decoder.layers = torch.nn.ModuleList(part)
        if not final_norm:
            decoder.norm = torch.nn.Identity()
        for i, layer in enumerate(part if renumber else []):
            layer.self_attn.layer_idx = i
        yield
    finally:
        decoder.layers, decoder.norm = layers, norm
        for layer, i in zip(part, numbers, strict=False):
            layer.self_attn.layer_idx = i


class SharedPrefixes:
    """Models whose layers below `split` are the same (a run's checkpoints that adapt only their top layers, and
    their base) compute the same keys and values there over a prompt: each prompt prefix runs through those layers
    once, is kept until `clear()`, and every model then runs only its own layers above the split from it.

    A backend given this store (`TransformersBackend(shared_prefixes=...)`) builds its prefix caches so; the result
    equals the backend's own prefill, chunk for chunk. A model whose lower weights differ from the first model's
    is refused (`ValueError`), so a store never mixes models it would rank wrongly."""

    def __init__(self, split: int):
        if split < 1:
            raise ValueError(f"split: at least 1 shared layer, got {split}")
        self.split = split
        self._store: dict[tuple[int, ...], tuple[list, list[torch.Tensor]]] = {}
        self._lower: list[torch.Tensor] | None = None  # the first model's lower weights
        self._checked: weakref.WeakSet = weakref.WeakSet()  # models compared with the first
        self.tokens = 0  # prompt tokens held
        self.computed = 0  # prefixes run through the shared layers
        self.reused = 0  # prefixes found here

    def clear(self) -> None:
        """Drop every stored prefix and the reference weights: the next model seen becomes the reference."""
        self._store.clear()
        self._lower = None
        self._checked = weakref.WeakSet()
        self.tokens = 0

    def _check(self, model) -> None:
        if model in self._checked:
            return
        decoder = model.base_model
        if not splittable(model.config) or not 0 < self.split < model.config.num_hidden_layers:
            raise ValueError(f"shared_prefixes: {model.config.model_type} with {model.config.num_hidden_layers} "
                             f"layers cannot share its first {self.split}")
        lower = [t.detach() for layer in list(decoder.layers)[: self.split] for t in layer.parameters()]
        lower.append(decoder.embed_tokens.weight.detach())
        if self._lower is None:
            self._lower = lower
        elif len(lower) != len(self._lower) or not all(a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
                                                       for a, b in zip(lower, self._lower, strict=True)):
            raise ValueError(f"shared_prefixes: the model's first {self.split} layers differ from those the store "
                             "was built with")
        self._checked.add(model)

    @torch.inference_mode()
    def encode(self, backend: TransformersBackend, ids: list[int], alive: Callable[[], bool] | None = None):
        """`backend.encode_cache(ids)` with the layers below the split run once per prefix across models. The
        returned cache's lower layers are the stored ones: read it (as `CachedPools` does), never extend it."""
        model = backend.model
        self._check(model)
        decoder, dev = model.base_model, backend.device
        chunks = [ids[s: s + PREFILL_CHUNK] for s in range(0, len(ids), PREFILL_CHUNK)]
        key = tuple(ids)
        reuse = key in self._store
        if not reuse:
            lower, hidden = DynamicCache(), []
            with run_layers(decoder, 0, self.split, final_norm=False):
                for chunk in chunks:
                    if alive is not None and not alive():
                        return None
                    out = decoder(input_ids=torch.tensor([chunk], device=dev), past_key_values=lower, use_cache=True)
                    hidden.append(out.last_hidden_state)
            self._store[key] = (list(lower.layers[: self.split]), hidden)
            self.tokens += len(ids)
            self.computed += 1
        lower_layers, hidden = self._store[key]
        upper = DynamicCache()
        with run_layers(decoder, self.split, None, final_norm=True, renumber=True):
            for h in hidden:
                if alive is not None and not alive():
                    return None
                decoder(inputs_embeds=h, past_key_values=upper, use_cache=True)
        n = model.config.num_hidden_layers
        upper.layers = lower_layers + list(upper.layers[: n - self.split])
        self.reused += reuse
        return upper


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def _positions(mask: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return pos if start is None else pos + start[:, None]


class TransformersBackend:
    """`model`: the embedded alias, a folder or a hub id; or pass `model_obj` + `tokenizer` already loaded."""

    def __init__(self, model: str | None = None, *, model_obj=None, tokenizer=None, device: str | None = None,
                 dtype: str | torch.dtype | None = None, max_item_tokens: int = 192, max_batch_tokens: int = 24_000,
                 max_step_tokens: int | None = None, name: str | None = None,
                 shared_prefixes: SharedPrefixes | None = None):
        if model_obj is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from iranker.devices import resolve_device, resolve_dtype
            from iranker.models import display_name, resolve_model

            path = resolve_model(model)
            device = resolve_device(device)
            dtype = resolve_dtype(dtype, device)
            tokenizer = AutoTokenizer.from_pretrained(path)
            model_obj = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
            name = name or display_name(path)
        if tokenizer is None:
            raise ValueError("tokenizer: required together with model_obj")
        self.model = model_obj.eval()
        self.tokenizer = tokenizer
        self.device = next(self.model.parameters()).device
        self.name = name or getattr(model_obj.config, "name_or_path", "") or "model"
        self.encoder = PromptEncoder(tokenizer, max_item_tokens)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.max_batch_tokens = max_batch_tokens
        self.shared_prefixes = shared_prefixes  # prefix caches built from a store shared with other models
        # cached layout: most cache tokens (rows x prompt length) one batched step may attend to
        self.max_step_tokens = max_step_tokens or (CPU_STEP_TOKENS if self.device.type == "cpu" else 1 << 20)
        self._init_label_head()

    def _init_label_head(self) -> None:
        """Fast mode needs the logits of the 26 label tokens only: keep those rows of the output layer.

        Skips the rest of the vocabulary (for SmolLM2, 49k rows, a fifth of the weights) at every step; on the
        2-core CPU the saving was within timing noise, on larger vocabularies it grows.
        Models whose head is more than a linear layer (logit soft-capping or scaling) use the full logits.
        """
        cfg = self.model.config
        head = self.model.get_output_embeddings()
        plain = (isinstance(head, torch.nn.Linear) and getattr(cfg, "final_logit_softcapping", None) is None
                 and getattr(cfg, "logit_scale", None) is None and self.model.base_model is not self.model)
        self.label_order = list(self.encoder.label_ids)
        if plain:
            ids = torch.tensor([self.encoder.label_ids[lab] for lab in self.label_order], device=self.device)
            self._head_w = head.weight.detach()[ids]
            self._head_b = head.bias.detach()[ids] if head.bias is not None else None
        else:
            self._head_w = None

    def label_scores(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                     use_cache: bool = False):
        """(logits of every label at the last position [batch, 26] in `label_order`, the key/value cache)."""
        kw = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                  "past_key_values": past_key_values, "use_cache": use_cache}
        if self._head_w is None:
            out = self.model(**kw, logits_to_keep=1)
            ids = [self.encoder.label_ids[lab] for lab in self.label_order]
            return out.logits[:, -1, ids].float(), out.past_key_values
        out = self.model.base_model(**kw)
        h = out.last_hidden_state[:, -1]
        logits = h @ self._head_w.T
        if self._head_b is not None:
            logits = logits + self._head_b
        return logits.float(), out.past_key_values

    def encode_cache(self, ids: list[int], alive: Callable[[], bool] | None = None):
        """Run a prompt prefix through the model (no output layer) and return its key/value cache; in chunks of
        PREFILL_CHUNK tokens, asking `alive()` before each: None once it says the answer is no longer wanted.
        With `shared_prefixes`, the layers the store shares run once per prefix for all its models."""
        if self.shared_prefixes is not None:
            return self.shared_prefixes.encode(self, ids, alive)
        cache = None
        for start in range(0, len(ids), PREFILL_CHUNK):
            if alive is not None and not alive():
                return None
            out = self.model.base_model(input_ids=torch.tensor([ids[start: start + PREFILL_CHUNK]], device=self.device),
                                        past_key_values=cache, use_cache=True)
            cache = out.past_key_values
        return cache

    # -- fast mode, one full prompt per decision ---------------------------------------------------------------

    def _chunks(self, encoded: Sequence[EncodedPrompt], pad: bool = True):
        """Index chunks whose padded size stays under max_batch_tokens (one prompt per chunk when not `pad`)."""
        if not pad:
            yield from ([i] for i in range(len(encoded)))
            return
        chunk: list[int] = []
        width = 0
        for i, e in enumerate(encoded):
            w = max(width, len(e))
            if chunk and w * (len(chunk) + 1) > self.max_batch_tokens:
                yield chunk
                chunk, w = [], len(e)
            chunk.append(i)
            width = w
        if chunk:
            yield chunk

    @torch.inference_mode()
    def choose(self, prompts: Sequence[Prompt]) -> list[Choice]:
        encoded = [self.encoder.encode(p) for p in prompts]
        out: list[Choice | None] = [None] * len(prompts)
        # On a CPU a full forward pass is compute-bound: padding only adds work (and a slower masked attention),
        # so prompts run one by one there; on a GPU they are padded into batches.
        for chunk in self._chunks(encoded, pad=self.device.type != "cpu"):
            ids, mask = _left_pad([encoded[i].ids for i in chunk], self.pad_id)
            ids, mask = ids.to(self.device), mask.to(self.device)
            logits, _ = self.label_scores(ids, mask, _positions(mask))
            for row, i in enumerate(chunk):
                labels = prompts[i].labels
                scores = logits[row, [self.label_order.index(lab) for lab in labels]].tolist()
                out[i] = choice_from_scores(labels, scores, len(encoded[i]))
        return out  # type: ignore[return-value]

    # -- reasoning mode and direct ranking ---------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int, temperature: float = 0.0) -> list[Generation]:
        encoded = [self.encoder.encode(p) for p in prompts]
        out: list[Generation | None] = [None] * len(prompts)
        for chunk in self._chunks(encoded):
            ids, mask = _left_pad([encoded[i].ids for i in chunk], self.pad_id)
            sample = temperature > 0
            gen = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      max_new_tokens=max_new_tokens, do_sample=sample,
                                      temperature=temperature if sample else None, top_p=None, top_k=None,
                                      pad_token_id=self.pad_id)
            new = gen[:, ids.shape[1]:]
            for row, i in enumerate(chunk):
                toks = new[row].tolist()
                eos = self.tokenizer.eos_token_id
                n = toks.index(eos) + 1 if eos in toks else len(toks)
                text = self.tokenizer.decode(toks[:n], skip_special_tokens=True)
                out[i] = Generation(text, len(encoded[i]), n)
        return out  # type: ignore[return-value]

    # -- the cached elimination layout -------------------------------------------------------------------------

    def open_pools(self, prompts: Sequence[Prompt], speculate: int = 0,
                   alive: Sequence[Callable[[], bool]] | None = None) -> CachedPools:
        return CachedPools(self, prompts, speculate, alive)


class CachedPools:
    """Encode each prompt (every candidate listed) once; answer each step by re-reading only the short cue.

    The key/value cache holds the header and all candidate lines. At every step the tail (cue, end of turn, answer
    prefix) is run against that cache with the eliminated candidates' tokens masked out of the attention, so the
    model sees exactly the remaining pool. A step costs the tail's dozen tokens instead of the whole prompt.
    Labels stay those of the first listing (`[A]`..): the remaining candidates keep their letters.

    Prompts are prefilled one by one (unpadded: prefill is compute-bound, batching it gains nothing), then grouped
    so that the steps of a group run as one batch over a preallocated cache whose tail slots are overwritten in
    place (no copy of the cache per step). A group holds at most `backend.max_step_tokens` cache tokens: on a CPU,
    many rows over long prompts cost more than they save.

    Speculative elimination (`speculate` = s > 0, used when the batch with its extra rows fits one group): a pass
    over few rows is bound by reading the weights, so extra rows are cheap. Each prompt gets s + 1 rows: row 0 decides from the current pool; row j assumes that the next j eliminations are the
    j most likely candidates of the previous decision's distribution. Row j's decision is kept only if rows 0..j-1
    decided exactly those guesses, so the decisions are the same as one step at a time, only fewer passes.
    """

    @torch.inference_mode()
    def __init__(self, backend: TransformersBackend, prompts: Sequence[Prompt], speculate: int = 0,
                 alive: Sequence[Callable[[], bool]] | None = None):
        self.backend = backend
        self.prompts = list(prompts)
        enc = [backend.encoder.encode(p) for p in prompts]
        budget = backend.max_step_tokens
        # Extra rows are nearly free only while a pass is bound by reading the weights: speculate when the whole
        # batch fits one group with them (single requests, small batches), never at the price of more groups.
        width = max(len(e) for e in enc)
        self.k = speculate + 1 if len(enc) * (speculate + 1) * width <= budget else 1
        self.prompt_tokens = [len(e) - len(e.tail) for e in enc]
        self._tail_len = [len(e.tail) for e in enc]
        self._guess: list[list[int]] = [[] for _ in prompts]  # item positions, most likely eliminated first
        self.groups: list[_PoolGroup] = []
        rows: list[int] = []
        for i in sorted(range(len(enc)), key=lambda i: len(enc[i])):
            width = max([len(enc[j]) for j in rows] + [len(enc[i])])
            if rows and width * (len(rows) + 1) * self.k > budget:
                self.groups.append(_PoolGroup(backend, [enc[j] for j in rows], rows, self.k, alive))
                rows = []
            rows.append(i)
        self.groups.append(_PoolGroup(backend, [enc[j] for j in rows], rows, self.k, alive))

    @torch.inference_mode()
    def decide(self, remaining: Sequence[Sequence[int]]) -> list[list[tuple[int, Choice]]]:
        """The next decisions of every prompt, as [(eliminated item position, Choice)], at least one each.

        `remaining[b]` = item positions still in prompt b's pool (a pool of one gets no decision).
        """
        order = self.backend.label_order
        guesses = [[g for g in self._guess[b] if g in remaining[b]][: self.k - 1] for b in range(len(remaining))]
        rows_of = []  # per prompt: the pool of each of its k rows
        for b, keep in enumerate(remaining):
            pools = [list(keep)]
            for g in guesses[b]:
                if len(pools[-1]) <= 2:
                    break
                pools.append([i for i in pools[-1] if i != g])
            rows_of.append(pools + [pools[-1]] * (self.k - len(pools)))
        out: list[list[tuple[int, Choice]]] = [[] for _ in remaining]
        for g in self.groups:
            logits = g.step([pool for b in g.rows for pool in rows_of[b]])
            for r, b in enumerate(g.rows):
                if len(remaining[b]) < 2:
                    continue
                self.prompt_tokens[b] += self._tail_len[b] * self.k
                for j, pool in enumerate(rows_of[b]):
                    labels = [self.prompts[b].labels[i] for i in pool]
                    scores = logits[r * self.k + j, [order.index(lab) for lab in labels]].tolist()
                    choice = choice_from_scores(labels, scores, self._tail_len[b] * (self.k if j == 0 else 0))
                    item = pool[labels.index(choice.label)]
                    out[b].append((item, choice))
                    ranked = sorted(choice.logprobs, key=choice.logprobs.get, reverse=True)
                    self._guess[b] = [pool[labels.index(lab)] for lab in ranked if lab != choice.label]
                    if j >= len(guesses[b]) or item != guesses[b][j] or len(pool) <= 2:
                        break
        return out


def _zeros_kv(backend: TransformersBackend, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Key/value placeholders of a prompt of `length` tokens, one pair per layer."""
    config = backend.model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    zeros = torch.zeros(1, heads, length, dim, dtype=backend.model.dtype, device=backend.device)
    return [(zeros, zeros) for _ in range(config.num_hidden_layers)]


class _PoolGroup:
    """Prompts whose steps run as one batch over one preallocated (static) key/value cache, `k` rows a prompt."""

    def __init__(self, backend: TransformersBackend, enc: Sequence[EncodedPrompt], rows: list[int], k: int = 1,
                 alive: Sequence[Callable[[], bool]] | None = None):
        self.backend, self.rows = backend, rows
        prefixes = [e.head + [t for item in e.items for t in item] for e in enc]
        self.width = max(len(p) for p in prefixes)
        self.spans: list[list[tuple[int, int]]] = []  # token span of each item in the left-padded prefix
        for e, p in zip(enc, prefixes):
            start = self.width - len(p) + len(e.head)
            spans = []
            for item in e.items:
                spans.append((start, start + len(item)))
                start += len(item)
            self.spans.extend([spans] * k)
        dev = backend.device
        tails = [e.tail for e in enc for _ in range(k)]
        self.tail_ids, self.tail_mask = (t.to(dev) for t in _left_pad(tails, backend.pad_id))
        _, self.prefix_mask = _left_pad([p for p in prefixes for _ in range(k)], backend.pad_id)
        self.prefix_mask = self.prefix_mask.to(dev)
        self.tail_pos = _positions(self.tail_mask, self.prefix_mask.sum(-1))
        self.cache = StaticCache(config=backend.model.config, max_cache_len=self.width + self.tail_ids.shape[1])
        per_prompt = []
        for row, p in zip(rows, prefixes):
            # a prompt whose request was abandoned meanwhile is not computed: zeros hold its place (its row's
            # decisions are never read), and a long prefill stops at its next chunk
            cache = backend.encode_cache(p, alive[row] if alive is not None else None)
            kv = [(layer.keys, layer.values) for layer in cache.layers] if cache is not None else _zeros_kv(backend,
                                                                                                          len(p))
            pad = self.width - len(p)
            per_prompt.append([tuple(torch.nn.functional.pad(t, (0, 0, pad, 0)) if pad else t for t in pair)
                               for pair in kv])
        for li in range(len(per_prompt[0])):
            self.cache.update(torch.cat([kv[li][0] for kv in per_prompt]).repeat_interleave(k, dim=0),
                              torch.cat([kv[li][1] for kv in per_prompt]).repeat_interleave(k, dim=0), li)

    def step(self, pools: Sequence[Sequence[int]]) -> torch.Tensor:
        """Label logits of every row, row r seeing only the items in pools[r]."""
        mask = self.prefix_mask.clone()
        for r, keep in enumerate(pools):
            keep_set = set(keep)
            for i, (s, e) in enumerate(self.spans[r]):
                if i not in keep_set:
                    mask[r, s:e] = 0
        for layer in self.cache.layers:  # the tail slots are rewritten in place at every step
            layer.cumulative_length.fill_(self.width)
        full = torch.cat([mask, self.tail_mask], dim=1)
        logits, _ = self.backend.label_scores(self.tail_ids, full, self.tail_pos, self.cache, use_cache=True)
        return logits
