"""The fast-mode trainer: one elimination is one label out of the pool, its distribution explicit.

Per update: `batch_size` episodes from the training split, shown in the serving layout (`iranker.train.pools`):
random sub-pools (one decision each, or with `pools.balance_positions` one per cyclic order) and, for a share
`pools.on_policy`, pools the policy keeps eliminating from itself (several decisions, GAE with the critic). For
every decision: pi(label | pool) over the pool's labels, the critic V (a linear head on the detached last hidden
state of the cue), the frozen reference pi_ref.

- `algo: expected` follows the gradient of the exact expected exclusion reward E_pi[r] = sum_a pi(a) r(a) (zero
  variance; one pass, its graph kept from the rollout).
- `algo: ppo` samples one label per decision; advantage r(a) - E_pi[r] (`ppo.baseline: expected`, an exact control
  variate) or r(a) - V / GAE (`critic`); then `ppo.epochs` passes of `ppo.minibatches` minibatches each, every one a
  fresh forward pass and an optimizer step, with the clipped surrogate on the ratio pi/pi_old - which leaves 1 after
  the first minibatch, so the clip engages (its share is logged as `clip_frac`).

Both add kl_coef * KL(pi || pi_ref) - entropy_coef * H(pi) + vf_coef * (V - R)^2, KL and entropy exact over the
pool's labels. Decisions are scored by `Policy.score_cues`: the decisions that share a listed prompt (the steps of
an on-policy episode, a pool's relisted copies aside) run as the cues of one sequence.
"""

from __future__ import annotations

import contextlib
import time
from functools import partial

import torch

from iranker.io import seeded_rng
from iranker.prompts import MAX_POOL, build_context, iterative_prompt
from iranker.schema import RankingInstance
from iranker.train.distributed import Processes
from iranker.train.episodes import sample_on_cache
from iranker.train.pools import Step, TrainingSet, gae, layout_steps, reward_row, sample_pool


def episode_counts(rng, batch: int, whole: float, on_policy: float) -> tuple[int, int]:
    """How many of an update's `batch` episodes are whole instances and on-policy pools, given their shares: each
    count is its share of the batch in expectation (rounding would make batch 2 at 0.75 all whole instances), and
    together they never exceed the batch. With one uniform r, x -> floor(x) + (r < frac(x)) for x = b*whole (the
    whole instances) and x = b*(whole + on_policy) (whole and on-policy together); r is drawn only when a product
    is fractional, so whole-number splits draw the same episodes as before."""
    def part(x: float) -> tuple[int, float]:
        n = int(x + 1e-9)
        return n, max(x - n, 0.0)

    (wa, fa), (wb, fb) = part(batch * whole), part(batch * (whole + on_policy))
    r = rng.random() if fa > 1e-9 or fb > 1e-9 else 1.0
    n_whole = wa + (r < fa)
    return n_whole, wb + (r < fb) - n_whole


