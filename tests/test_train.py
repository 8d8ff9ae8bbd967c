"""Training: config errors before anything starts, a smoke PPO run on a tiny random model, kill + resume, GAE."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT

from iranker.rewards import exclusion_score
from iranker.train import load_config
from iranker.train.loop import Trainer, run_training
from iranker.train.modeling import load_model
from iranker.train.pools import cyclic_orders, gae, load_training_instances

SMOKE = ROOT / "configs" / "smoke.yaml"


@pytest.fixture
def smoke(tiny_model_dir):
    return load_config(SMOKE, {"tokenizer": str(tiny_model_dir)})


def test_bad_configs_fail_before_training(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny-random\ndata: [samples]\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate: Extra inputs are not permitted"):
        load_config(bad)
    bad.write_text("data: [no/such/data.jsonl]\n")
    with pytest.raises(FileNotFoundError, match="data: no/such/data.jsonl: no such file"):
        load_config(bad)
    bad.write_text("data: [samples]\npools: {min_size: 9, max_size: 4}\n")
    with pytest.raises(ValueError, match="min_size must not exceed"):
        load_config(bad)
    cfg = load_config(SMOKE, {"model": str(tmp_path / "not-a-model")})
    with pytest.raises(ValueError, match="does not load"):
        run_training(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_gae_matches_the_recursion():
    adv, ret = gae([1.0, 0.0, 0.5], [0.2, 0.4, 0.1], gamma=1.0, lam=0.5)
    d2 = 0.5 - 0.1
    d1 = 0.0 + 0.1 - 0.4
    d0 = 1.0 + 0.4 - 0.2
    assert adv == pytest.approx([d0 + 0.5 * (d1 + 0.5 * d2), d1 + 0.5 * d2, d2])
    assert ret == pytest.approx([a + v for a, v in zip(adv, [0.2, 0.4, 0.1])])


def _expected_reward(trainer, probe):
    with torch.no_grad():
        logp, _ = trainer.algo.score(trainer.model, probe, False)
    total = 0.0
    for row, st in zip(logp.exp(), probe):
        labels = {chr(65 + j): st.grades[j] for j in st.pool}
        total += sum(float(row[j]) * exclusion_score(chr(65 + j), labels) for j in st.pool)
    return total / len(probe)


@pytest.mark.parametrize("algo", ["ppo", "expected"])
def test_updates_raise_the_expected_exclusion_reward_of_their_pools(tmp_path, smoke, algo):
    """The loss points the right way: repeated updates on one batch of pools raise E_pi[reward] on those pools."""
    cfg = smoke.model_copy(update={"algo": algo, "batch_size": 8, "lr_actor": 3e-3,
                                   "pools": smoke.pools.model_copy(update={"on_policy": 0.0})})
    instances = load_training_instances(cfg)
    model, tok = load_model(cfg)
    trainer = Trainer(cfg, instances, model, tok, tmp_path, progress=False)
    probe = trainer.rollout(0)["steps"]
    before = _expected_reward(trainer, probe)
    for _ in range(10):
        trainer.update(0)  # the same seeded pools every time
    after = _expected_reward(trainer, probe)
    assert after > before + 0.05, (before, after)


def test_smoke_run_writes_a_loadable_model_and_logs(tmp_path, smoke):
    final = run_training(smoke, tmp_path / "run", progress=False)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, smoke.steps + 1))
    assert all(0 <= r["reward"] <= 1 and r["kl"] >= 0 and r["steps_per_s"] > 0 for r in rows)
    assert any(r["elimination_steps"] > smoke.batch_size for r in rows)  # on-policy episodes have several steps
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["latest", "step-000004",
                                                                                  "step-000006"]
    assert list((tmp_path / "run" / "tb").iterdir())
    req = {"scenario": "passage", "query": "q", "candidates": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"},
                                                              {"id": "c", "text": "z"}]}
    (tmp_path / "req.json").write_text(json.dumps(req))
    out = subprocess.run([sys.executable, "-m", "iranker.cli", "rank", str(tmp_path / "req.json"), "--model",
                          str(final)], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(out.stdout)["ranking"]) == ["a", "b", "c"]


def _train_cmd(tiny_model_dir, out, *extra):
    return [sys.executable, "-m", "iranker.cli", "train", "--config", str(SMOKE), "--out", str(out),
            "--set", f"tokenizer={tiny_model_dir}", "--set", "steps=30", "--set", "checkpoint_every=3", *extra]


def test_a_killed_run_resumes_to_the_same_model(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    straight = subprocess.run(_train_cmd(tiny_model_dir, tmp_path / "a"), capture_output=True, text=True,
                              timeout=600, check=False)
    assert straight.returncode == 0, straight.stderr
    proc = subprocess.Popen(_train_cmd(tiny_model_dir, tmp_path / "b"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "b" / "checkpoints" / "step-000006").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert not (tmp_path / "b" / "final").exists(), "the run finished before it could be killed"
    again = subprocess.run(_train_cmd(tiny_model_dir, tmp_path / "b"), capture_output=True, text=True, timeout=600,
                           check=False)
    assert again.returncode != 0 and "pass --resume" in again.stderr
    resumed = subprocess.run(_train_cmd(tiny_model_dir, tmp_path / "b", "--resume"), capture_output=True,
                             text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step" in resumed.stderr
    a = load_file(tmp_path / "a" / "final" / "model.safetensors")
    b = load_file(tmp_path / "b" / "final" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))


@pytest.mark.parametrize("profile", ["smoke", "demo", "cpu", "gpu-3b"])
def test_every_profile_is_a_valid_config(profile):
    import yaml

    from iranker.train import TrainConfig

    cfg = TrainConfig.model_validate(yaml.safe_load((ROOT / "configs" / f"{profile}.yaml").read_text()))
    assert cfg.steps >= 1 and cfg.data
    if cfg.algo == "ppo":  # PPO that is PPO: several optimizer steps over each rollout
        assert cfg.ppo.epochs >= 2 and cfg.ppo.epochs * cfg.ppo.minibatches >= 2


def test_reasoning_mode_ppo_runs_token_level_updates(tmp_path, smoke):
    """Reasoning mode: sampled think + answer responses, token-level PPO; failures to parse are counted."""
    cfg = smoke.model_copy(update={"mode": "reasoning", "steps": 2, "batch_size": 3, "max_new_tokens": 12,
                                   "ranking": smoke.ranking.model_copy(update={"templates_k": 2})})
    final = run_training(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["elimination_steps"] == 3 and 3 <= r["completion_tokens"] <= 36
        assert 0 <= r["parse_failure_rate"] <= 1 and 0 <= r["format_ok_rate"] <= 1
        # a random model does not write the format: exclusion -0.5 and format -1 on every unparsed response
        assert r["reward"] == pytest.approx(r["expected_reward"] - (1 - r["format_ok_rate"]))
        assert r["kl"] >= 0
    assert (final / "model.safetensors").exists()
    # the thought store ships with the model: a random model's responses are never rewarded, so it is empty
    store = json.loads((final / "thoughts" / "store.json").read_text())
    assert store == {"format": 1, "index": "bm25", "count": 0}
    assert (final / "thoughts" / "thoughts.jsonl").read_text() == ""
    # saved with ranking.templates_k: wherever the model is opened next, it is shown its own store
    from iranker.ranker import open_model

    assert json.loads((final / "iranker-ranking.json").read_text())["templates_k"] == 2
    _, config = open_model(str(final))
    assert config.templates_k == 2 and config.thoughts.path == str(final / "thoughts")


def test_reasoning_update_raises_the_probability_of_a_rewarded_response(tmp_path, smoke):
    """The token-level loss points the right way: a response whose reward beats the others becomes likelier."""
    cfg = smoke.model_copy(update={"mode": "reasoning", "batch_size": 4, "max_new_tokens": 6, "lr_actor": 3e-3,
                                   "ppo": smoke.ppo.model_copy(update={"entropy_coef": 0.0})})
    instances = load_training_instances(cfg)
    model, tok = load_model(cfg)
    trainer = Trainer(cfg, instances, model, tok, tmp_path, progress=False)
    episodes = trainer.algo.rollout(0)
    rewarded = episodes[0]

    def fixed(update):  # the same sampled responses every update; only the first one earns a reward
        for k, e in enumerate(episodes):
            e["reward"] = e["exclusion"] = 1.0 if k == 0 else -1.0
        return [dict(e) for e in episodes]

    trainer.algo.rollout = fixed
    with torch.no_grad():
        before = trainer.algo.token_forward(trainer.model, rewarded["prompt_ids"], rewarded["response_ids"], False)[0]
    for _ in range(5):
        trainer.update(0)
    with torch.no_grad():
        after = trainer.algo.token_forward(trainer.model, rewarded["prompt_ids"], rewarded["response_ids"], False)[0]
    assert after.sum() > before.sum() + 0.1, (before.sum(), after.sum())


@pytest.mark.slow
def test_grpo_through_trl_writes_a_model_and_its_throughput(tmp_path, smoke):
    cfg = smoke.model_copy(update={"algo": "grpo", "steps": 2, "batch_size": 4, "grpo_generations": 2})
    final = run_training(cfg, tmp_path / "run", progress=False)
    info = json.loads((final / "iranker-train.json").read_text())
    assert info["algo"] == "grpo" and info["elimination_steps"] == 8 and info["elimination_steps_per_s"] > 0
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["reward"] is not None and -0.5 <= r["reward"] <= 1 for r in rows)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(final).config.num_hidden_layers == 2
    with pytest.raises(ValueError, match="resume"):
        run_training(cfg, tmp_path / "run", resume=True)


def test_verl_export_layout_and_reward_interface(tmp_path, smoke):
    import pandas as pd

    from iranker.train.verl import compute_score, export_verl

    cfg = smoke.model_copy(update={"mode": "reasoning"})
    result = export_verl(cfg, tmp_path / "verl", per_instance=2, reasoning=True)
    train = pd.read_parquet(tmp_path / "verl" / "train.parquet")
    val = pd.read_parquet(tmp_path / "verl" / "val.parquet")
    assert list(train.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert len(train) == result["files"]["train"]["rows"] > 0 and len(val) > 0
    assert set(train["extra_info"].map(lambda e: e["split"])) == {"train"}
    assert set(val["extra_info"].map(lambda e: e["split"])) == {"validation"}
    train_ids = set(train["extra_info"].map(lambda e: e["instance_id"]))
    assert not train_ids & set(val["extra_info"].map(lambda e: e["instance_id"]))
    for _, row in train.head(20).iterrows():
        assert row["data_source"] in ("iranker/recommendation", "iranker/passage", "iranker/routing")
        assert [m["role"] for m in row["prompt"]] == ["system", "user"] and "<answer>" in row["prompt"][1]["content"]
        grades = json.loads(row["reward_model"]["ground_truth"])
        assert row["extra_info"]["pool_size"] == len(grades) >= 2
        worst = min(grades, key=grades.get)
        best = max(grades, key=grades.get)
        answer = f"<think>it fits least</think><answer>[{worst}]</answer>"
        assert compute_score(row["data_source"], answer, row["reward_model"]["ground_truth"],
                             dict(row["extra_info"])) == exclusion_score(worst, grades) == 1.0
        assert compute_score(row["data_source"], f"<think>x</think><answer>[{best}]</answer>",
                             row["reward_model"]["ground_truth"], dict(row["extra_info"])) == 0.0
        assert compute_score(row["data_source"], f"[{worst}]", row["reward_model"]["ground_truth"],
                             dict(row["extra_info"])) == -1.5  # no format: invalid answer -0.5, format -1
    overrides = dict(line.split("=", 1) for line in (tmp_path / "verl" / "verl-overrides.txt").read_text().split())
    assert overrides["custom_reward_function.name"] == "compute_score"
    assert overrides["custom_reward_function.path"].endswith("iranker/train/verl.py")
    assert overrides["data.train_files"] == str(tmp_path / "verl" / "train.parquet")
    assert overrides["algorithm.adv_estimator"] == "gae"


def test_accelerate_configs_parse():
    import yaml

    for name in ("multi-gpu", "fsdp"):
        cfg = yaml.safe_load((ROOT / "configs" / "accelerate" / f"{name}.yaml").read_text())
        assert cfg["distributed_type"] in ("MULTI_GPU", "FSDP") and cfg["num_processes"] >= 2
        assert cfg["mixed_precision"] == "bf16" and cfg["use_cpu"] is False


def test_probe_logs_the_exact_expected_reward_on_held_out_pools(tmp_path, smoke):
    cfg = smoke.model_copy(update={"probe": smoke.probe.model_copy(update={"pools": 5, "every": 2})})
    run_training(cfg, tmp_path / "run", progress=False)
    probes = [json.loads(l) for l in (tmp_path / "run" / "probe.jsonl").read_text().splitlines()]
    assert [p["step"] for p in probes] == [0, 2, 4, 6]
    assert all(0 <= p["all"] <= 1 and set(p) >= {"step", "all", "routing"} for p in probes)
    # the probe pools come from the validation split only, and are the same at every probe
    instances = load_training_instances(cfg)
    probe_instances = load_training_instances(cfg, split="validation")
    model, tok = load_model(cfg)
    trainer = Trainer(cfg, instances, model, tok, tmp_path / "x", progress=False, probe_instances=probe_instances)
    probe_steps = trainer.algo.probe_steps
    assert len(probe_steps) == 5 and all(st.inst >= len(instances) for st in probe_steps)
    assert trainer.probe()["all"] == pytest.approx(_expected_reward(trainer, probe_steps))
    # beside it, the uniform choice on the same pools: each pool's mean exclusion score
    rand = sum(sum(exclusion_score(chr(65 + j), {chr(65 + i): st.grades[i] for i in st.pool})
                   for j in st.pool) / len(st.pool) for st in probe_steps) / 5
    assert trainer.probe_random()["all"] == pytest.approx(rand) and 0 < rand < 1
    assert all(p["random"] == pytest.approx(rand) for p in probes)
    # position bias: how often the most likely choice is label [A], beside the uniform choice's 1/k
    assert all(0 <= p["first_label"] <= 1 for p in probes)
    assert trainer.probe_random()["first_label"] == pytest.approx(
        sum(1 / len(st.pool) for st in probe_steps) / 5)


def test_select_checkpoint_scores_on_validation_pools_and_writes_the_best(tmp_path, smoke):
    from iranker.train.select import select_checkpoint

    run_training(smoke.model_copy(update={"keep_checkpoints": 3}), tmp_path / "run", progress=False)
    states = sorted((tmp_path / "run" / "checkpoints").glob("step-*/state.pt"))
    assert len(states) == 3
    result = select_checkpoint(tmp_path / "run", states, pools=6, log=lambda m: None)
    # full fine-tuning: no adapter-free base; the uniform choice on the same pools is scored beside the steps
    assert set(result["scores"]) == {"random", "step-2", "step-4", "step-6"}
    best = result["scores"][result["best"]]["all"]
    assert all(0 <= s["all"] <= best for k, s in result["scores"].items() if k != "random")
    saved = json.loads((tmp_path / "run" / "selected" / "selection.json").read_text())
    assert saved["best"] == result["best"] and saved["pools"] == 6
    assert (tmp_path / "run" / "selected" / "final" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="no checkpoints"):
        select_checkpoint(tmp_path / "run", [], pools=6)


def test_served_selection_ranks_whole_validation_lists_and_reports_standard_errors(tmp_path, smoke):
    """Checkpoints chosen as they would serve: whole validation lists ranked by the serving ranker, scored with the
    test metrics; every score carries its standard error and the close calls are named."""
    from iranker.train.select import select_served

    run_training(smoke.model_copy(update={"keep_checkpoints": 3}), tmp_path / "run", progress=False)
    states = sorted((tmp_path / "run" / "checkpoints").glob("step-*/state.pt"))
    result = select_served(tmp_path / "run", states, instances=40, log=lambda m: None)
    assert set(result["scores"]) == {"random", "step-2", "step-4", "step-6"}
    n = result["instances"]
    assert n >= 8 and all(s["n"] == n and s["se"] >= 0 and 0 <= s["mean"] <= 1 for s in result["scores"].values())
    best = result["scores"][result["best"]]
    assert all(s["mean"] <= best["mean"] for k, s in result["scores"].items() if k.startswith("step-"))
    assert set(result["within_one_se_of_best"]) == {k for k, s in result["scores"].items() if k.startswith("step-")
                                                    and k != result["best"] and s["mean"] >= best["mean"] - best["se"]}
    saved = json.loads((tmp_path / "run" / "selected" / "selection.json").read_text())
    assert saved["best"] == result["best"] and (tmp_path / "run" / "selected" / "final" / "model.safetensors").exists()


def test_served_selection_runs_the_frozen_layers_once_for_all_models_and_scores_the_same(tmp_path, smoke):
    """With an adapter on the top layers, every checkpoint and the base rank the same validation lists with the
    frozen layers' prefill shared (`SharedPrefixes`); the scores equal those of each model ranking on its own."""
    from iranker.train.select import select_served

    lora = smoke.lora.model_copy(update={"r": 8, "alpha": 16, "top_layers": 1})
    run = tmp_path / "run"
    run_training(smoke.model_copy(update={"keep_checkpoints": 2, "lora": lora}), run, progress=False)
    states = sorted((run / "checkpoints").glob("step-*/state.pt"))
    cfg = json.loads((run / "config.json").read_text())
    cfg["ranking"].update(window=5, stride=2)  # longer validation lists keep their first stage's top 5, in order
    cfg["pools"]["max_size"] = 5
    (run / "config.json").write_text(json.dumps(cfg))
    said: list[str] = []
    shared = select_served(run, states, instances=40, out=tmp_path / "shared", log=said.append, batch_size=4)
    assert shared["frozen_layers_shared"] == 1 and set(shared["scores"]) == {"random", "base", "step-4", "step-6"}
    assert any("frozen layers run once per prompt" in m for m in said) and shared["cut_to_window"] > 0
    assert not any(", 0 reuses)" in m for m in said if "frozen layers" in m)  # every chunk shared its prompts
    cfg["lora"]["reuse_frozen"] = False  # the same run, each model prefilling on its own
    (run / "config.json").write_text(json.dumps(cfg))
    alone = select_served(run, states, instances=40, out=tmp_path / "alone", log=lambda m: None, batch_size=4)
    assert alone["frozen_layers_shared"] == 0
    assert {k: v["mean"] for k, v in shared["scores"].items()} == {k: v["mean"] for k, v in alone["scores"].items()}
    assert shared["best"] == alone["best"]


