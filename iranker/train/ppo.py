"""PPO on elimination steps. Fast mode: the action is one label of the pool, its distribution explicit.

Per update: `batch_size` episodes from the training split (random sub-pools: one step each; or, for a share
`pools.on_policy`, pools the policy eliminates from itself, several steps each). For every step the policy gives
pi(label | pool) over the pool's labels, the critic V(pool) from the last hidden state (a linear head on the
detached trunk, its own learning rate), the frozen reference pi_ref. One action is sampled; its reward is the
exclusion score of `iranker.rewards`.

Advantage: for single-step episodes, r(a) - E_pi[r] (`ppo.baseline: expected`, the exact expected reward of the
step, a zero-variance control variate) or r(a) - V (`critic`); for multi-step episodes, GAE(gamma, lam) with the
critic. Loss = clipped surrogate + kl_coef * KL(pi || pi_ref) - entropy_coef * H(pi) + vf_coef * (V - R)^2, with
KL and entropy exact over the pool's labels. `algo: expected` instead follows the gradient of E_pi[r] itself.

Reasoning mode (`mode: reasoning`): the action is the whole `<think>..</think><answer>[X]</answer>` response of
one step, sampled by `generate`; reward = exclusion + format reward of the response alone, at its last token;
token-level PPO with per-token critic values, GAE, clipped ratios, a KL penalty to the reference (k3 estimator)
and an entropy bonus. `algo: grpo` hands the same steps and rewards to TRL's GRPOTrainer (`iranker.train.grpo`).

Everything random is seeded by (seed, update): a run resumed from a checkpoint continues exactly as if it had not
been interrupted.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from iranker.data.base import seeded_rng
from iranker.prompts import build_context, iterative_prompt
from iranker.rewards import exclusion_score
from iranker.schema import RankingInstance
from iranker.train.config import TrainConfig


@dataclass
class Step:
    inst: int           # index into the training instances
    pool: list[int]     # candidate indices, in prompt order (labels A.. follow this order)
    grades: list[float]


def sample_pool(rng, inst: RankingInstance, cfg: TrainConfig) -> list[int] | None:
    """A random sub-pool whose grades differ (a pool of equals teaches nothing); None if the instance has none."""
    n = len(inst.candidates)
    grades = [inst.grade(c.id) for c in inst.candidates]
    if len(set(grades)) < 2:
        return None
    hi = min(cfg.pools.max_size, n)
    lo = min(cfg.pools.min_size, hi)
    sizes = list(range(lo, hi + 1))
    weights = [k ** -cfg.pools.small_bias for k in sizes]
    for _ in range(50):
        k = rng.choices(sizes, weights=weights)[0]
        pool = rng.sample(range(n), k)
        if len({grades[i] for i in pool}) > 1:
            return pool
    return None


class Trainer:
    def __init__(self, cfg: TrainConfig, instances: list[RankingInstance], model, tokenizer, out: Path,
                 progress: bool = True, log: Callable[[str], None] | None = None,
                 probe_instances: list[RankingInstance] | None = None):
        from iranker.backends.tokens import PromptEncoder

        self.cfg, self.instances, self.out = cfg, instances, Path(out)
        self.say = log or (lambda m: print(f"[iranker] {m}", file=sys.stderr, flush=True))
        self.progress = progress
        self.tokenizer = tokenizer
        self.encoder = PromptEncoder(tokenizer)
        self.label_ids = [self.encoder.label_ids[lab] for lab in sorted(self.encoder.label_ids)]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.contexts = [build_context(i.to_request(), max_words=cfg.max_words) for i in instances]
        self.by_scenario: dict[str, list[int]] = {}
        for k, inst in enumerate(instances):
            self.by_scenario.setdefault(inst.scenario, []).append(k)
        self.probe_steps = self._probe_steps(probe_instances or [])
        self.model = model
        self.ref = None
        if cfg.lora.r:
            from peft import get_peft_model

            self.model = get_peft_model(model, lora_config(cfg, model))
        elif cfg.ppo.kl_coef > 0:
            self.ref = copy.deepcopy(model).eval().requires_grad_(False)
        hidden = model.config.hidden_size
        torch.manual_seed(cfg.seed)
        self.value_head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        actor = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW([{"params": actor, "lr": cfg.lr_actor},
                                            {"params": self.value_head.parameters(), "lr": cfg.lr_critic}],
                                           weight_decay=0.0)
        self.step = 0

    def _probe_steps(self, probe: list[RankingInstance]) -> list[Step]:
        """Fixed sub-pools of held-out instances (scenario-balanced, seeded); their contexts follow the training
        instances' in `self.contexts`."""
        if not self.cfg.probe.pools or not probe:
            return []
        offset = len(self.contexts)
        self.contexts += [build_context(i.to_request(), max_words=self.cfg.max_words) for i in probe]
        self.probe_scenarios = {offset + k: i.scenario for k, i in enumerate(probe)}
        groups: dict[str, list[int]] = {}
        for k, inst in enumerate(probe):
            groups.setdefault(inst.scenario, []).append(k)
        rng = seeded_rng(self.cfg.seed, "probe")
        steps: list[Step] = []
        for _ in range(50 * self.cfg.probe.pools):
            if len(steps) >= self.cfg.probe.pools:
                break
            k = rng.choice(groups[rng.choice(sorted(groups))])
            pool = sample_pool(rng, probe[k], self.cfg)
            if pool is not None:
                steps.append(Step(offset + k, pool, [probe[k].grade(probe[k].candidates[i].id) for i in pool]))
        return steps

    def _probe_means(self, score: Callable[[Step], tuple[float, float]]) -> dict[str, float]:
        sums: dict[str, list[float]] = {}
        firsts = []
        for st in self.probe_steps:
            value, first = score(st)
            firsts.append(first)
            for key in ("all", self.probe_scenarios[st.inst]):
                sums.setdefault(key, []).append(value)
        return {**{k: sum(v) / len(v) for k, v in sums.items()}, "first_label": sum(firsts) / len(firsts)}

    def probe_random(self) -> dict[str, float]:
        """`probe` for a uniformly random choice on the same pools: its baseline."""
        return self._probe_means(lambda st: (float(reward_row(st.grades)[: len(st.pool)].mean()), 1 / len(st.pool)))

    def probe(self) -> dict[str, float]:
        """Exact expected exclusion reward of the current policy on the probe pools, overall and per scenario;
        `first_label`: the share of pools whose most likely choice is label [A] (a position bias; uniform: the
        mean of 1/pool size)."""
        self.model.eval()

        def score(st: Step) -> tuple[float, float]:
            logp, _ = self._forward(self.model, [st], False)
            return float((logp[0].exp() * reward_row(st.grades)).sum()), float(int(logp[0].argmax()) == 0)

        with torch.no_grad():
            return self._probe_means(score)

    # ------------------------------------------------------------------------------------------- model passes

    def _forward(self, model, steps: list[Step], with_value: bool):
        """(log pi over the pool's labels [B, 26] with -inf outside the pool, values [B] or None)."""
        from iranker.backends.transformers import _left_pad, _positions

        rows = [self.encoder.encode(iterative_prompt(self.contexts[s.inst], s.pool)).ids for s in steps]
        ids, mask = _left_pad(rows, self.pad_id)
        out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), logits_to_keep=1,
                    output_hidden_states=with_value)
        logits = out.logits[:, -1, self.label_ids].float()
        in_pool = torch.arange(logits.shape[1])[None, :] < torch.tensor([len(s.pool) for s in steps])[:, None]
        logp = torch.log_softmax(logits.masked_fill(~in_pool, float("-inf")), dim=-1)
        values = self.value_head(out.hidden_states[-1][:, -1].detach().float()).squeeze(-1) if with_value else None
        return logp, values

    def _forward_each(self, model, steps: list[Step], with_value: bool):
        """`_forward` one step at a time: on CPU a padded batch costs more than its rows one by one."""
        outs = [self._forward(model, [st], with_value) for st in steps]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]) if with_value else None

    def _ref_logp(self, steps: list[Step]) -> torch.Tensor:
        with torch.no_grad():
            if self.ref is not None:
                return self._forward_each(self.ref, steps, False)[0]
            if self.cfg.lora.r:
                with self.model.disable_adapter():
                    return self._forward_each(self.model, steps, False)[0]
        return None

    # ------------------------------------------------------------------------------------------------ rollouts

    def rollout(self, update: int, keep_graph: bool = False) -> dict:
        """Episodes of this update (seeded by it), with actions, rewards, old log-probs, values and advantages.

        With `keep_graph`, the policy's log-probs and values keep their autograd graph ("live_logp",
        "live_values"): the first optimisation epoch then needs no second forward pass (its policy is the
        sampling policy, so the PPO ratio is exactly 1 there).
        """
        cfg = self.cfg
        rng = seeded_rng(cfg.seed, "update", update)
        gen = torch.Generator().manual_seed(int(rng.random() * 2**31))
        steps, actions, rewards, expected, adv, returns = [], [], [], [], [], []
        tables, old_logps, live_logps, live_values = [], [], [], []
        n_on_policy = round(cfg.batch_size * cfg.pools.on_policy)
        self.model.eval()
        with torch.set_grad_enabled(keep_graph):
            episodes = 0
            while episodes < cfg.batch_size:
                if cfg.mix == "balanced":
                    k = rng.choice(self.by_scenario[rng.choice(sorted(self.by_scenario))])
                else:
                    k = rng.randrange(len(self.instances))
                inst = self.instances[k]
                pool = sample_pool(rng, inst, cfg)
                if pool is None:
                    continue
                grades_all = [inst.grade(c.id) for c in inst.candidates]
                on_policy = episodes < n_on_policy and len(pool) > 2
                group = cyclic_orders(pool) if cfg.pools.balance_positions and not on_policy else [pool]
                episodes += len(group)  # a position-balanced pool: one episode per cyclic order
                for pool in group:
                    ep_steps, ep_r, ep_v = [], [], []
                    while True:
                        st = Step(k, list(pool), [grades_all[i] for i in pool])
                        logp, v = self._forward(self.model, [st], True)
                        if keep_graph:
                            live_logps.append(logp[0])
                            live_values.append(v[0])
                        logp, v = logp.detach(), v.detach()
                        probs = logp[0].exp()
                        a = int(torch.multinomial(probs, 1, generator=gen))
                        table = reward_row(st.grades)
                        r, ex = float(table[a]), float((probs * table).sum())
                        tables.append(table)
                        old_logps.append(logp[0])
                        ep_steps.append(st)
                        actions.append(a)
                        ep_r.append(r)
                        expected.append(ex)
                        ep_v.append(float(v[0]))
                        pool = pool[:a] + pool[a + 1:]
                        if not on_policy or len(pool) < 2 or len({grades_all[i] for i in pool}) < 2:
                            break
                    steps += ep_steps
                    rewards += ep_r
                    if len(ep_steps) == 1 and cfg.ppo.baseline == "expected":
                        adv.append(ep_r[0] - expected[-1])
                        returns.append(ep_r[0])
                    else:
                        a_t, r_t = gae(ep_r, ep_v, cfg.ppo.gamma, cfg.ppo.lam)
                        adv += a_t
                        returns += r_t
        return {"steps": steps, "actions": torch.tensor(actions), "rewards": torch.tensor(rewards),
                "expected": torch.tensor(expected), "advantages": torch.tensor(adv, dtype=torch.float32),
                "returns": torch.tensor(returns, dtype=torch.float32), "reward_table": torch.stack(tables),
                "old_logp": torch.stack(old_logps),
                **({"live_logp": torch.stack(live_logps), "live_values": torch.stack(live_values)} if keep_graph
                   else {})}

    # ---------------------------------------------------------------------------------------------- the update

    # ------------------------------------------------------------------------------------- reasoning mode

    def _token_forward(self, model, prompt_ids: list[int], response_ids: list[int], with_value: bool):
        """Log-probs of each response token given the prompt and the tokens before it, and the critic's values
        at the positions that predict them (one sequence, no padding)."""
        ids = torch.tensor([prompt_ids + response_ids])
        out = model(input_ids=ids, output_hidden_states=with_value)
        n, t = len(prompt_ids), len(response_ids)
        logits = out.logits[0, n - 1: n - 1 + t].float()
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(1, torch.tensor(response_ids)[:, None]).squeeze(1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        values = None
        if with_value:
            values = self.value_head(out.hidden_states[-1][0, n - 1: n - 1 + t].detach().float()).squeeze(-1)
        return logp, values, entropy

    def _reasoning_rollout(self, update: int) -> list[dict]:
        """Episodes of one decision each: sample think + answer for a random sub-pool; reward = exclusion + format
        reward of the response alone, given at its last token."""
        from iranker.backends.transformers import _left_pad
        from iranker.rewards import exclusion_reward, format_reward

        cfg = self.cfg
        rng = seeded_rng(cfg.seed, "update", update)
        episodes = []
        while len(episodes) < cfg.batch_size:
            k = (rng.choice(self.by_scenario[rng.choice(sorted(self.by_scenario))]) if cfg.mix == "balanced"
                 else rng.randrange(len(self.instances)))
            pool = sample_pool(rng, self.instances[k], cfg)
            if pool is None:
                continue
            for order in cyclic_orders(pool) if cfg.pools.balance_positions else [pool]:
                prompt = iterative_prompt(self.contexts[k], order, reasoning=True)
                grades = {lab: self.instances[k].grade(self.instances[k].candidates[i].id)
                          for lab, i in zip(prompt.labels, order, strict=True)}
                episodes.append({"inst": k, "pool": order, "prompt_ids": self.encoder.encode(prompt).ids,
                                 "grades": grades})
        ids, mask = _left_pad([e["prompt_ids"] for e in episodes], self.pad_id)
        torch.manual_seed(int(rng.random() * 2**31))
        self.model.eval()
        with torch.no_grad():
            gen = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                      temperature=cfg.temperature, top_k=0, top_p=1.0,
                                      max_new_tokens=cfg.max_new_tokens, pad_token_id=self.pad_id)
        eos = self.tokenizer.eos_token_id
        for e, row in zip(episodes, gen[:, ids.shape[1]:].tolist(), strict=True):
            resp = []
            for tok in row:
                resp.append(tok)
                if tok == eos:
                    break
            e["response_ids"] = resp
            text = self.tokenizer.decode(resp, skip_special_tokens=True)
            e["text"] = text
            e["format_ok"] = format_reward(text) == 0.0
            e["exclusion"] = exclusion_reward(text, e["grades"], reasoning=True)
            e["reward"] = e["exclusion"] + format_reward(text)
        return episodes

    def _reasoning_update(self, update: int) -> dict:
        """Token-level PPO: the whole think + answer is the action; critic values per token, GAE, clipped
        ratios per token, a KL penalty to the frozen reference (k3 estimator) and an entropy bonus."""
        from iranker.rewards import INVALID_ANSWER

        cfg = self.cfg
        t0 = time.perf_counter()
        episodes = self._reasoning_rollout(update)
        with torch.no_grad():
            for e in episodes:
                logp, values, _ = self._token_forward(self.model, e["prompt_ids"], e["response_ids"], True)
                e["old_logp"], e["values"] = logp, values
                if self.ref is not None:
                    e["ref_logp"] = self._token_forward(self.ref, e["prompt_ids"], e["response_ids"], False)[0]
                elif cfg.lora.r:
                    with self.model.disable_adapter():
                        e["ref_logp"] = self._token_forward(self.model, e["prompt_ids"], e["response_ids"],
                                                            False)[0]
                else:
                    e["ref_logp"] = logp
                t = len(e["response_ids"])
                adv, ret = gae([0.0] * (t - 1) + [e["reward"]], values.tolist(), cfg.ppo.gamma, cfg.ppo.lam)
                e["adv"], e["ret"] = torch.tensor(adv), torch.tensor(ret)
        all_adv = torch.cat([e["adv"] for e in episodes])
        mean, std = all_adv.mean(), all_adv.std().clamp_min(1e-6) if all_adv.numel() > 1 else torch.tensor(1.0)
        n_tokens = int(all_adv.numel())
        self.model.train()
        stats = {}
        for _ in range(cfg.ppo.epochs):
            self.optimizer.zero_grad()
            sums = {"loss": 0.0, "policy_loss": 0.0, "value_loss": 0.0, "kl": 0.0, "entropy": 0.0}
            for e in episodes:
                logp, values, entropy = self._token_forward(self.model, e["prompt_ids"], e["response_ids"], True)
                adv = (e["adv"] - mean) / std
                ratio = (logp - e["old_logp"]).exp()
                pl = -torch.min(ratio * adv, ratio.clamp(1 - cfg.ppo.clip, 1 + cfg.ppo.clip) * adv)
                d = e["ref_logp"] - logp
                kl = d.exp() - d - 1
                vl = (values - e["ret"]) ** 2
                loss = (pl + cfg.ppo.kl_coef * kl - cfg.ppo.entropy_coef * entropy + cfg.ppo.vf_coef * vl).sum()
                (loss / n_tokens).backward()
                for key, v in (("loss", loss), ("policy_loss", pl.sum()), ("value_loss", vl.sum()),
                               ("kl", kl.sum()), ("entropy", entropy.sum())):
                    sums[key] += float(v) / n_tokens
            torch.nn.utils.clip_grad_norm_([q for g in self.optimizer.param_groups for q in g["params"]], 1.0)
            self.optimizer.step()
            stats = sums
        self.model.eval()
        dt = time.perf_counter() - t0
        by_size: dict[str, list[float]] = {}
        for e in episodes:
            by_size.setdefault(str(len(e["pool"])), []).append(e["exclusion"])
        rewards = [e["reward"] for e in episodes]
        return {"step": update + 1, "reward": sum(rewards) / len(rewards),
                "expected_reward": sum(e["exclusion"] for e in episodes) / len(episodes),  # the exclusion part
                **stats,
                "parse_failure_rate": sum(e["exclusion"] == INVALID_ANSWER for e in episodes) / len(episodes),
                "format_ok_rate": sum(e["format_ok"] for e in episodes) / len(episodes),
                "completion_tokens": n_tokens, "elimination_steps": len(episodes),
                "steps_per_s": len(episodes) / dt, "seconds": dt,
                "reward_by_pool_size": {k: sum(v) / len(v) for k, v in sorted(by_size.items(),
                                                                               key=lambda kv: int(kv[0]))}}

    def update(self, update: int) -> dict:
        cfg = self.cfg
        if cfg.mode == "reasoning":
            return self._reasoning_update(update)
        t0 = time.perf_counter()
        batch = self.rollout(update, keep_graph=True)
        steps = batch["steps"]
        ref_logp = self._ref_logp(steps)
        a, old_logp, reward_table = batch["actions"], batch["old_logp"], batch["reward_table"]
        self.model.train()
        stats = {}
        for epoch in range(cfg.ppo.epochs if cfg.algo == "ppo" else 1):
            if epoch == 0:
                logp, values = batch.pop("live_logp"), batch.pop("live_values")
            else:
                logp, values = self._forward_each(self.model, steps, True)
            p = logp.exp()
            safe = logp.masked_fill(torch.isinf(logp), 0.0)
            entropy = -(p * safe).sum(-1)
            kl = torch.zeros(len(steps))
            if ref_logp is not None:
                kl = (p * (safe - ref_logp.masked_fill(torch.isinf(ref_logp), 0.0))).sum(-1)
            if cfg.algo == "expected":
                policy_loss = -(p * reward_table).sum(-1).mean()
            else:
                ratio = (logp.gather(1, a[:, None]).squeeze(1) - old_logp.gather(1, a[:, None]).squeeze(1)).exp()
                adv = batch["advantages"]
                policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - cfg.ppo.clip, 1 + cfg.ppo.clip) * adv).mean()
            value_loss = ((values - batch["returns"]) ** 2).mean()
            loss = policy_loss + cfg.ppo.kl_coef * kl.mean() - cfg.ppo.entropy_coef * entropy.mean() \
                + cfg.ppo.vf_coef * value_loss
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([q for g in self.optimizer.param_groups for q in g["params"]], 1.0)
            self.optimizer.step()
            stats = {"loss": loss.item(), "policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                     "kl": kl.mean().item(), "entropy": entropy.mean().item()}
        self.model.eval()
        dt = time.perf_counter() - t0
        sizes = [len(s.pool) for s in steps]
        by_size: dict[str, list[float]] = {}
        for k, r in zip(sizes, batch["rewards"].tolist(), strict=True):
            by_size.setdefault(str(k), []).append(r)
        return {"step": update + 1, "reward": float(batch["rewards"].mean()),
                "expected_reward": float(batch["expected"].mean()), **stats,
                "elimination_steps": len(steps), "steps_per_s": len(steps) / dt, "seconds": dt,
                "reward_by_pool_size": {k: sum(v) / len(v) for k, v in sorted(by_size.items(), key=lambda kv:
                                                                                   int(kv[0]))}}

    # ----------------------------------------------------------------------------------------- checkpoints

    def _trainable_state(self) -> dict:
        if self.cfg.lora.r:
            from peft import get_peft_model_state_dict

            return get_peft_model_state_dict(self.model)
        return self.model.state_dict()

    def save_checkpoint(self) -> Path:
        ckpt_dir = self.out / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        final = ckpt_dir / f"step-{self.step:06d}"
        tmp = ckpt_dir / f".tmp-step-{self.step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save({"policy": self._trainable_state(), "value_head": self.value_head.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "step": self.step,
                    "config": self.cfg.model_dump()}, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        (ckpt_dir / ".latest.tmp").write_text(final.name)
        os.replace(ckpt_dir / ".latest.tmp", ckpt_dir / "latest")
        for old in sorted(ckpt_dir.glob("step-*"))[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old)
        return final

    def load_checkpoint(self) -> bool:
        latest = self.out / "checkpoints" / "latest"
        if not latest.exists():
            return False
        self.load_state(self.out / "checkpoints" / latest.read_text().strip() / "state.pt")
        return True

    def load_state(self, path: Path, optimizer: bool = True) -> int:
        """Load a checkpoint's policy, critic (and optimizer) state; returns its step."""
        state = torch.load(path, weights_only=False)
        if self.cfg.lora.r:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, state["policy"])
        else:
            self.model.load_state_dict(state["policy"])
        self.value_head.load_state_dict(state["value_head"])
        if optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        return self.step

    def save_final(self) -> Path:
        """A standard transformers folder (LoRA merged) that `iranker rank --model DIR` and vLLM load."""
        final, tmp = self.out / "final", self.out / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model = self.model.merge_and_unload() if self.cfg.lora.r else self.model
        model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        (tmp / "iranker-train.json").write_text(json.dumps({"steps": self.step, "config": self.cfg.model_dump()},
                                                           indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final

    # ------------------------------------------------------------------------------------------------- loop

    def train(self, stop_after: int | None = None) -> Path:
        from tqdm import tqdm

        writer = _tensorboard(self.out / "tb")
        log_path = self.out / "metrics.jsonl"
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc="training", unit="upd", disable=not self.progress,
                   file=sys.stderr)
        probe_now = bool(self.probe_steps) and self.cfg.mode == "fast"

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
            self.say(f"probe: {len(self.probe_steps)} held-out pools, expected exclusion reward before training: "
                     + ", ".join(f"{k} {v:.3f} (random {rand[k]:.3f})" for k, v in first.items()
                                 if k != "first_label")
                     + f"; most likely choice is the first label in {first['first_label']:.0%} of pools "
                     f"(uniform: {rand['first_label']:.0%})")
        while self.step < self.cfg.steps:
            row = self.update(self.step)
            self.step += 1
            if probe_now and (self.step % self.cfg.probe.every == 0 or self.step == self.cfg.steps):
                row["probe"] = run_probe()["all"]
            with log_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if writer:
                for key in ("reward", "expected_reward", "kl", "entropy", "value_loss", "steps_per_s"):
                    writer.add_scalar(f"train/{key}", row[key], self.step)
            bar.set_postfix(reward=f"{row['reward']:.3f}", exp=f"{row['expected_reward']:.3f}",
                            kl=f"{row['kl']:.4f}", sps=f"{row['steps_per_s']:.1f}")
            bar.update(1)
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                self.save_checkpoint()
            if stop_after is not None and self.step >= stop_after:
                break
        bar.close()
        if writer:
            writer.close()
        return self.save_final() if self.step >= self.cfg.steps else self.out / "checkpoints"


def lora_config(cfg: TrainConfig, model, **extra):
    """The profile's LoRA adapters, on the last `lora.top_layers` decoder layers (all when 0)."""
    from peft import LoraConfig

    n_layers = model.config.num_hidden_layers
    top = min(cfg.lora.top_layers, n_layers) if cfg.lora.top_layers else n_layers
    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, layers_to_transform=list(range(n_layers - top, n_layers)),
                      layers_pattern="layers", **extra)


