"""The model side of training: device and dtype, loading, LoRA, the frozen reference, the critic, and scoring
elimination decisions in the layout that serves.

Devices: `device: auto` puts the policy, the reference, the value head and every tensor on CUDA when torch sees a
GPU, else on the CPU. `dtype: bfloat16` runs the forward and backward passes in bf16 under autocast; trained
parameters keep float32 master weights (the optimizer's updates would vanish in bf16), a frozen base (LoRA) and the
frozen reference are stored in bf16.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch

from iranker.backends.tokens import EncodedPrompt, PromptEncoder
from iranker.backends.transformers import run_layers, splittable
from iranker.devices import resolve_device, training_dtype
from iranker.prompts import LABELS, MAX_POOL

# ------------------------------------------------------------------------------------------ device and dtype


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast on the device (a no-op context in float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------- loading


def load_model(cfg, device: torch.device | None = None, dtype: torch.dtype | None = None):
    """(model, tokenizer) for training, on `device`; clear errors when the model does not load. Weights load in
    float32 (trained weights are float32 masters); `Policy` casts a frozen base to bf16."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iranker.models import resolve_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        if cfg.model == "tiny-random":
            from transformers import LlamaConfig, LlamaForCausalLM

            tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.tokenizer))
            torch.manual_seed(cfg.seed)
            model = LlamaForCausalLM(LlamaConfig(
                vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
        else:
            path = resolve_model(cfg.model)
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ValueError(f"model: {cfg.model!r} does not load: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device or torch.device("cpu")), tokenizer


def lora_config(cfg, model, **extra):
    """The profile's LoRA adapters, on the last `lora.top_layers` decoder layers (all when 0)."""
    from peft import LoraConfig

    n_layers = model.config.num_hidden_layers
    top = min(cfg.lora.top_layers, n_layers) if cfg.lora.top_layers else n_layers
    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, layers_to_transform=list(range(n_layers - top, n_layers)),
                      layers_pattern="layers", **extra)


def base_model_path(cfg, out: str | Path) -> str:
    """The model training starts from, as a path or id that `iranker rank/evaluate --model` loads: a model built in
    memory (tiny-random, seeded) is saved once to `out/init-model`."""
    from iranker.models import resolve_model

    if cfg.model != "tiny-random":
        return resolve_model(cfg.model)
    target = Path(out) / "init-model"
    if not (target / "config.json").exists():
        model, tokenizer = load_model(cfg)
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    return str(target)


# ----------------------------------------------------------------------------------------------- the policy

# the frozen layers' outputs kept per update at most (sequence tokens); beyond it sequences run whole
FROZEN_BUDGET_TOKENS = 262_144


class Policy:
    """The trained model (LoRA-wrapped or full), its frozen reference, the critic and the optimizer, on one device.

    `kind_of_reference`: LoRA runs the reference as the model with its adapter disabled; full fine-tuning keeps a
    frozen copy (only when the KL term is on).
    """

    def __init__(self, cfg, model, tokenizer):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = training_dtype(cfg.dtype, self.device)
        self.tokenizer = tokenizer
        self.encoder = PromptEncoder(tokenizer, cfg.ranking.max_item_tokens)
        # fast mode labels a listing with the tokenizer's single-token letters (refused here when too few)
        self.labels = (self.encoder.fast_labels(max(cfg.ranking.window, cfg.pools.max_size)) if cfg.mode == "fast"
                       else LABELS)
        self.label_ids = [self.encoder.label_ids[lab] for lab in self.labels] if cfg.mode == "fast" else []
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        model = model.to(self.device)
        self.ref = None
        if cfg.lora.r:
            from peft import get_peft_model

            if self.dtype != torch.float32:
                model = model.to(self.dtype)  # the frozen base; peft keeps the adapters in float32
            if cfg.gradient_checkpointing:
                model.enable_input_require_grads()
            self.model = get_peft_model(model, lora_config(cfg, model))
        else:
            self.model = model
            if cfg.ppo.kl_coef > 0:
                self.ref = copy.deepcopy(model).to(self.dtype).eval().requires_grad_(False)
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(cfg.seed)
        self.value_head = torch.nn.Linear(model.config.hidden_size, 1).to(self.device)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        actor = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW([{"params": actor, "lr": cfg.lr_actor},
                                            {"params": self.value_head.parameters(), "lr": cfg.lr_critic}],
                                           weight_decay=0.0)

    def autocast(self):
        return autocast(self.device, self.dtype)

    @contextlib.contextmanager
    def reference(self):
        """The frozen reference model, or None when there is none (KL off, full fine-tuning)."""
        if self.ref is not None:
            yield self.ref
        elif self.cfg.lora.r:
            with self.model.disable_adapter():
                yield self.model
        else:
            yield None

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [q for g in self.optimizer.param_groups for q in g["params"]]

    def step_optimizer(self, sync=None) -> None:
        """Average gradients across processes (`sync`), clip and step."""
        if sync is not None:
            sync(self.trainable_parameters())
        torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), 1.0)
        self.optimizer.step()

    def trainable_state(self) -> dict:
        if self.cfg.lora.r:
            from peft import get_peft_model_state_dict

            return get_peft_model_state_dict(self.model)
        return self.model.state_dict()

    def load_trainable_state(self, state: dict, strict: bool = False) -> None:
        """The trainable weights from `state` (the adapter's, or the whole model's without LoRA); `strict`: every
        adapter weight must be given and nothing else (for weights from outside the run, such as an adapter
        folder)."""
        if self.cfg.lora.r:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.model, state)
            n_lora = sum("lora_" in k for k, _ in self.model.named_parameters())
            if strict and (result.unexpected_keys or len(state) != n_lora):
                raise ValueError(f"the weights do not fit this run's adapter ({len(state)} given, {n_lora} adapter "
                                 f"weights, {len(result.unexpected_keys)} unexpected)")
        else:
            self.model.load_state_dict(state)

    def merged(self):
        """A plain transformers model with the trained weights (LoRA merged into a float32 copy of the base)."""
        if not self.cfg.lora.r:
            return self.model
        merged = copy.deepcopy(self.model).merge_and_unload()
        return merged.to(torch.float32)

    def unadapted(self):
        """The model without its adapter, as `merged` builds the trained one (a float32 copy of the same base
        weights): the two share their layers below the adapter exactly."""
        if not self.cfg.lora.r:
            raise ValueError("lora.r: a model trained without an adapter has no base inside it")
        return copy.deepcopy(self.model).unload().to(torch.float32)

    # ---------------------------------------------------------------------------------------- scoring

    @property
    def frozen_layers(self) -> int:
        """Decoder layers below the adapter whose output the scoring passes of an update share (0: none): the
        reference (adapter disabled) and the policy compute the same values there."""
        cfg = self.cfg
        config = self.model.config
        n = config.num_hidden_layers
        if not (cfg.lora.r and cfg.lora.reuse_frozen and 0 < cfg.lora.top_layers < n):
            return 0
        if not splittable(config):
            return 0  # other decoders scale inputs_embeds or index rotary tables by layer: run them whole
        return n - cfg.lora.top_layers

    def score_cues(self, model, enc: EncodedPrompt, pools: list[list[int]], with_hidden: bool = False,
                   frozen: dict | None = None):
        """Label logits [m, 26] (float32) of m elimination decisions over ONE listed prompt, in one pass; column j
        is listing position j's label (`labels[j]`), columns past the tokenizer's alphabet are 0 (never in a pool).

        The sequence holds the prefix (header + every candidate line) once, then the cue (tail) of each decision.
        The prefix attends causally to itself (it never loses sight of any candidate, exactly like the cached
        layout's key/value cache); cue k sees the prefix minus the candidates outside `pools[k]` (positions in the
        listing) and its own earlier tokens, at the positions right after the prefix - what serving's cached step
        shows it. With all candidates visible and one cue this is the plain causal pass of the relist layout.
        Returns (logits, last hidden state of every cue [m, H] or None).

        `frozen`: a cache (one per update) of the frozen layers' output for each sequence scored: the first pass
        over a sequence runs those layers without gradients and stores their output, later passes (the reference,
        the policy, PPO's minibatches) start from it and run only the adapted layers.
        """
        prefix = enc.head + [t for item in enc.items for t in item]
        n_prefix, tail, m = len(prefix), enc.tail, len(pools)
        n_tail = len(tail)
        length = n_prefix + m * n_tail
        dev = self.device
        ids = torch.tensor(prefix + tail * m, device=dev)
        pos = torch.cat([torch.arange(n_prefix, device=dev),
                         torch.arange(n_prefix, n_prefix + n_tail, device=dev).repeat(m)])
        mask = torch.ones(length, length, dtype=torch.bool, device=dev).tril_()
        mask[n_prefix:, n_prefix:] = False
        spans, start = [], len(enc.head)
        for item in enc.items:
            spans.append((start, start + len(item)))
            start += len(item)
        causal_tail = torch.ones(n_tail, n_tail, dtype=torch.bool, device=dev).tril_()
        for k, pool in enumerate(pools):
            lo = n_prefix + k * n_tail
            rows = slice(lo, lo + n_tail)
            mask[rows, lo:lo + n_tail] = causal_tail
            keep = set(pool)
            for j, (s, e) in enumerate(spans):
                if j not in keep:
                    mask[rows, s:e] = False
        decoder, head = _decoder_and_head(model)
        attend = {"attention_mask": mask[None, None], "position_ids": pos[None], "use_cache": False}
        split = self.frozen_layers if frozen is not None else 0
        start = None  # the frozen layers' output for this sequence, when reused
        if split:
            key = (tuple(enc.head), tuple(map(tuple, enc.items)), tuple(tail), tuple(map(tuple, pools)))
            start = frozen.get(key)
            if start is None and frozen.get("tokens", 0) + length <= FROZEN_BUDGET_TOKENS:
                with torch.no_grad(), run_layers(decoder, 0, split, final_norm=False):
                    start = frozen[key] = decoder(input_ids=ids[None], **attend).last_hidden_state
                frozen["tokens"] = frozen.get("tokens", 0) + length
        if start is not None:
            with run_layers(decoder, split, None, final_norm=True):
                out = decoder(inputs_embeds=start, **attend)
        else:
            out = decoder(input_ids=ids[None], **attend)
        ends = torch.tensor([n_prefix + k * n_tail + n_tail - 1 for k in range(m)], device=dev)
        hidden = out.last_hidden_state[0, ends]
        w = head.weight[self.label_ids]
        logits = hidden @ w.T.to(hidden.dtype)
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[self.label_ids]
        if logits.shape[-1] < MAX_POOL:  # an alphabet of fewer than 26 single-token letters (Qwen2.5: 24)
            logits = torch.nn.functional.pad(logits, (0, MAX_POOL - logits.shape[-1]))
        return logits.float(), (hidden if with_hidden else None)


def _decoder_and_head(model):
    """The decoder stack (hidden states out) and the output layer of a causal LM, through a PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.base_model, base.get_output_embeddings()