def test_position_balanced_pools_leave_nothing_for_a_position_preference(tmp_path, smoke):
    """With `pools.balance_positions`, each random pool comes in all its cyclic orders, so a policy that prefers
    label positions whatever the content earns the same expected reward from every preference: the update can
    only follow the content."""
    pools = smoke.pools.model_copy(update={"on_policy": 0.0, "balance_positions": True})
    cfg = smoke.model_copy(update={"batch_size": 10, "pools": pools})
    model, tok = load_model(cfg)
    trainer = Trainer(cfg, load_training_instances(cfg), model, tok, tmp_path, progress=False)
    batch = trainer.rollout(0)
    steps, tables = batch["steps"], batch["reward_table"]
    assert len(steps) >= cfg.batch_size
    i = groups = 0
    while i < len(steps):
        slots = steps[i].pool
        k = len(slots)
        group = steps[i: i + k]
        # the serving layout: the pool's members rotate over the label positions the pool occupies
        assert all(s.pool == slots for s in group) and len({s.inst for s in group}) == 1
        members = [steps[i].listing[p] for p in slots]
        assert [[s.listing[p] for p in slots] for s in group] == cyclic_orders(members)
        prefs = torch.randn(k, requires_grad=True)  # a preference for label positions, blind to content
        sum((torch.softmax(prefs, 0) * tables[i + j][slots]).sum() for j in range(k)).backward()
        assert prefs.grad.abs().max() < 1e-6
        one = torch.randn(k, requires_grad=True)  # one order alone does reward some position preference
        (torch.softmax(one, 0) * tables[i][slots]).sum().backward()
        assert one.grad.abs().max() > 1e-4
        i, groups = i + k, groups + 1
    assert groups >= 2
    # reasoning mode samples its pools the same way
    cfg = cfg.model_copy(update={"mode": "reasoning", "batch_size": 3, "max_new_tokens": 4})
    trainer = Trainer(cfg, load_training_instances(cfg), model, tok, tmp_path / "r", progress=False)
    pools = [e["pool"] for e in trainer.algo.rollout(0)]
    assert pools[: len(pools[0])] == cyclic_orders(pools[0]) and len(pools) >= 3