def cyclic_orders(pool: list[int]) -> list[list[int]]:
    """The k cyclic orders of a pool of k: each candidate at each label position once.

    >>> cyclic_orders([7, 3, 5])
    [[7, 3, 5], [3, 5, 7], [5, 7, 3]]
    """
    return [pool[s:] + pool[:s] for s in range(len(pool))]


def reward_row(grades: list[float]) -> torch.Tensor:
    """The exclusion reward of eliminating each label of a pool (grades in label order); 0 beyond the pool."""
    labels = {chr(65 + j): g for j, g in enumerate(grades)}
    row = torch.zeros(26)
    row[: len(grades)] = torch.tensor([exclusion_score(lab, labels) for lab in labels])
    return row


def gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    """Generalised advantage estimates and returns of one episode (the value after the last step is 0)."""
    adv = [0.0] * len(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        next_v = values[t + 1] if t + 1 < len(values) else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv, [a + v for a, v in zip(adv, values, strict=True)]


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path))


def load_model(cfg: TrainConfig):
    """(model, tokenizer) for training; clear errors when the model does not load."""
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
    return model, tokenizer


def base_model_path(cfg: TrainConfig, out: str | Path) -> str:
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


def load_training_instances(cfg: TrainConfig, split: str = "train") -> list[RankingInstance]:
    from iranker.evaluate import load_instances

    out: list[RankingInstance] = []
    for d in cfg.data:
        if d == "samples":
            from iranker.data import sample_instances

            out += sample_instances()
            continue
        p = Path(d)
        out += load_instances(p / "instances.jsonl" if p.is_dir() else p)
    train = [i for i in out if i.split == split and len({i.grade(c.id) for c in i.candidates}) > 1]
    if not train:
        if split != "train":
            return []
        raise ValueError(f"data: no training instances (split 'train' with differing grades) in {', '.join(cfg.data)}")
    seeded_rng(cfg.seed, "instances").shuffle(train)
    return train[: cfg.max_instances] if cfg.max_instances else train


