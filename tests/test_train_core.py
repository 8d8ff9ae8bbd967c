"""Training core: trains exactly what serving runs (log-probs equal the serving backend's), PPO whose ratio leaves 1,
devices, reasoning responses scored up to their stop, ranking settings saved with the model."""

from __future__ import annotations

import itertools
import json
from functools import partial

import pytest
import torch
from conftest import ROOT

from iranker.train import load_config
from iranker.train.loop import Trainer, run_training
from iranker.train.modeling import load_model
from iranker.train.pools import Step, load_training_instances

SMOKE = ROOT / "configs" / "smoke.yaml"


@pytest.fixture
def smoke(tiny_model_dir):
    return load_config(SMOKE, {"tokenizer": str(tiny_model_dir)})


def _trainer(cfg, tmp_path):
    model, tok = load_model(cfg)
    return Trainer(cfg, load_training_instances(cfg), model, tok, tmp_path, progress=False)


@pytest.mark.parametrize("layout", ["cached", "relist"])
def test_trainer_log_probs_equal_the_serving_backends(tmp_path, smoke, layout):
    """For the same instance and pool, the trainer's log-probs are the serving backend's, in the layout that
    serves: the cached layout's cues see the listing minus the eliminated candidates; relist re-lists the pool."""
    from iranker.backends.transformers import TransformersBackend
    from iranker.prompts import iterative_prompt

    cfg = smoke.model_copy(update={"ranking": smoke.ranking.model_copy(update={"layout": layout})})
    trainer = _trainer(cfg, tmp_path)
    backend = TransformersBackend(model_obj=trainer.model, tokenizer=trainer.policy.tokenizer, name="same")
    k = next(i for i, inst in enumerate(trainer.instances) if len(inst.candidates) >= 6)
    ctx = trainer.algo.contexts[k]
    n = min(len(ctx.texts), cfg.ranking.window)
    pools = [list(range(n)), [0, 2, 3], [1, n - 1], [j for j in range(n) if j % 2 == 0]]
    checked = 0
    for pool in pools:
        if layout == "cached":
            step = Step(k, list(range(n)), pool, [0.0] * n)
            session = backend.open_pools([iterative_prompt(ctx, list(range(n)))], speculate=0)
            [[(_, choice)]] = session.decide([pool])
            labels = [chr(65 + j) for j in pool]
        else:
            step = Step(k, pool, list(range(len(pool))), [0.0] * len(pool))
            [choice] = backend.choose([iterative_prompt(ctx, pool)])
            labels = [chr(65 + j) for j in range(len(pool))]
        with torch.no_grad():
            logp, _ = trainer.algo.score(trainer.model, [step], False)
        ours = [float(logp[0, ord(lab) - 65]) for lab in labels]
        theirs = [choice.logprobs[lab] for lab in labels]
        assert ours == pytest.approx(theirs, abs=1e-4)
        assert torch.isinf(logp[0]).sum() == 26 - len(labels)  # nothing outside the pool
        checked += 1
    assert checked == len(pools)


def test_decisions_sharing_a_listing_score_as_one_sequence(tmp_path, smoke):
    """Several cues in one sequence (each seeing its own pool) give each decision's log-probs alone."""
    trainer = _trainer(smoke, tmp_path)
    k = next(i for i, inst in enumerate(trainer.instances) if len(inst.candidates) >= 5)
    n = min(len(trainer.instances[k].candidates), 20)
    steps = [Step(k, list(range(n)), pool, [0.0] * n) for pool in (list(range(n)), [0, 1, 4], [2, 3], [1, 2, 3, 4])]
    with torch.no_grad():
        together, _ = trainer.algo.score(trainer.model, steps, False)
        alone = torch.cat([trainer.algo.score(trainer.model, [s], False)[0] for s in steps])
    finite = ~torch.isinf(alone)
    assert torch.equal(finite, ~torch.isinf(together))
    assert torch.allclose(together[finite], alone[finite], atol=1e-4)


