"""The reasoning-mode trainer: the action is the whole `<think>..</think><answer>[X]</answer>` response of one
elimination step, sampled by `generate` at `temperature`.

Reward = exclusion + format reward of the response alone, given at its last scored token. The response is scored up
to its stop - the end of `</answer>` or the end-of-sequence token - and the tokens generated after it get no
gradient. Log-probs are taken at the sampling temperature (logits / temperature), so the ratio pi/pi_old compares the
distribution the tokens were drawn from. Token-level PPO: critic values per token, GAE, clipped ratios over
`ppo.epochs` x `ppo.minibatches` optimizer steps, a KL penalty to the frozen reference (k3 estimator) and an entropy
bonus. Reasoning prompts re-list the pool relabelled at every step, as reasoning-mode serving does.
"""

from __future__ import annotations

import time
from functools import partial

import torch

from iranker.io import seeded_rng
from iranker.prompts import iterative_prompt
from iranker.rewards import INVALID_ANSWER, exclusion_reward, format_reward
from iranker.thoughts import retrieval_text, thought_of
from iranker.train.distributed import Processes
from iranker.train.pools import TrainingSet, cyclic_orders, gae, sample_pool

STOP = "</answer>"


def stop_length(tokenizer, response_ids: list[int]) -> int:
    """How many tokens of a response are scored: up to and including the token that completes `</answer>` or the
    end-of-sequence token, whichever comes first; all of it when neither appears."""
    eos = tokenizer.eos_token_id
    text = ""
    for n, tok in enumerate(response_ids, 1):
        if tok == eos:
            return n
        text += tokenizer.decode([tok])
        if STOP in text:
            return n
    return len(response_ids)