@pytest.mark.slow  # a training run and an evaluation, each reading the samples' Feast features
def test_training_on_two_scenarios_holds_the_third_out_and_evaluation_says_which(tmp_path, tiny_model_dir):
    from iranker.evaluate.harness import evaluate, load_eval_data

    cfg = load_config(SMOKE, {"tokenizer": str(tiny_model_dir), "steps": 2, "train_scenarios": ["recommendation",
                                                                                                 "routing"]})
    assert {i.scenario for i in load_training_instances(cfg)} == {"recommendation", "routing"}  # samples: no passage
    cfg = load_config(SMOKE, {"tokenizer": str(tiny_model_dir), "steps": 2, "train_scenarios": ["recommendation"]})
    assert {i.scenario for i in load_training_instances(cfg)} == {"recommendation"}
    assert not load_training_instances(cfg, "validation")  # the samples' validation split is routing only
    with pytest.raises(ValueError, match="train_scenarios.0: Input should be 'recommendation', 'routing' or 'passage'"):
        load_config(SMOKE, {"train_scenarios": ["music"]})
    only_passage = tmp_path / "passage.jsonl"
    only_passage.write_text("".join(line + "\n" for line in (ROOT / "samples" / "instances.jsonl").read_text()
                                    .splitlines() if '"scenario": "passage"' in line or '"scenario":"passage"' in line))
    with pytest.raises(ValueError, match="train_scenarios: no training instances of routing in"):
        load_training_instances(load_config(SMOKE, {"data": [str(only_passage)], "train_scenarios": ["routing"]}))

    final = run_training(cfg, tmp_path / "run", progress=False)
    metrics = evaluate(load_eval_data(["samples"], split="all", limit=2, orders=("first-stage",)), tmp_path / "ev",
                       model=str(final), base=str(final), direct=False, baselines=[], progress=False)
    assert metrics["train_scenarios"] == ["recommendation"]
    assert {r["scenario"]: r["domain"] for r in metrics["results"]} == {
        "recommendation": "in-domain", "routing": "held-out", "passage": "held-out"}
    assert "routing (" in (tmp_path / "ev" / "report.md").read_text() and ", held-out)" in (
        tmp_path / "ev" / "report.md").read_text()