def run_training(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True,
                 stop_after: int | None = None) -> Path:
    """Validate everything, then train; returns the final model folder (or the checkpoint folder if stopped)."""
    if cfg.algo == "grpo":
        if resume:
            raise ValueError("--resume: algo grpo runs through TRL's GRPOTrainer; resume is for algo ppo/expected")
        from iranker.train.grpo import run_grpo

        return run_grpo(cfg, out, progress=progress)
    out = Path(out)
    instances = load_training_instances(cfg)
    model, tokenizer = load_model(cfg)
    if out.exists() and any(out.iterdir()) and not resume:
        raise FileExistsError(f"--out {out}: not empty; pass --resume to continue the run there, or another folder")
    out.mkdir(parents=True, exist_ok=True)
    probe = load_training_instances(cfg, split="validation") if cfg.probe.pools else None
    trainer = Trainer(cfg, instances, model, tokenizer, out, progress=progress, probe_instances=probe)
    if resume and trainer.load_checkpoint():
        trainer.say(f"resumed from step {trainer.step}")
        for log in (out / "metrics.jsonl", out / "probe.jsonl"):
            if log.exists():  # drop log lines written after the checkpoint
                rows = [r for r in log.read_text().splitlines() if json.loads(r)["step"] <= trainer.step]
                log.write_text("".join(r + "\n" for r in rows))
    (out / "config.json").write_text(json.dumps(cfg.model_dump(), indent=1))
    trainer.say(f"training on {len(instances)} instances ({cfg.algo}, {cfg.mode} mode, {cfg.steps} updates of "
                f"{cfg.batch_size} episodes)")
    return trainer.train(stop_after=stop_after)