class FastTrainer:
    def __init__(self, cfg, policy, instances: list[RankingInstance],
                 probe_instances: list[RankingInstance] | None = None, procs: Processes | None = None):
        self.cfg, self.policy, self.instances = cfg, policy, instances
        self.procs = procs or Processes()
        self.rank, self.world = self.procs.rank, self.procs.world
        self.data = TrainingSet(instances, cfg.ranking.max_words)
        self.contexts = list(self.data.contexts)  # probe contexts follow the training ones
        self._encoded: dict[tuple, object] = {}
        self._frozen: dict | None = None  # the frozen layers' outputs of the current update (Policy.score_cues)
        self._clock: _Clock | None = None  # the current update's phase clock
        self.probe_steps = self._probe_steps(probe_instances or [])

    # ----------------------------------------------------------------------------------------------- scoring

    def _encode(self, st: Step):
        key = (st.inst, tuple(st.listing))
        if key not in self._encoded:
            if len(self._encoded) > 4096:
                self._encoded.clear()
            self._encoded[key] = self.policy.encoder.encode(iterative_prompt(self.contexts[st.inst], st.listing,
                                                                             alphabet=self.policy.labels))
        return self._encoded[key]

    def score(self, model, steps: list[Step], with_value: bool):
        """(log pi over the labels [B, 26], -inf outside each pool; critic values [B] or None), in step order.
        Steps that share a listing are scored as the cues of one sequence."""
        groups: dict[tuple, list[int]] = {}
        for b, st in enumerate(steps):
            groups.setdefault((st.inst, tuple(st.listing)), []).append(b)
        logits = [None] * len(steps)
        hidden = [None] * len(steps)
        with self.policy.autocast():
            for rows in groups.values():
                enc = self._encode(steps[rows[0]])
                lg, h = self.policy.score_cues(model, enc, [steps[b].pool for b in rows], with_hidden=with_value,
                                               frozen=self._frozen)
                for r, b in enumerate(rows):
                    logits[b] = lg[r]
                    hidden[b] = h[r] if with_value else None
        logits = torch.stack(logits)
        dev = logits.device
        in_pool = torch.zeros(len(steps), MAX_POOL, dtype=torch.bool, device=dev)
        for b, st in enumerate(steps):
            in_pool[b, st.pool] = True
        logp = torch.log_softmax(logits.masked_fill(~in_pool, float("-inf")), dim=-1)
        values = None
        if with_value:
            values = self.policy.value_head(torch.stack(hidden).detach().float()).squeeze(-1)
        return logp, values

    # -------------------------------------------------------------------------------------------------- probe

    def _probe_steps(self, probe: list[RankingInstance]) -> list[Step]:
        """Fixed sub-pools of held-out instances (scenario-balanced, seeded); their contexts follow the training
        instances' in `self.contexts`."""
        cfg = self.cfg
        if not cfg.probe.pools or not probe:
            return []
        offset = len(self.contexts)
        self.contexts += [build_context(i.to_request(), max_words=cfg.ranking.max_words) for i in probe]
        self.probe_scenarios = {offset + k: i.scenario for k, i in enumerate(probe)}
        groups: dict[str, list[int]] = {}
        for k, inst in enumerate(probe):
            groups.setdefault(inst.scenario, []).append(k)
        rng = seeded_rng(cfg.seed, "probe")
        steps: list[Step] = []
        for _ in range(50 * cfg.probe.pools):
            if len(steps) >= cfg.probe.pools:
                break
            k = rng.choice(groups[rng.choice(sorted(groups))])
            pool = sample_pool(rng, probe[k], cfg)
            if pool is not None:
                steps += layout_steps(offset + k, probe[k], pool, cfg.ranking.layout, cfg.ranking.window, False)
        return steps

    def _probe_means(self, score) -> dict[str, float]:
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
        return self._probe_means(lambda st: (float(reward_row(st.grades, st.pool).sum()) / len(st.pool),
                                             1 / len(st.pool)))

    @torch.no_grad()
    def probe(self, model=None) -> dict[str, float]:
        """Exact expected exclusion reward of the policy on the probe pools, overall and per scenario;
        `first_label`: the share of pools whose most likely choice is the pool's first label (a position bias;
        uniform: the mean of 1/pool size)."""
        model = model or self.policy.model
        model.eval()
        logp, _ = self.score(model, self.probe_steps, False)
        scored = {id(st): row for st, row in zip(self.probe_steps, logp.cpu(), strict=True)}

        def one(st: Step) -> tuple[float, float]:
            row = scored[id(st)]
            return float((row.exp() * reward_row(st.grades, st.pool)).sum()), float(int(row.argmax()) == st.pool[0])

        return self._probe_means(one)

    # ----------------------------------------------------------------------------------------------- rollouts

    def _draw(self, update: int) -> list[tuple[int, str, Step]]:
        """This process's episodes of the update (seeded by it): (episode index, kind, first step), kind one of
        "whole" (a whole instance, the serving pool), "on_policy" (a sub-pool the policy keeps eliminating from)
        or "pool" (one decision on a random sub-pool). Episode e of the update belongs to process e % world."""
        cfg = self.cfg
        rng = seeded_rng(cfg.seed, "update", update)
        n_whole, n_on_policy = episode_counts(rng, cfg.batch_size, cfg.pools.episodes, cfg.pools.on_policy)
        drawn: list[tuple[int, str, Step]] = []
        episodes = 0
        while episodes < cfg.batch_size:
            k = self.data.draw(rng, cfg.mix)
            inst = self.instances[k]
            if episodes < n_whole:
                n = min(len(inst.candidates), cfg.ranking.window)
                if len({inst.grade(c.id) for c in inst.candidates[:n]}) < 2:
                    continue
                [first] = layout_steps(k, inst, list(range(n)), cfg.ranking.layout, cfg.ranking.window, False)
                if cfg.pools.balance_positions:  # one cyclic rotation of the listing, drawn per episode
                    r = rng.randrange(n)
                    first = Step(k, first.listing[r:] + first.listing[:r], first.pool,
                                 first.grades[r:] + first.grades[:r])
                group, kind = [first], "whole"
            else:
                pool = sample_pool(rng, inst, cfg)
                if pool is None:
                    continue
                on_policy = episodes < n_whole + n_on_policy and len(pool) > 2
                group = layout_steps(k, inst, pool, cfg.ranking.layout, cfg.ranking.window,
                                     cfg.pools.balance_positions and not on_policy)
                kind = "on_policy" if on_policy else "pool"
            for g, first in enumerate(group):
                if (episodes + g) % self.world == self.rank:
                    drawn.append((episodes + g, kind, first))
            episodes += len(group)
        return drawn

    def _sample_sequential(self, update: int, drawn: list[tuple[int, str, Step]]) -> dict[int, list[tuple[Step, int]]]:
        """Roll out the multi-decision episodes, sampling each elimination from the policy (no gradients): on the
        serving backend's key/value cache in the cached layout, one relisted prompt per step in relist."""
        cfg, policy = self.cfg, self.policy
        seq = [(e, first) for e, kind, first in drawn if kind != "pool"]
        if not seq:
            return {}
        gens = [torch.Generator().manual_seed(seeded_rng(cfg.seed, "actions", update, e).randrange(2**31))
                for e, _ in seq]

        def keep_going(st: Step) -> bool:
            return len({st.grades[j] for j in st.pool}) > 1

        policy.model.eval()
        if cfg.ranking.layout == "cached":
            traces = sample_on_cache(policy, self.contexts, [first for _, first in seq], gens, keep_going,
                                     self._clock)
            return {e: trace for (e, _), trace in zip(seq, traces, strict=True)}
        out = {}
        with torch.no_grad():
            for (e, st), gen in zip(seq, gens, strict=True):
                trace = []
                while True:
                    probs = self.score(policy.model, [st], False)[0][0].exp().cpu()
                    a = int(torch.multinomial(probs, 1, generator=gen))
                    trace.append((st, a))
                    st = _next_step(st, a, cfg.ranking.layout)
                    if len(st.pool) < 2 or not keep_going(st):
                        break
                out[e] = trace
        return out

    def rollout(self, update: int, score: bool = True) -> dict:
        """This process's decisions of this update: "steps", "episode" (index per step), "reward_table",
        "actions" (-1 where not yet drawn) and, with `score`, everything PPO needs: the policy's log-probs
        ("old_logp") and values from one pass without gradients, the missing actions drawn from them, rewards,
        expected rewards, advantages and returns (`finish`)."""
        drawn = self._draw(update)
        traces = self._sample_sequential(update, drawn)
        steps, episode, actions = [], [], []
        for e, kind, first in drawn:
            for st, a in (traces[e] if kind != "pool" else [(first, -1)]):
                steps.append(st)
                episode.append(e)
                actions.append(a)
        dev = self.policy.device
        tables = [reward_row(st.grades, st.pool) for st in steps]
        n = len(steps)
        batch = {"steps": steps, "episode": episode, "actions": torch.tensor(actions, dtype=torch.long, device=dev),
                 "reward_table": torch.stack(tables).to(dev) if tables else torch.zeros(0, MAX_POOL, device=dev),
                 "update": update, "rewards": torch.zeros(n), "expected": torch.zeros(n),
                 "old_logp": torch.zeros(n, MAX_POOL, device=dev), "advantages": torch.zeros(n, device=dev),
                 "returns": torch.zeros(n, device=dev)}
        if score:
            with torch.no_grad():
                for rows in self.episodes_of(batch):
                    logp, values = self.score(self.policy.model, [steps[b] for b in rows], True)
                    self.finish(batch, rows, logp, values)
        return batch

    @staticmethod
    def episodes_of(batch: dict) -> list[list[int]]:
        """The step indices of each episode, in order: the unit of a forward pass (an episode's decisions share
        its listing) and of a PPO minibatch."""
        out: dict[int, list[int]] = {}
        for b, e in enumerate(batch["episode"]):
            out.setdefault(e, []).append(b)
        return list(out.values())

    def finish(self, batch: dict, rows: list[int], logp: torch.Tensor, values: torch.Tensor) -> None:
        """Fill in one episode's rows of a rollout from the policy's log-probs and values of its steps: the actions
        not drawn yet (seeded by episode), rewards, expected rewards, advantages (r - E_pi[r] for a one-decision
        episode with the expected baseline, else GAE with the critic) and returns."""
        cfg = self.cfg
        logp, values = logp.detach(), values.detach().float().cpu()
        probs = logp.exp().cpu()
        table = batch["reward_table"][rows].cpu()
        actions = batch["actions"][rows].cpu()
        e = batch["episode"][rows[0]]
        gen = torch.Generator().manual_seed(seeded_rng(cfg.seed, "pool-actions", batch["update"], e).randrange(2**31))
        for r in range(len(rows)):
            if actions[r] < 0:
                actions[r] = int(torch.multinomial(probs[r], 1, generator=gen))
        rewards = table.gather(1, actions[:, None]).squeeze(1)
        expected = (probs * table).sum(-1)
        if len(rows) == 1 and cfg.ppo.baseline == "expected":
            adv, returns = [float(rewards[0] - expected[0])], [float(rewards[0])]
        else:
            adv, returns = gae(rewards.tolist(), values.tolist(), cfg.ppo.gamma, cfg.ppo.lam)
        idx = torch.tensor(rows, dtype=torch.long)
        dev = self.policy.device
        batch["actions"][idx.to(dev)] = actions.to(dev)
        batch["rewards"][idx] = rewards
        batch["expected"][idx] = expected
        batch["old_logp"][idx.to(dev)] = logp.to(dev)
        batch["advantages"][idx.to(dev)] = torch.tensor(adv, dtype=torch.float32, device=dev)
        batch["returns"][idx.to(dev)] = torch.tensor(returns, dtype=torch.float32, device=dev)

    # ------------------------------------------------------------------------------------------------ the update

    def _ref_logp(self, batch: dict) -> torch.Tensor | None:
        """The frozen reference's log-probs of every decision, scored episode by episode (the sequences the policy
        pass scores, so the frozen layers' output is shared)."""
        steps = batch["steps"]
        with torch.no_grad(), self.policy.reference() as ref:
            if ref is None:
                return None
            out = torch.empty(len(steps), MAX_POOL, device=self.policy.device)
            for ep in self.episodes_of(batch):
                out[torch.tensor(ep, device=out.device)] = self.score(ref, [steps[b] for b in ep], False)[0]
            return out

    def _loss(self, batch: dict, idx: torch.Tensor | None, logp, values, ref_logp,
              algo: str = "expected") -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        pick = (lambda t: t) if idx is None else (lambda t: t[idx])
        p = logp.exp()
        safe = logp.masked_fill(torch.isinf(logp), 0.0)
        entropy = -(p * safe).sum(-1)
        kl = torch.zeros_like(entropy)
        if ref_logp is not None:
            kl = (p * (safe - pick(ref_logp).masked_fill(torch.isinf(pick(ref_logp)), 0.0))).sum(-1)
        stats = {}
        if algo == "expected":
            policy_loss = -(p * pick(batch["reward_table"])).sum(-1).mean()
        else:
            a = pick(batch["actions"])
            ratio = (logp.gather(1, a[:, None]).squeeze(1) - pick(batch["old_logp"]).gather(1, a[:, None]).squeeze(1)
                     ).exp()
            adv = pick(batch["advantages"])
            policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - cfg.ppo.clip, 1 + cfg.ppo.clip) * adv).mean()
            dev = (ratio.detach() - 1).abs()
            stats = {"clip_frac": float((dev > cfg.ppo.clip).float().mean()), "ratio_dev": float(dev.max())}
        value_loss = ((values - pick(batch["returns"])) ** 2).mean()
        loss = policy_loss + cfg.ppo.kl_coef * kl.mean() - cfg.ppo.entropy_coef * entropy.mean() \
            + cfg.ppo.vf_coef * value_loss
        stats.update(loss=loss.item(), policy_loss=policy_loss.item(), value_loss=value_loss.item(),
                     kl=kl.mean().item(), entropy=entropy.mean().item())
        return loss, stats

    def _supervised(self, update: int) -> dict:
        """A supervised update on gold eliminations: this update's episodes (drawn as for RL) teacher-forced
        (`gold_episode`), every step's loss -log sum_{c in the lowest-grade set} pi(c), one forward and backward
        pass per episode (its steps are the cues of one sequence): no rollout, no reference pass."""
        cfg, policy, sync = self.cfg, self.policy, self.procs.sync_grads
        t0 = time.perf_counter()
        clock = self._clock = _Clock(policy.device)
        rng = seeded_rng(cfg.seed, "gold", update)
        with clock("rollout"):
            episodes = [gold_episode(first, rng, cfg.ranking.layout) for _, _, first in self._draw(update)]
            episodes = [ep for ep in episodes if ep]
        n = sum(len(ep) for ep in episodes)
        policy.model.train()
        policy.optimizer.zero_grad()
        losses, expected, hits = [], [], []
        for ep in episodes:
            steps = [st for st, _ in ep]
            with clock("forward"):
                logp, _ = self.score(policy.model, steps, False)
                gold = torch.zeros_like(logp, dtype=torch.bool)
                for b, (_, worst) in enumerate(ep):
                    gold[b, worst] = True
                step_loss = -torch.logsumexp(logp.masked_fill(~gold, float("-inf")), dim=-1)
                table = torch.stack([reward_row(st.grades, st.pool) for st in steps]).to(logp.device)
            with clock("backward"):
                (step_loss.sum() / n).backward()
            losses += step_loss.tolist()
            expected += (logp.detach().exp() * table).sum(-1).tolist()
            hits += gold.gather(1, logp.detach().argmax(-1, keepdim=True)).squeeze(1).float().tolist()
        with clock("optimizer"):
            policy.step_optimizer(partial(sync, weight=n))
        policy.model.eval()
        dt = time.perf_counter() - t0
        m = max(n, 1)
        return {"step": update + 1, "stage": "supervised", "loss": sum(losses) / m, "reward": sum(hits) / m,
                "expected_reward": sum(expected) / m, "gold_top1": sum(hits) / m, "elimination_steps": n,
                "steps_per_s": n / dt, "seconds": dt, "seconds_by_phase": clock.seconds}

    def update(self, update: int) -> dict:
        """Roll out this process's episodes and step the optimizer; with several processes every step's gradient
        is the mean over the decisions of all of them (`Processes.sync_grads`, weighted by each one's count).

        `algo: expected`: ONE forward and backward pass over all decisions (those sharing a listing - an
        episode's - as the cues of one sequence). `algo: ppo`: a scoring pass without gradients, then
        `ppo.epochs` x `ppo.minibatches` passes, minibatches made of whole episodes."""
        self._frozen = {}  # the update's passes share the frozen layers' work (freed when it ends)
        try:
            return self._update(update)
        finally:
            self._frozen = self._clock = None

    def _update(self, update: int) -> dict:
        cfg, policy, sync = self.cfg, self.policy, self.procs.sync_grads
        stage = cfg.stage_at(update)
        policy.optimizer.param_groups[0]["lr"] = stage.lr_actor or cfg.lr_actor
        if stage.algo == "supervised":
            return self._supervised(update)
        t0 = time.perf_counter()
        clock = self._clock = _Clock(policy.device)
        one_pass = stage.algo == "expected"
        with clock("rollout"):
            batch = self.rollout(update, score=not one_pass)
        steps = batch["steps"]
        with clock("reference"):
            ref_logp = self._ref_logp(batch) if steps and cfg.ppo.kl_coef > 0 else None
        policy.model.train()
        rows: list[dict] = []
        if one_pass:  # one forward and backward pass per episode, gradients accumulated: memory of one episode
            policy.optimizer.zero_grad()
            for ep in self.episodes_of(batch):
                with clock("forward"):
                    logp, values = self.score(policy.model, [steps[b] for b in ep], True)
                    self.finish(batch, ep, logp, values)
                    loss, stats = self._loss(batch, torch.tensor(ep, device=policy.device), logp, values, ref_logp,
                                             stage.algo)
                with clock("backward"):
                    (loss * len(ep) / len(steps)).backward()
                rows += [stats] * len(ep)  # the update's statistics are means over its decisions
            with clock("optimizer"):
                policy.step_optimizer(partial(sync, weight=len(steps)))
        else:
            gen = torch.Generator().manual_seed(seeded_rng(cfg.seed, "minibatches", update).randrange(2**31))
            episodes = self.episodes_of(batch)
            for _ in range(cfg.ppo.epochs):
                order = torch.randperm(len(episodes), generator=gen).tolist()
                for mb in range(cfg.ppo.minibatches):
                    chosen = [b for i in order[mb::cfg.ppo.minibatches] for b in episodes[i]]
                    idx = torch.tensor(chosen, dtype=torch.long)
                    policy.optimizer.zero_grad()
                    if chosen:
                        with clock("forward"):
                            logp, values = self.score(policy.model, [steps[i] for i in chosen], True)
                            loss, stats = self._loss(batch, idx.to(policy.device), logp, values, ref_logp,
                                                     stage.algo)
                        with clock("backward"):
                            loss.backward()
                        rows.append(stats)
                    # every process steps, even with an empty share: same weights
                    with clock("optimizer"):
                        policy.step_optimizer(partial(sync, weight=len(chosen)))
        policy.model.eval()
        dt = time.perf_counter() - t0
        by_size: dict[str, list[float]] = {}
        for st, r in zip(steps, batch["rewards"].tolist(), strict=True):
            by_size.setdefault(str(len(st.pool)), []).append(r)
        stats = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}
        if "ratio_dev" in stats:
            stats["ratio_dev"] = max(r["ratio_dev"] for r in rows)
        n = max(len(steps), 1)
        return {"step": update + 1, "reward": float(batch["rewards"].sum()) / n,
                "expected_reward": float(batch["expected"].sum()) / n, **stats,
                "elimination_steps": len(steps), "steps_per_s": len(steps) / dt, "seconds": dt,
                "seconds_by_phase": clock.seconds,
                "reward_by_pool_size": {k: sum(v) / len(v) for k, v in sorted(by_size.items(),
                                                                               key=lambda kv: int(kv[0]))},
                "steps_by_pool_size": {k: len(v) for k, v in sorted(by_size.items(), key=lambda kv: int(kv[0]))}}


