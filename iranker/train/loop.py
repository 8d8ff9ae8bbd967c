"""The training loop: updates, checkpoints, resume, logs and the final model folder.

`run_training` validates everything, then trains with the fast-mode trainer (`iranker.train.fast`) or the
reasoning-mode trainer (`iranker.train.reasoning`) on a `Policy` (`iranker.train.modeling`), as one process or as
several (`iranker.train.distributed`). Everything random is seeded by (seed, update): a run resumed from a checkpoint
continues exactly as if it had not been interrupted. The final folder is a standard transformers model with the
ranking settings it was trained under (`iranker-ranking.json`), which `rank`, `evaluate` and `serve` then use.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from iranker.schema import RankingInstance
from iranker.settings import write_settings
from iranker.train.config import TrainConfig
from iranker.train.distributed import Processes, init_processes, weights_checksum
from iranker.train.modeling import Policy, load_model
from iranker.train.pools import load_training_instances


class Trainer:
    def __init__(self, cfg: TrainConfig, instances: list[RankingInstance], model, tokenizer, out: Path,
                 progress: bool = True, log: Callable[[str], None] | None = None,
                 probe_instances: list[RankingInstance] | None = None, processes: Processes | None = None):
        from iranker.train.fast import FastTrainer
        from iranker.train.reasoning import ReasoningTrainer

        self.cfg, self.instances, self.out = cfg, instances, Path(out)
        self.procs = processes or Processes()
        self.say = log or logging.getLogger(__name__).info
        self.progress = progress and self.procs.main
        self.policy = Policy(cfg, model, tokenizer)
        if cfg.mode == "reasoning":
            self.algo = ReasoningTrainer(cfg, self.policy, instances, self.procs)
            if self.procs.main:  # the rewarded thoughts of this process's episodes: thought templates
                from iranker.thoughts import ThoughtWriter

                self.algo.thoughts = ThoughtWriter(self.out / "thoughts", source=f"training {self.out.name}")
        else:
            self.algo = FastTrainer(cfg, self.policy, instances, probe_instances, self.procs)
        self.step = 0
        if self.procs.world > 1:  # every process starts from process 0's weights, as DDP does
            ref = list(self.policy.ref.parameters()) if self.policy.ref is not None else []
            self.procs.broadcast([*self.policy.model.parameters(), *self.policy.model.buffers(),
                                  *self.policy.value_head.parameters(), *ref])

    @property
    def model(self):
        return self.policy.model

    def rollout(self, update: int) -> dict | list:
        return self.algo.rollout(update)

    def update(self, update: int) -> dict:
        """One update on every process; the log row of the whole update, with each process's weights fingerprint
        (`weights_checksums`; the run stops if the processes ever hold different weights)."""
        row = self.algo.update(update)
        return self.procs.combine(row, (self.weights_checksum(), weights_checksum(
            {f"value_head.{k}": v for k, v in self.policy.value_head.state_dict().items()})))

    def weights_checksum(self) -> int:
        """`weights_checksum` of the trained weights of the model (with full fine-tuning: every weight that
        `final/model.safetensors` holds; with LoRA: the adapters)."""
        return weights_checksum({k: p for k, p in self.policy.model.named_parameters() if p.requires_grad})

    def probe(self) -> dict[str, float]:
        return self.algo.probe()

    def probe_random(self) -> dict[str, float]:
        return self.algo.probe_random()

    # ----------------------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> Path:
        ckpt_dir = self.out / "checkpoints"
        final = ckpt_dir / f"step-{self.step:06d}"
        if self.procs.main:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            tmp = ckpt_dir / f".tmp-step-{self.step:06d}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            torch.save({"policy": self.policy.trainable_state(), "value_head": self.policy.value_head.state_dict(),
                        "optimizer": self.policy.optimizer.state_dict(), "step": self.step,
                        "config": self.cfg.model_dump()}, tmp / "state.pt")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            (ckpt_dir / ".latest.tmp").write_text(final.name)
            os.replace(ckpt_dir / ".latest.tmp", ckpt_dir / "latest")
            for old in sorted(ckpt_dir.glob("step-*"))[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old)
        self.procs.barrier()
        return final

    def load_checkpoint(self) -> bool:
        latest = self.out / "checkpoints" / "latest"
        if not latest.exists():
            return False
        self.load_state(self.out / "checkpoints" / latest.read_text().strip() / "state.pt")
        return True

    def load_state(self, path: Path, optimizer: bool = True) -> int:
        """Load a checkpoint's policy, critic (and optimizer) state; returns its step. `path` may also be an
        adapter folder (`iranker model export`): its LoRA weights and the step on its card, to rank with (it holds
        no critic or optimizer state, so it cannot resume training)."""
        if Path(path).is_dir():
            if optimizer:
                raise ValueError(f"{path}: an adapter folder holds no optimizer state; resume from a state.pt")
            from iranker.train.adapter import read_adapter

            weights, self.step = read_adapter(path)
            self.policy.load_trainable_state(weights, strict=True)
            return self.step
        state = torch.load(path, weights_only=False, map_location=self.policy.device)
        self.policy.load_trainable_state(state["policy"])
        self.policy.value_head.load_state_dict(state["value_head"])
        if optimizer:
            self.policy.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        return self.step

    def save_final(self) -> Path:
        """A standard transformers folder (LoRA merged, float32) that `iranker rank --model DIR` and vLLM load,
        with the ranking settings it was trained under."""
        final, tmp = self.out / "final", self.out / ".final.tmp"
        if self.procs.main:
            shutil.rmtree(tmp, ignore_errors=True)
            self.policy.merged().save_pretrained(tmp)
            self.policy.tokenizer.save_pretrained(tmp)
            settings = self.cfg.ranking.model_copy(
                update={"label_scheme": getattr(self.policy.encoder, "label_scheme", None),
                        "labels": "".join(getattr(self.policy.encoder, "labels", ()))})
            write_settings(tmp, settings)
            thoughts = getattr(self.algo, "thoughts", None)
            if thoughts is not None:  # the thought store travels with the model it came from
                shutil.copytree(thoughts.close(), tmp / "thoughts")
            from iranker.devices import cpu_info

            (tmp / "iranker-train.json").write_text(json.dumps({"steps": self.step, "config": self.cfg.model_dump(),
                                                                "dtype": str(self.policy.dtype), "cpu": cpu_info()},
                                                               indent=1))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        self.procs.barrier()
        return final

    # ------------------------------------------------------------------------------------------------- loop

    def train(self, stop_after: int | None = None) -> Path:
        from tqdm import tqdm

        main = self.procs.main
        writer = _tensorboard(self.out / "tb") if main else None
        log_path = self.out / "metrics.jsonl"
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc="training", unit="upd", disable=not self.progress,
                   file=sys.stderr)
        probe_now = main and bool(self.algo.probe_steps)
        random_all = self.probe_random()["all"] if probe_now else None

        def run_probe() -> dict[str, float]:
            result = self.probe()
            with (self.out / "probe.jsonl").open("a") as f:  # "random": the uniform choice, same pools
                f.write(json.dumps({"step": self.step, **result, "random": random_all}) + "\n")
            if writer:
                for key, v in result.items():
                    writer.add_scalar(f"probe/{key}", v, self.step)
            return result

        if probe_now and self.step == 0:
            first = run_probe()
            rand = self.probe_random()
            self.say(f"probe: {len(self.algo.probe_steps)} held-out pools, expected exclusion reward before "
                     "training: " + ", ".join(f"{k} {v:.3f} (random {rand[k]:.3f})" for k, v in first.items()
                                              if k != "first_label")
                     + f"; most likely choice is the first label in {first['first_label']:.0%} of pools "
                     f"(uniform: {rand['first_label']:.0%})")
        while self.step < self.cfg.steps:
            row = self.update(self.step)
            self.step += 1
            if probe_now and (self.step % self.cfg.probe.every == 0 or self.step == self.cfg.steps):
                row["probe"] = run_probe()["all"]
            if main:
                with log_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            if writer:
                for key in ("reward", "expected_reward", "kl", "entropy", "value_loss", "steps_per_s", "clip_frac"):
                    if key in row:
                        writer.add_scalar(f"train/{key}", row[key], self.step)
            bar.set_postfix(reward=f"{row['reward']:.3f}", exp=f"{row['expected_reward']:.3f}",
                            kl=f"{row.get('kl', 0.0):.4f}", sps=f"{row['steps_per_s']:.1f}")
            bar.update(1)
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                self.save_checkpoint()
            if stop_after is not None and self.step >= stop_after:
                break
        bar.close()
        if writer:
            writer.close()
        return self.save_final() if self.step >= self.cfg.steps else self.out / "checkpoints"


def _dtype_reason(cfg: TrainConfig, policy) -> str:
    """Why `dtype: auto` chose what it did on a CPU (the flags that decide it)."""
    if cfg.dtype != "auto" or policy.device.type != "cpu":
        return ""
    from iranker.devices import cpu_info

    info = cpu_info()
    return (f" - dtype auto: {info['model']} {'has' if info['native_bf16'] else 'lacks'} native bf16 "
            f"({', '.join(f for f in info['simd_flags'] if 'bf16' in f) or 'no amx_bf16 / avx512_bf16'})")


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path))


def run_training(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True,
                 stop_after: int | None = None) -> Path:
    """Validate everything, then train; returns the final model folder (or the checkpoint folder if stopped).
    Under a launcher (torchrun, accelerate launch) every process calls this with the same arguments."""
    if cfg.algo == "grpo":
        if resume:
            raise ValueError("--resume: algo grpo runs through TRL's GRPOTrainer; resume is for algo ppo/expected")
        from iranker.train.grpo import run_grpo

        return run_grpo(cfg, out, progress=progress)
    from iranker.devices import resolve_device

    out = Path(out)
    resolve_device(cfg.device)  # a missing GPU fails here, before anything is loaded or written
    instances = load_training_instances(cfg)
    procs = init_processes(cfg.device)
    try:
        return _train(cfg, out, resume, progress, stop_after, instances, procs)
    finally:
        procs.close()


def _train(cfg: TrainConfig, out: Path, resume: bool, progress: bool, stop_after: int | None,
           instances: list[RankingInstance], procs: Processes) -> Path:
    model, tokenizer = load_model(cfg)
    if out.exists() and any(out.iterdir()) and not resume:
        raise FileExistsError(f"--out {out}: not empty; pass --resume to continue the run there, or another folder")
    procs.barrier()  # every process has checked --out before process 0 writes into it
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)
    procs.barrier()
    probe = load_training_instances(cfg, split="validation") if cfg.probe.pools else None
    trainer = Trainer(cfg, instances, model, tokenizer, out, progress=progress, probe_instances=probe,
                      processes=procs)
    resumed = resume and trainer.load_checkpoint()  # every process loads the same checkpoint
    if procs.main:
        if resumed:
            trainer.say(f"resumed from step {trainer.step}")
            for log in (out / "metrics.jsonl", out / "probe.jsonl"):
                if log.exists():  # drop log lines written after the checkpoint
                    rows = [r for r in log.read_text().splitlines() if json.loads(r)["step"] <= trainer.step]
                    log.write_text("".join(r + "\n" for r in rows))
        elif resume:  # no checkpoint yet (stopped before the first): start over, without that start's logs
            for log in (out / "metrics.jsonl", out / "probe.jsonl"):
                log.unlink(missing_ok=True)
            shutil.rmtree(out / "tb", ignore_errors=True)
        (out / "config.json").write_text(json.dumps(cfg.model_dump(), indent=1))
        trainer.say(f"training on {len(instances)} instances ({cfg.algo}, {cfg.mode} mode, {cfg.steps} updates of "
                    f"{cfg.batch_size} episodes, {trainer.policy.device.type} "
                    f"{str(trainer.policy.dtype).removeprefix('torch.')}" + _dtype_reason(cfg, trainer.policy)
                    + (f", {procs.world} processes" if procs.world > 1 else "") + ")")
    procs.barrier()
    return trainer.train(stop_after=stop_after)