__all__ = ["Trainer", "base_model_path", "gae", "load_model", "load_training_instances", "run_training", "sample_pool"]


def select_checkpoint(run: str | Path, states: list[Path], pools: int = 64, out: str | Path | None = None,
                      log: Callable[[str], None] | None = None) -> dict:
    """Score a run's checkpoints (and the base model) by the exact expected exclusion reward on fixed pools of the
    VALIDATION split - never the test split - and write the best checkpoint as a transformers folder
    (`out/final`, default `run/selected/final`). Returns {"scores": {name: probe}, "best", "model"}."""
    run = Path(run)
    say = log or (lambda m: print(f"[iranker] {m}", file=sys.stderr, flush=True))
    cfg = TrainConfig.model_validate(json.loads((run / "config.json").read_text()))
    cfg = cfg.model_copy(update={"probe": cfg.probe.model_copy(update={"pools": pools})})
    if not states:
        raise ValueError(f"{run}: no checkpoints to choose from")
    probe = load_training_instances(cfg, split="validation")
    if not probe:
        raise ValueError(f"data: no validation-split instances in {', '.join(cfg.data)} to select a checkpoint on")
    model, tokenizer = load_model(cfg)
    trainer = Trainer(cfg, load_training_instances(cfg), model, tokenizer, Path(out or run / "selected"),
                      progress=False, probe_instances=probe)
    scores: dict[str, dict] = {"random": trainer.probe_random()}
    if cfg.lora.r:
        with trainer.model.disable_adapter():
            scores["base"] = trainer.probe()
    named = {}
    for path in states:
        step = trainer.load_state(Path(path), optimizer=False)
        named[f"step-{step}"] = Path(path)
        scores[f"step-{step}"] = trainer.probe()
        say(f"checkpoint step {step}: validation expected exclusion reward {scores[f'step-{step}']['all']:.4f}")
    best = max(named, key=lambda k: scores[k]["all"])
    trainer.load_state(named[best], optimizer=False)
    trainer.out.mkdir(parents=True, exist_ok=True)
    final = trainer.save_final()
    (trainer.out / "selection.json").write_text(json.dumps({"best": best, "pools": len(trainer.probe_steps),
                                                            "scores": scores}, indent=1))
    return {"scores": scores, "best": best, "model": str(final), "pools": len(trainer.probe_steps)}