def gold_episode(first: Step, rng, layout: str) -> list[tuple[Step, list[int]]]:
    """Teacher forcing: the steps of eliminating, at each step, one of the pool's lowest-grade candidates (a seeded
    choice among them) until the grades left are equal; each with its lowest-grade set (listing positions)."""
    out, st = [], first
    while len(st.pool) > 1 and len({st.grades[j] for j in st.pool}) > 1:
        low = min(st.grades[j] for j in st.pool)
        worst = [j for j in st.pool if st.grades[j] == low]
        out.append((st, worst))
        st = _next_step(st, rng.choice(worst), layout)
    return out


class _Clock:
    """Seconds spent per phase of an update (`seconds_by_phase` in its log row): rollout (sampling, and with
    PPO the scoring pass without gradients; of it "rollout.prefill", the episodes' prompts prefilled on the
    serving cache), reference, forward, backward, optimizer. With the frozen layers'
    output reused (`lora.reuse_frozen`), their one run per sequence counts in the first pass that needs it (the
    reference, or with PPO the scoring pass). On CUDA the clock waits for the device at both edges."""

    def __init__(self, device: torch.device):
        self.seconds: dict[str, float] = {}
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        self.sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0


def _next_step(st: Step, eliminated: int, layout: str) -> Step:
    """The step after eliminating label position `eliminated`: the cached layout keeps the listing and hides the
    candidate; relist lists the rest again, relabelled."""
    rest = [j for j in st.pool if j != eliminated]
    if layout == "relist":
        return Step(st.inst, [st.listing[j] for j in rest], list(range(len(rest))), [st.grades[j] for j in rest])
    return Step(st.inst, st.listing, rest, st.grades)
