"""Training configuration: one YAML file per profile (configs/smoke.yaml, cpu.yaml, gpu-3b.yaml).

Unknown keys, wrong types, missing data and a model that does not load are reported before training starts, each
naming the key or file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from iranker.schema import describe_error
from iranker.settings import RankingSettings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraConfig(_Section):
    r: int = Field(default=0, ge=0, description="LoRA rank; 0 trains all weights")
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    top_layers: int = Field(default=0, ge=0, description="adapt only the last N decoder layers (0: all); the "
                                                         "layers below run without gradients, which makes a CPU "
                                                         "update several times cheaper")
    reuse_frozen: bool = Field(default=True, description="with top_layers: run the frozen layers below the "
                                                         "adapter once per scored sequence and update, and reuse "
                                                         "their output in the reference and policy passes")


class PoolConfig(_Section):
    min_size: int = Field(default=2, ge=2)
    max_size: int = Field(default=20, le=26)
    small_bias: float = Field(default=1.0, ge=0, description="weight of a pool of size k is k**-small_bias: the "
                                                            "signal sits in small pools")
    on_policy: float = Field(default=0.0, ge=0, le=1, description="share of episodes rolled out by the policy "
                                                                 "itself from a random sub-pool (multi-step, GAE)")
    episodes: float = Field(default=0.0, ge=0, le=1, description="share of episodes that are whole instances "
                                                                "(up to the serving window) ranked by the policy "
                                                                "as serving ranks it: eliminations sampled on the "
                                                                "key/value cache, then all n-1 decisions scored in "
                                                                "one pass; with on_policy, held in expectation "
                                                                "when batch_size x share is not whole")
    balance_positions: bool = Field(
        default=False, description="show each random pool in all of its cyclic orders (k episodes for a pool of "
                                   "k): every candidate takes every label position once, so a preference for a "
                                   "position earns nothing within the group and the update follows the content")


class PPOConfig(_Section):
    clip: float = 0.2
    kl_coef: float = 0.001
    entropy_coef: float = 0.01
    vf_coef: float = 0.5
    gamma: float = 1.0
    lam: float = 0.95
    epochs: int = Field(default=2, ge=1, description="optimisation passes over each batch of rollouts (algo ppo)")
    minibatches: int = Field(default=2, ge=1, description="minibatches per epoch (algo ppo): one optimizer step "
                                                          "each, so the policy moves away from the rollout's and "
                                                          "the ratio and the clip engage")
    baseline: Literal["expected", "critic"] = Field(
        default="expected", description="advantage = r - E_pi[r] (exact in fast mode) or r - V (the critic)")


class ProbeConfig(_Section):
    pools: int = Field(default=0, ge=0, description="fixed validation-split sub-pools whose exact expected "
                                                    "exclusion reward is logged (0: off); a learning curve free "
                                                    "of batch-to-batch noise")
    every: int = Field(default=10, ge=1, description="updates between probes")


class Stage(_Section):
    algo: Literal["supervised", "expected", "ppo"] = Field(
        description="supervised: teacher-forced gold eliminations, loss -log sum of pi over the pool's lowest-grade "
                    "candidates (no rollout, no reference); expected / ppo: the RL objectives")
    steps: int = Field(ge=1, description="optimizer updates of this stage")
    lr_actor: float | None = Field(default=None, gt=0, description="the stage's actor learning rate (default: the "
                                                                   "profile's lr_actor)")


class TrainConfig(_Section):
    algo: Literal["ppo", "expected", "grpo", "supervised"] = "ppo"
    mode: Literal["fast", "reasoning"] = "fast"
    model: str = Field(default="smollm2-135m", description="model alias, folder or Hugging Face id; "
                                                          "'tiny-random' builds a tiny random Llama (smoke tests)")
    tokenizer: str | None = Field(default=None, description="tokenizer for tiny-random (default: the embedded one)")
    data: list[str] = Field(min_length=1, description="instances JSONL files, dataset folders, or 'samples' (the "
                                                     "built-in samples); the train split is used")
    max_instances: int = Field(default=0, ge=0, description="0: all")
    train_scenarios: list[Literal["recommendation", "routing", "passage"]] = Field(
        default_factory=list, description="the scenarios trained and validated on (empty: every scenario in data); "
                                          "the others are held out, for zero-shot transfer (evaluation reports "
                                          "in-domain and held-out scenarios apart)")
    listing: float = Field(default=0.5, ge=0, le=1,
                           description="share of training instances listed in the first stage's order (popularity, "
                                       "best average, the retriever's); the rest are shuffled, so that the model "
                                       "has to read content, not only position (iranker.listing)")
    hide_task: float = Field(default=0.3, ge=0, le=1,
                             description="share of routing training instances shown without their task family "
                                         "(overall price and quality instead of the family's), as requests that "
                                         "name none are")
    mix: Literal["balanced", "proportional"] = Field(
        default="balanced", description="episodes per scenario: equal shares (balanced) or in proportion to the "
                                        "training instances (proportional; routing has 8x the others)")
    steps: int = Field(default=100, ge=1, description="optimizer updates (with `stages`: their sum)")
    stages: list[Stage] = Field(default_factory=list,
                                description="stages run in order, e.g. a supervised warm start on gold eliminations "
                                            "then RL from it: [{algo: supervised, steps: 400}, {algo: expected, "
                                            "steps: 100}]; empty: one stage of `algo` for `steps`")
    batch_size: int = Field(default=8, ge=1, description="elimination steps per update")
    lr_actor: float = 1e-5
    lr_critic: float = 2e-5
    ranking: RankingSettings = Field(default_factory=RankingSettings,
                                     description="the ranking settings training shows the model, saved with it; "
                                                 "evaluation and serving rank under the same ones")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: CUDA when present, else CPU")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="compute dtype: auto is bfloat16 on CUDA and on a CPU that computes it natively "
                                    "(AMX or AVX-512 BF16), float32 elsewhere (iranker.devices.training_dtype); "
                                    "bfloat16 keeps float32 master weights for trained parameters (autocast), a "
                                    "frozen base in bfloat16")
    gradient_checkpointing: bool = Field(default=False, description="recompute activations in the backward pass "
                                                                   "(memory for time; the 3B profile on one GPU)")
    max_new_tokens: int = 256
    temperature: float = 1.0
    seed: int = 0
    checkpoint_every: int = Field(default=25, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    pools: PoolConfig = Field(default_factory=PoolConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    grpo_generations: int = Field(default=4, ge=2, description="algo grpo: completions per prompt (the group)")
    threads: int = Field(default=0, ge=0, description="torch threads (0: torch's default)")

    def stage_at(self, update: int) -> Stage:
        """The stage update `update` (0-based) belongs to."""
        done = 0
        for st in self.stages:
            done += st.steps
            if update < done:
                return st
        return self.stages[-1] if self.stages else Stage(algo=self.algo if self.algo != "grpo" else "ppo",
                                                         steps=self.steps)

    @model_validator(mode="before")
    @classmethod
    def _stages_set_steps(cls, data):
        if isinstance(data, dict) and data.get("stages"):
            data = {**data, "steps": sum(int(st.get("steps", 0)) if isinstance(st, dict) else st.steps
                                         for st in data["stages"])}
            last = data["stages"][-1]
            data["algo"] = last.get("algo") if isinstance(last, dict) else last.algo
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.stages and self.mode != "fast":
            raise ValueError("stages: a supervised warm start and stages are for fast mode")
        if self.algo == "supervised" and self.mode != "fast":
            raise ValueError("algo: 'supervised' (gold eliminations) is for fast mode")
        if self.pools.min_size > self.pools.max_size:
            raise ValueError("pools.min_size must not exceed pools.max_size")
        if self.pools.episodes + self.pools.on_policy > 1:
            raise ValueError("pools.episodes + pools.on_policy must not exceed 1 (shares of one batch)")
        if self.pools.max_size > self.ranking.window:
            raise ValueError(f"pools.max_size must not exceed ranking.window ({self.ranking.window})")
        if self.ranking.templates_k and self.mode != "reasoning":
            raise ValueError("ranking.templates_k: the model's own thought store comes from reasoning-mode training "
                             "(mode: reasoning); a fast-mode model is shown a store with --thought-templates instead")
        if self.mode == "reasoning" and self.algo == "expected":
            raise ValueError("algo: 'expected' needs the explicit action distribution of fast mode")
        return self


def _set_dotted(raw: dict, key: str, value, path: Path) -> None:
    """Set 'ppo.kl_coef'-style keys inside the nested sections of a profile."""
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{path}: --set {key}: {part} is not a section")  # noqa: TRY004
        node = child
    node[leaf] = value


def load_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read and validate a profile; relative data paths are resolved against the config file's repository."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")  # noqa: TRY004
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value, path)
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ValueError(f"{path}: {describe_error(e)}") from None
    base = path.resolve().parent.parent if path.resolve().parent.name == "configs" else Path.cwd()
    resolved = []
    for d in cfg.data:
        if d == "samples":
            resolved.append(d)
            continue
        p = Path(d).expanduser()
        p = p if p.is_absolute() or p.exists() else base / p
        if not p.exists():
            raise FileNotFoundError(f"{path}: data: {d}: no such file or folder")
        resolved.append(str(p))
    return cfg.model_copy(update={"data": resolved})