def test_compare_runs_pairs_updates_only_at_the_same_batch_size(tmp_path, smoke):
    """benchmarks/compare_runs.py: runs at one batch size draw the same episodes, compared update for update; at
    another batch size they compare by steps per hour and decisions per second per stage, never update by update."""
    cfg = smoke.model_copy(update={"algo": "expected", "steps": 2, "checkpoint_every": 2})
    run_training(cfg, tmp_path / "a", progress=False)
    run_training(cfg, tmp_path / "same", progress=False)
    run_training(cfg.model_copy(update={"batch_size": cfg.batch_size * 2}), tmp_path / "double", progress=False)
    out = tmp_path / "compare.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare_runs.py"), str(tmp_path / "a"),
                        str(tmp_path / "same"), str(tmp_path / "double"), "--out", str(out)], capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    ref, same, double = json.loads(out.read_text())["runs"]
    assert same["vs_reference"]["same_episodes"] and same["vs_reference"]["updates_compared"] == 2
    assert double["vs_reference"]["updates_compared"] == 0 and double["vs_reference"]["speed_ratio_median"] is None
    stage = next(iter(ref["stages"]))
    ratio = double["vs_reference"]["by_stage"][stage]["steps_per_hour"]
    assert ratio == pytest.approx(double["stages"][stage]["steps_per_hour"] / ref["stages"][stage]["steps_per_hour"],
                                  rel=1e-2)
