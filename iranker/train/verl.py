"""Export the training data and reward for verl (multi-node PPO on GPUs, e.g. a KubeRay RayJob).

`export_verl(cfg, out)` writes, from the same instances and sub-pool sampling as `iranker train`:

- `train.parquet`, `val.parquet`: verl's RL dataset layout, one row per elimination step -
  `data_source` ("iranker/<scenario>"), `prompt` (chat messages), `ability` ("ranking"),
  `reward_model` ({"style": "rule", "ground_truth": <the pool's grades as JSON>}),
  `extra_info` ({"split", "index", "instance_id", "dataset", "scenario", "pool_size"});
- `verl-overrides.txt`: the Hydra overrides (one `key=value` per line) that point verl's `main_ppo` at these files and at
  `compute_score` below as its custom reward function, with the paper's PPO settings.

`compute_score` is verl's custom reward interface (`custom_reward_function.path/name`): it scores the response
with `iranker.rewards` - the exclusion reward plus, in reasoning mode, the format reward - and nothing else.
Running verl needs GPUs and Ray; this machine tests the files and the function's interface.
"""

from __future__ import annotations

import json
from pathlib import Path

from iranker.rewards import exclusion_reward, format_reward


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None,
                  **_) -> float:
    """verl custom reward: exclusion + format reward of one response (reasoning mode unless extra_info says fast).

    >>> compute_score("iranker/passage", "<think>B is off-topic</think><answer>[B]</answer>", '{"A": 2, "B": 0}')
    1.0
    >>> compute_score("iranker/passage", "[B]", '{"A": 2, "B": 0}')
    -1.5
    """
    grades = json.loads(ground_truth) if isinstance(ground_truth, str) else dict(ground_truth)
    reasoning = (extra_info or {}).get("reasoning", True)
    score = exclusion_reward(solution_str, grades, reasoning=reasoning)
    return score + (format_reward(solution_str) if reasoning else 0.0)


def export_verl(cfg, out: str | Path, per_instance: int = 4, reasoning: bool = True) -> dict:
    """Write the verl dataset and overrides for a training config; returns counts and paths."""
    import pandas as pd

    from iranker.io import load_instances
    from iranker.models import resolve_model
    from iranker.train.pools import load_training_instances
    from iranker.train.steps import elimination_rows

    out = Path(out)
    train = load_training_instances(cfg)
    val_instances = []
    for d in cfg.data:
        if d == "samples":
            from iranker.data import sample_instances

            val_instances += [i for i in sample_instances() if i.split == "validation"]
        else:
            p = Path(d)
            val_instances += [i for i in load_instances(p / "instances.jsonl" if p.is_dir() else p)
                              if i.split == "validation"]
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, instances, salt in (("train", train, "verl-train"), ("val", val_instances, "verl-val")):
        rows = elimination_rows(instances, cfg, per_instance * len(instances), reasoning=reasoning, salt=salt)
        frame = pd.DataFrame([{
            "data_source": f"iranker/{r['scenario']}", "prompt": r["prompt"].messages(), "ability": "ranking",
            "reward_model": {"style": "rule", "ground_truth": r["pool_grades"]},
            "extra_info": {"split": r["split"], "index": k, "instance_id": r["instance_id"], "dataset": r["dataset"],
                           "scenario": r["scenario"], "pool_size": r["pool_size"], "reasoning": reasoning}}
            for k, r in enumerate(rows)])
        path = out / f"{name}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)
        files[name] = {"path": str(path), "rows": len(frame)}
    reward_path = Path(__file__).resolve()
    overrides = {
        "data.train_files": str(out / "train.parquet"), "data.val_files": str(out / "val.parquet"),
        "data.prompt_key": "prompt", "data.max_response_length": cfg.max_new_tokens if reasoning else 8,
        "data.train_batch_size": cfg.batch_size,
        "custom_reward_function.path": str(reward_path), "custom_reward_function.name": "compute_score",
        "actor_rollout_ref.model.path": cfg.model if cfg.model == "tiny-random" else resolve_model(cfg.model), "actor_rollout_ref.actor.optim.lr": cfg.lr_actor,
        "actor_rollout_ref.actor.clip_ratio": cfg.ppo.clip, "actor_rollout_ref.actor.use_kl_loss": True,
        "actor_rollout_ref.actor.kl_loss_coef": cfg.ppo.kl_coef,
        "actor_rollout_ref.actor.entropy_coeff": cfg.ppo.entropy_coef,
        "actor_rollout_ref.rollout.name": "vllm", "critic.optim.lr": cfg.lr_critic,
        "algorithm.adv_estimator": "gae", "algorithm.gamma": cfg.ppo.gamma, "algorithm.lam": cfg.ppo.lam,
    }
    text = "".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}\n" for k, v in overrides.items())
    (out / "verl-overrides.txt").write_text(text)
    return {"files": files, "overrides": str(out / "verl-overrides.txt"), "reward": f"{reward_path}:compute_score",
            "command": f"python -m verl.trainer.main_ppo $(cat {out / 'verl-overrides.txt'})"}