class ReasoningTrainer:
    def __init__(self, cfg, policy, instances, procs: Processes | None = None):
        self.cfg, self.policy, self.instances = cfg, policy, instances
        self.procs = procs or Processes()
        self.rank, self.world = self.procs.rank, self.procs.world
        self.data = TrainingSet(instances, cfg.ranking.max_words)
        self.contexts = list(self.data.contexts)  # probe contexts follow the training ones
        self.probe_steps: list = []
        self.thoughts = None  # iranker.thoughts.ThoughtWriter: where rewarded thoughts are kept (the main process)

    def token_forward(self, model, prompt_ids: list[int], response_ids: list[int], with_value: bool):
        """Log-probs (at the sampling temperature) of each response token given the prompt and the tokens before
        it, their entropies, and the critic's values at the positions that predict them."""
        policy = self.policy
        ids = torch.tensor([prompt_ids + response_ids], device=policy.device)
        with policy.autocast():
            out = model(input_ids=ids, output_hidden_states=with_value)
        n, t = len(prompt_ids), len(response_ids)
        logits = out.logits[0, n - 1: n - 1 + t].float() / self.cfg.temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(1, torch.tensor(response_ids, device=policy.device)[:, None]).squeeze(1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        values = None
        if with_value:
            values = policy.value_head(out.hidden_states[-1][0, n - 1: n - 1 + t].detach().float()).squeeze(-1)
        return logp, values, entropy

    def rollout(self, update: int) -> list[dict]:
        """This process's episodes: sample think + answer for random sub-pools (relisted); reward = exclusion +
        format reward of the response up to its stop."""
        from iranker.backends.transformers import _left_pad

        cfg, policy = self.cfg, self.policy
        rng = seeded_rng(cfg.seed, "update", update)
        episodes = []
        while len(episodes) < cfg.batch_size:
            k = self.data.draw(rng, cfg.mix)
            pool = sample_pool(rng, self.instances[k], cfg)
            if pool is None:
                continue
            for order in cyclic_orders(pool) if cfg.pools.balance_positions else [pool]:
                prompt = iterative_prompt(self.contexts[k], order, reasoning=True)
                grades = {lab: self.instances[k].grade(self.instances[k].candidates[i].id)
                          for lab, i in zip(prompt.labels, order, strict=True)}
                episodes.append({"inst": k, "pool": order, "prompt_ids": policy.encoder.encode(prompt).ids,
                                 "grades": grades})
        episodes = [e for n, e in enumerate(episodes) if n % self.world == self.rank]
        if not episodes:
            return []
        ids, mask = _left_pad([e["prompt_ids"] for e in episodes], policy.pad_id)
        torch.manual_seed(seeded_rng(cfg.seed, "sampling", update, self.rank).randrange(2**31))
        policy.model.eval()
        with torch.no_grad(), policy.autocast():
            gen = policy.model.generate(input_ids=ids.to(policy.device), attention_mask=mask.to(policy.device),
                                        do_sample=True, temperature=cfg.temperature, top_k=0, top_p=1.0,
                                        max_new_tokens=cfg.max_new_tokens, pad_token_id=policy.pad_id)
        for e, row in zip(episodes, gen[:, ids.shape[1]:].tolist(), strict=True):
            resp = row[: stop_length(policy.tokenizer, row)]
            e["response_ids"] = resp
            text = policy.tokenizer.decode(resp, skip_special_tokens=True)
            e["text"] = text
            e["format_ok"] = format_reward(text) == 0.0
            e["exclusion"] = exclusion_reward(text, e["grades"], reasoning=True)
            e["reward"] = e["exclusion"] + format_reward(text)
            if self.thoughts is not None:
                inst = self.instances[e["inst"]]
                self.thoughts.add(inst.scenario, retrieval_text(inst.scenario, inst.query, inst.history),
                                  thought_of(text), e["exclusion"], len(e["pool"]))
        return episodes

    def update(self, update: int) -> dict:
        """Roll out this process's episodes and run the PPO epochs. With several processes the advantages are
        normalised by the mean and deviation over all processes' tokens, and every step's gradient is the per-token
        mean over all of them (`Processes.sync_grads`, weighted by each one's tokens)."""
        cfg, policy = self.cfg, self.policy
        t0 = time.perf_counter()
        episodes = self.rollout(update)
        with torch.no_grad():
            for e in episodes:
                logp, values, _ = self.token_forward(policy.model, e["prompt_ids"], e["response_ids"], True)
                e["old_logp"], e["values"] = logp, values
                with policy.reference() as ref:
                    e["ref_logp"] = logp if ref is None else self.token_forward(ref, e["prompt_ids"],
                                                                                e["response_ids"], False)[0]
                t = len(e["response_ids"])
                adv, ret = gae([0.0] * (t - 1) + [e["reward"]], values.tolist(), cfg.ppo.gamma, cfg.ppo.lam)
                e["adv"] = torch.tensor(adv, device=policy.device)
                e["ret"] = torch.tensor(ret, device=policy.device)
        all_adv = torch.cat([e["adv"] for e in episodes]) if episodes else torch.zeros(0, device=policy.device)
        mean, std = self.procs.mean_std(all_adv)  # over every process's tokens
        policy.model.train()
        gen = torch.Generator().manual_seed(seeded_rng(cfg.seed, "minibatches", update).randrange(2**31))
        rows = []
        for _ in range(cfg.ppo.epochs):
            order = torch.randperm(len(episodes), generator=gen).tolist()
            for mb in range(cfg.ppo.minibatches):
                chosen = [episodes[i] for i in order[mb::cfg.ppo.minibatches]]
                policy.optimizer.zero_grad()
                n_tokens = sum(len(e["response_ids"]) for e in chosen)
                sums = {"loss": 0.0, "policy_loss": 0.0, "value_loss": 0.0, "kl": 0.0, "entropy": 0.0,
                        "clip_frac": 0.0}
                for e in chosen:
                    logp, values, entropy = self.token_forward(policy.model, e["prompt_ids"], e["response_ids"], True)
                    adv = (e["adv"] - mean) / std
                    ratio = (logp - e["old_logp"]).exp()
                    pl = -torch.min(ratio * adv, ratio.clamp(1 - cfg.ppo.clip, 1 + cfg.ppo.clip) * adv)
                    d = e["ref_logp"] - logp
                    kl = d.exp() - d - 1
                    vl = (values - e["ret"]) ** 2
                    loss = (pl + cfg.ppo.kl_coef * kl - cfg.ppo.entropy_coef * entropy + cfg.ppo.vf_coef * vl).sum()
                    (loss / n_tokens).backward()
                    for key, v in (("loss", loss), ("policy_loss", pl.sum()), ("value_loss", vl.sum()),
                                   ("kl", kl.sum()), ("entropy", entropy.sum()),
                                   ("clip_frac", ((ratio - 1).abs() > cfg.ppo.clip).float().sum())):
                        sums[key] += float(v) / n_tokens
                policy.step_optimizer(partial(self.procs.sync_grads, weight=n_tokens))
                if chosen:
                    rows.append(sums)
        policy.model.eval()
        dt = time.perf_counter() - t0
        by_size: dict[str, list[float]] = {}
        for e in episodes:
            by_size.setdefault(str(len(e["pool"])), []).append(e["exclusion"])
        n = max(len(episodes), 1)
        stats = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}
        return {"step": update + 1, "reward": sum(e["reward"] for e in episodes) / n,
                "expected_reward": sum(e["exclusion"] for e in episodes) / n,  # the exclusion part
                **stats,
                "parse_failure_rate": sum(e["exclusion"] == INVALID_ANSWER for e in episodes) / n,
                "format_ok_rate": sum(e["format_ok"] for e in episodes) / n,
                "completion_tokens": int(all_adv.numel()), "elimination_steps": len(episodes),
                "steps_per_s": len(episodes) / dt, "seconds": dt,
                "reward_by_pool_size": {k: sum(v) / len(v) for k, v in sorted(by_size.items(),
                                                                               key=lambda kv: int(kv[0]))},
                "steps_by_pool_size": {k: len(v) for k, v in sorted(by_size.items(), key=lambda kv: int(kv[0]))}}
