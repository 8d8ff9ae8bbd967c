"""`--algo grpo`: TRL's GRPOTrainer on the same elimination steps and the same rewards as our PPO.

The dataset is `iranker.train.steps.elimination_rows` (prompts rendered exactly as the ranker renders them), the
reward functions are `iranker.rewards` (`fast_exclusion_reward_func` in fast mode: the completion continues the
`[` answer prefix with one label; `exclusion_reward_func` + `format_reward_func` in reasoning mode). The final
model is written to `out/final` as a standard transformers folder, like the PPO trainer's.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def run_grpo(cfg, out: str | Path, progress: bool = True) -> Path:
    import os

    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from iranker.backends.tokens import PromptEncoder
    from iranker.rewards import exclusion_reward_func, fast_exclusion_reward_func, format_reward_func
    from iranker.train.modeling import base_model_path, load_model, lora_config
    from iranker.train.pools import load_training_instances
    from iranker.train.steps import elimination_rows

    out = Path(out)
    instances = load_training_instances(cfg)
    model, tokenizer = load_model(cfg)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out}: not empty; choose another folder")
    if not model.config.name_or_path:  # built in memory (tiny-random): TRL loads its reference from a path
        model.config.name_or_path = base_model_path(cfg, out)
    reasoning = cfg.mode == "reasoning"
    generations = max(2, cfg.grpo_generations)
    n_prompts = cfg.steps * max(1, cfg.batch_size // generations)
    rows = elimination_rows(instances, cfg, n_prompts, reasoning=reasoning, salt="grpo")
    encoder = PromptEncoder(tokenizer, cfg.ranking.max_item_tokens)  # renders as the ranker does, label scheme too
    dataset = Dataset.from_list([{"prompt": encoder.render(r["prompt"]), "pool_grades": r["pool_grades"]}
                                 for r in rows])
    peft_config = None
    if cfg.lora.r:
        peft_config = lora_config(cfg, model, task_type="CAUSAL_LM")
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(out / "tb"))
    args = GRPOConfig(
        output_dir=str(out / "trl"), max_steps=cfg.steps, learning_rate=cfg.lr_actor,
        per_device_train_batch_size=max(generations, cfg.batch_size // generations * generations),
        num_generations=generations, max_completion_length=cfg.max_new_tokens if reasoning else 3,
        temperature=cfg.temperature, beta=cfg.ppo.kl_coef, epsilon=cfg.ppo.clip, use_cpu=not torch.cuda.is_available(),
        logging_steps=1, save_strategy="steps", save_steps=cfg.checkpoint_every, save_total_limit=cfg.keep_checkpoints,
        report_to=["tensorboard"] if _has_tensorboard() else [], seed=cfg.seed,
        disable_tqdm=not progress, bf16=False, gradient_checkpointing=False)
    rewards = [exclusion_reward_func, format_reward_func] if reasoning else [fast_exclusion_reward_func]
    trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    completions = cfg.steps * args.per_device_train_batch_size * args.gradient_accumulation_steps
    log = [h for h in trainer.state.log_history if "loss" in h or "reward" in h]
    with (out / "metrics.jsonl").open("w") as f:
        for h in log:
            f.write(json.dumps({"step": h.get("step"), "reward": h.get("reward"), "kl": h.get("kl"),
                                "loss": h.get("loss")}) + "\n")
    final, tmp = out / "final", out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    policy = trainer.model
    if cfg.lora.r:
        policy = policy.merge_and_unload()
    policy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    summary = {"algo": "grpo", "steps": cfg.steps, "elimination_steps": completions, "seconds": seconds,
               "elimination_steps_per_s": completions / seconds, "config": cfg.model_dump()}
    (tmp / "iranker-train.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.replace(final)
    logger.info(f"grpo: {completions} elimination steps in {seconds:.0f} s ({completions / seconds:.2f}/s)")
    return final


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True