def test_ppo_runs_epochs_of_minibatches_and_the_clip_engages(tmp_path, smoke):
    cfg = smoke.model_copy(update={"algo": "ppo", "steps": 4, "batch_size": 8, "lr_actor": 1e-2,
                                   "ppo": smoke.ppo.model_copy(update={"epochs": 2, "minibatches": 2})})
    run_training(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("clip_frac" in r and 0 <= r["clip_frac"] <= 1 for r in rows)
    assert all(r["ratio_dev"] > 0 for r in rows)  # the ratio leaves 1 after the first minibatch
    assert any(r["clip_frac"] > 0 for r in rows)


def test_cuda_asked_for_without_a_gpu_fails_before_anything_is_written(tmp_path, smoke):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="device: 'cuda' was asked for, but torch sees no CUDA GPU"):
        run_training(smoke.model_copy(update={"device": "cuda"}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_bf16_training_keeps_float32_master_weights_and_learns(tmp_path, smoke):
    cfg = smoke.model_copy(update={"dtype": "bfloat16", "algo": "expected", "lr_actor": 3e-3,
                                   "pools": smoke.pools.model_copy(update={"on_policy": 0.0})})
    trainer = _trainer(cfg, tmp_path)
    assert all(p.dtype == torch.float32 for p in trainer.policy.trainable_parameters())
    probe = trainer.rollout(0)["steps"]

    def expected():
        with torch.no_grad():
            logp, _ = trainer.algo.score(trainer.model, probe, False)
        from iranker.train.pools import reward_row

        return float(sum((row.exp() * reward_row(s.grades, s.pool)).sum() for row, s in zip(logp, probe)))

    before = expected()
    for _ in range(8):
        trainer.update(0)
    assert expected() > before


def test_reasoning_scores_up_to_the_stop_at_the_sampling_temperature(tmp_path, smoke):
    from iranker.train.reasoning import stop_length

    cfg = smoke.model_copy(update={"mode": "reasoning", "temperature": 0.5, "batch_size": 2, "max_new_tokens": 4})
    trainer = _trainer(cfg, tmp_path)
    tok = trainer.policy.tokenizer
    ids = tok.encode("<think>x</think><answer>[A]</answer> and more text", add_special_tokens=False)
    n = stop_length(tok, ids)
    assert tok.decode(ids[:n]).endswith("</answer>") and n < len(ids)
    assert stop_length(tok, ids[:3] + [tok.eos_token_id] + ids[3:]) == 4
    prompt = tok.encode("the user chose", add_special_tokens=False)
    with torch.no_grad():
        logp, _, _ = trainer.algo.token_forward(trainer.model, prompt, ids[:n], False)
        logits = trainer.model(input_ids=torch.tensor([prompt + ids[:n]])).logits[0, len(prompt) - 1:-1].float()
    want = torch.log_softmax(logits / 0.5, -1).gather(1, torch.tensor(ids[:n])[:, None]).squeeze(1)
    assert torch.allclose(logp, want, atol=1e-5)


def test_the_final_model_carries_its_ranking_settings(tmp_path, smoke):
    from iranker.settings import read_settings, settings_for

    cfg = smoke.model_copy(update={"steps": 2, "ranking": smoke.ranking.model_copy(update={"max_words": 60})})
    final = run_training(cfg, tmp_path / "run", progress=False)
    saved = read_settings(final)
    assert saved.max_words == 60 and saved.layout == "cached" and saved.window == 20
    encoder = _trainer(cfg, tmp_path / "t").policy.encoder
    assert saved.template and saved.label_scheme == encoder.label_scheme and saved.labels == "".join(encoder.labels)
    warned = []
    assert settings_for(final, {"max_words": None}, warned.append).max_words == 60 and not warned
    assert settings_for(final, {"max_words": 120}, warned.append).max_words == 120
    assert len(warned) == 1 and "max_words=120 differs from the 60 the model was trained with" in warned[0]
    # a tokenizer that now reads other letters as single tokens than the model was trained with is refused
    from iranker.ranker import open_model
    from iranker.settings import write_settings

    write_settings(final, saved.model_copy(update={"labels": saved.labels.replace("Q", "")}))
    with pytest.raises(ValueError, match="labels: the model was trained labelling candidates"):
        open_model(str(final))


@pytest.mark.slow
def test_embedded_model_trainer_log_probs_equal_the_serving_backends(tmp_path, smoke):
    """The same check on the embedded SmolLM2 (sdpa attention, 30 layers), on a built-in passage instance."""
    from iranker.backends.transformers import TransformersBackend
    from iranker.prompts import iterative_prompt

    cfg = smoke.model_copy(update={"model": "smollm2-135m", "tokenizer": None, "lora": smoke.lora,
                                   "ppo": smoke.ppo.model_copy(update={"kl_coef": 0.0})})
    trainer = _trainer(cfg, tmp_path)
    backend = TransformersBackend(model_obj=trainer.model, tokenizer=trainer.policy.tokenizer, name="same")
    k = max(range(len(trainer.instances)), key=lambda i: len(trainer.instances[i].candidates))
    ctx = trainer.algo.contexts[k]
    n = min(len(ctx.texts), 20)
    for pool in (list(range(n)), [0, n // 2, n - 1], [1, 2]):
        session = backend.open_pools([iterative_prompt(ctx, list(range(n)))], speculate=0)
        [[(_, choice)]] = session.decide([pool])
        with torch.no_grad():
            logp, _ = trainer.algo.score(trainer.model, [Step(k, list(range(n)), pool, [0.0] * n)], False)
        assert [float(logp[0, j]) for j in pool] == pytest.approx([choice.logprobs[chr(65 + j)] for j in pool],
                                                                   abs=1e-4)


@pytest.mark.parametrize("algo", ["expected", "ppo"])
def test_whole_episodes_are_sampled_as_serving_ranks_and_scored_in_one_pass(tmp_path, smoke, algo):
    """`pools.episodes`: whole instances ranked by the policy on the serving cache; every decision of an episode
    shares its listing, the pool shrinking by the sampled elimination; the one-pass scores of an episode's
    decisions equal scoring each decision on its own; updates on the same episodes raise their expected reward."""
    pools = smoke.pools.model_copy(update={"episodes": 1.0, "on_policy": 0.0})
    cfg = smoke.model_copy(update={"algo": algo, "batch_size": 3, "pools": pools, "lr_actor": 3e-3})
    trainer = _trainer(cfg, tmp_path)
    batch = trainer.rollout(0)
    steps, episode = batch["steps"], batch["episode"]
    assert len(set(episode)) == 3 and len(steps) > 3
    for e in set(episode):
        mine = [b for b, x in enumerate(episode) if x == e]
        first = steps[mine[0]]
        inst = trainer.instances[first.inst]
        assert first.pool == list(range(min(len(inst.candidates), 20)))  # the whole instance, as serving lists it
        for b, c in itertools.pairwise(mine):
            assert steps[c].listing == steps[b].listing
            assert steps[c].pool == [j for j in steps[b].pool if j != int(batch["actions"][b])]
    with torch.no_grad():
        together, _ = trainer.algo.score(trainer.model, steps, False)
        alone = torch.cat([trainer.algo.score(trainer.model, [s], False)[0] for s in steps])
    finite = ~torch.isinf(alone)
    assert torch.allclose(together[finite], alone[finite], atol=1e-4)
    assert torch.allclose(batch["old_logp"][finite], alone[finite], atol=1e-4)

    def expected():
        with torch.no_grad():
            logp, _ = trainer.algo.score(trainer.model, steps, False)
        return float((logp.exp() * batch["reward_table"]).sum(-1).mean())

    if algo == "ppo":  # one update over episodes: minibatches of whole episodes, the ratio leaves 1
        row = trainer.update(0)
        assert row["elimination_steps"] == len(steps) and row["ratio_dev"] > 0
        return
    before = expected()
    for _ in range(6):
        trainer.update(0)  # the same seeded episodes every time
    assert expected() > before


@pytest.mark.parametrize("algo", ["expected", "ppo"])
def test_frozen_layers_run_once_per_update_and_train_the_same(tmp_path, smoke, algo):
    """`lora.reuse_frozen`: the layers below the adapter run once per scored sequence of an update (the reference,
    the policy and PPO's passes start from their stored output), and an update trains exactly as without reuse."""
    lora = smoke.lora.model_copy(update={"r": 8, "alpha": 16, "top_layers": 1})
    pools = smoke.pools.model_copy(update={"episodes": 0.5, "on_policy": 0.0})
    cfg = smoke.model_copy(update={"algo": algo, "batch_size": 4, "lora": lora, "pools": pools, "lr_actor": 3e-3,
                                   "ppo": smoke.ppo.model_copy(update={"kl_coef": 0.05})})
    runs = {}
    for reuse in (False, True):  # the last trainer (reuse on) is checked further below
        c = cfg.model_copy(update={"lora": lora.model_copy(update={"reuse_frozen": reuse})})
        trainer = _trainer(c, tmp_path / str(reuse))
        assert trainer.policy.frozen_layers == (1 if reuse else 0)
        calls = {"bottom": 0, "top": 0}
        base = trainer.model.get_base_model().model
        for name, layer in (("bottom", base.layers[0]), ("top", base.layers[1])):
            layer.register_forward_hook(partial(_count, calls, name))
        rows = [trainer.update(u) for u in range(2)]
        weights = {k: p.detach().clone() for k, p in trainer.model.named_parameters() if p.requires_grad}
        runs[reuse] = rows, weights, dict(calls)
    (with_rows, with_w, with_calls), (without_rows, without_w, without_calls) = runs[True], runs[False]
    for a, b in zip(with_rows, without_rows, strict=True):
        assert a["elimination_steps"] == b["elimination_steps"]
        for key in ("loss", "expected_reward", "kl"):
            assert a[key] == pytest.approx(b[key], abs=1e-5)
    assert max(float((with_w[k] - without_w[k]).abs().max()) for k in with_w) < 1e-5
    assert with_calls["top"] == without_calls["top"]  # the adapted layer runs in every pass
    assert with_calls["bottom"] < without_calls["bottom"]  # the frozen one once per sequence (the rollout aside)

    # one sequence scored twice from a cache: the frozen layer runs once, both equal the whole pass
    step = trainer.algo.rollout(0, score=False)["steps"][0]
    pools = [step.pool, step.pool[1:], step.pool[:2]]
    enc = trainer.algo._encode(step)
    policy, cache = trainer.policy, {}
    with torch.no_grad():
        whole, _ = policy.score_cues(trainer.model, enc, pools)
        with policy.reference() as ref:
            reference_whole, _ = policy.score_cues(ref, enc, pools)
        before = dict(calls)
        first, _ = policy.score_cues(trainer.model, enc, pools, frozen=cache)
        second, _ = policy.score_cues(trainer.model, enc, pools, frozen=cache)
        with policy.reference() as ref:
            reference, _ = policy.score_cues(ref, enc, pools, frozen=cache)
    assert calls["bottom"] - before["bottom"] == 1 and calls["top"] - before["top"] == 3
    assert torch.allclose(first, whole, atol=1e-5) and torch.equal(first, second)
    assert torch.allclose(reference, reference_whole, atol=1e-5)


def _count(calls: dict, name: str, *_) -> None:
    calls[name] += 1


def test_a_supervised_warm_start_on_gold_eliminations_then_rl_from_it(tmp_path, smoke):
    """`stages`: teacher-forced gold eliminations (loss -log sum of pi over the lowest-grade set; no rollout, no
    reference) raise the gold choice's probability on their episodes; the next stage runs the RL objective at its
    own learning rate, from the warm-started weights."""
    from random import Random

    from iranker.train.fast import gold_episode

    cfg = load_config(SMOKE, {"tokenizer": smoke.tokenizer, "stages": [
        {"algo": "supervised", "steps": 6, "lr_actor": 3e-3}, {"algo": "expected", "steps": 2, "lr_actor": 1e-4}]})
    assert cfg.steps == 8 and cfg.algo == "expected" and cfg.stage_at(5).algo == "supervised"
    trainer = _trainer(cfg, tmp_path)
    firsts = [first for _, _, first in trainer.algo._draw(0)]
    episodes = [gold_episode(f, Random(0), cfg.ranking.layout) for f in firsts]
    for ep in episodes:  # every step's gold set is the pool's lowest grade, and the episode stops at equal grades
        for st, worst in ep:
            assert {st.grades[j] for j in worst} == {min(st.grades[j] for j in st.pool)} and set(worst) <= set(st.pool)
    steps = [st for ep in episodes for st, _ in ep]
    golds = [worst for ep in episodes for _, worst in ep]

    def gold_logp():
        with torch.no_grad():
            logp, _ = trainer.algo.score(trainer.model, steps, False)
        return float(sum(torch.logsumexp(row[w], 0) for row, w in zip(logp, golds)))

    before = gold_logp()
    rows = [trainer.update(0) for _ in range(6)]
    assert all(r["stage"] == "supervised" and r["elimination_steps"] > 0 and "kl" not in r for r in rows)
    assert "reference" not in rows[0]["seconds_by_phase"]
    assert gold_logp() > before
    rl = trainer.update(6)
    assert "stage" not in rl and trainer.policy.optimizer.param_groups[0]["lr"] == 1e-4


def test_auto_training_dtype_follows_the_cpus_native_bf16():
    """`dtype: auto` trains in bf16 where the CPU computes it natively (AMX / AVX-512 BF16), float32 elsewhere;
    an explicit dtype is kept; ranking's auto stays float32 on a CPU."""
    from pathlib import Path

    from iranker.devices import cpu_info, resolve_dtype, training_dtype

    cpu = torch.device("cpu")
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    native = "amx_bf16" in flags or "avx512_bf16" in flags
    assert cpu_info()["native_bf16"] == native
    assert training_dtype("auto", cpu) == (torch.bfloat16 if native else torch.float32)
    assert training_dtype("float32", cpu) == torch.float32 and training_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_dtype("auto", cpu) == torch.float32


def test_episode_shares_hold_in_expectation_at_any_batch_size():
    """`pools.episodes` / `pools.on_policy` at a batch they do not divide: each count is its share in expectation
    (batch 2 at 0.75 is not all whole instances), together never more than the batch; whole splits draw nothing."""
    from random import Random

    from iranker.train.fast import episode_counts

    rng = Random(0)
    for batch, whole, on_policy in ((2, 0.75, 0.0), (2, 0.75, 0.25), (3, 0.5, 0.25), (1, 0.75, 0.0)):
        counts = [episode_counts(rng, batch, whole, on_policy) for _ in range(4000)]
        assert all(w >= 0 and o >= 0 and w + o <= batch for w, o in counts)
        assert sum(w for w, _ in counts) / len(counts) == pytest.approx(batch * whole, abs=0.05)
        assert sum(o for _, o in counts) / len(counts) == pytest.approx(batch * on_policy, abs=0.05)
    a, b = Random(3), Random(3)
    assert [episode_counts(a, 4, w, o) for w, o in ((0.75, 0.0), (0.5, 0.25), (0.0, 0.0))] == [(3, 0), (2, 1), (0, 0)]
    assert a.random() == b.random()  # no draw was taken for the whole splits
