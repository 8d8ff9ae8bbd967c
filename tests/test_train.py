"""Training: config errors before anything starts, a smoke PPO run on a tiny random model, kill + resume, GAE."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT

from iranker.train import load_config
from iranker.train.ppo import Trainer, gae, load_model, load_training_instances, run_training

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
    from iranker.rewards import exclusion_score

    with torch.no_grad():
        logp, _ = trainer._forward(trainer.model, probe, False)
    total = 0.0
    for row, st in zip(logp.exp(), probe):
        labels = {chr(65 + j): g for j, g in enumerate(st.grades)}
        total += sum(float(row[j]) * exclusion_score(chr(65 + j), labels) for j in range(len(st.pool)))
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


@pytest.mark.parametrize("profile", ["smoke", "cpu", "gpu-3b"])
def test_every_profile_is_a_valid_config(profile):
    import yaml

    from iranker.train import TrainConfig

    cfg = TrainConfig.model_validate(yaml.safe_load((ROOT / "configs" / f"{profile}.yaml").read_text()))
    assert cfg.steps >= 1 and cfg.data
