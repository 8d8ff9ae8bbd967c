"""Data-parallel training as users launch it: `torchrun --nproc_per_node 2 -m iranker.cli train` on this CPU
(gloo). Both processes finish with the same weights as the saved model, process 0 alone writes the run, a killed
run resumes to the same model, and 2 processes run the same updates as 1 (algo expected: the same weights too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT

from iranker.train.distributed import weights_checksum

SMOKE = ROOT / "configs" / "smoke.yaml"

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}


def _cmd(tiny_model_dir, out, processes: int, *extra: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return [*(launcher if processes > 1 else [sys.executable]), "-m", "iranker.cli", "train", "--config",
            str(SMOKE), "--out", str(out), "--set", f"tokenizer={tiny_model_dir}", "--set", "threads=1", *extra]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=_env())


def _rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "final" / "model.safetensors")


def test_weights_checksum_is_exact():
    w = {"a": torch.randn(5, 3), "b": torch.randn(4).to(torch.bfloat16)}
    same = {k: v.clone() for k, v in w.items()}
    assert weights_checksum(w) == weights_checksum(same)
    flipped = same["a"].view(torch.int32).clone()
    flipped[2, 1] ^= 1  # one bit of one weight
    assert weights_checksum({**same, "a": flipped.view(torch.float32)}) != weights_checksum(w)
    assert weights_checksum({"x": w["a"], "y": w["a"] + 1}) != weights_checksum({"x": w["a"] + 1, "y": w["a"]})


def test_two_processes_train_one_run_in_sync_and_a_killed_run_resumes(tmp_path, tiny_model_dir):
    psutil = pytest.importorskip("psutil")
    straight = _run(_cmd(tiny_model_dir, tmp_path / "a", 2))
    assert straight.returncode == 0, straight.stderr[-3000:]  # torchrun exits 0 only when both processes do
    run = tmp_path / "a"
    # process 0 alone writes: one set of checkpoints, one log, one TensorBoard file, one final model
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "final", "metrics.jsonl", "tb"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-000004", "step-000006"]
    assert len(list((run / "tb").iterdir())) == 1
    rows = _rows(run)
    assert [r["step"] for r in rows] == list(range(1, 7))
    for r in rows:
        assert r["processes"] == 2 and len(r["weights_checksums"]) == 2
        assert r["weights_checksums"][0] == r["weights_checksums"][1]  # the replicas stay in sync
        assert sum(r["steps_by_pool_size"].values()) == r["elimination_steps"] >= 4  # both processes' decisions
        assert 0 <= r["reward"] <= 1 and r["kl"] >= 0 and r["steps_per_s"] > 0
    # every process's weights after the last update are the weights saved as the final model
    assert rows[-1]["weights_checksums"] == [weights_checksum(_weights(run))] * 2

    killed = tmp_path / "b"
    proc = subprocess.Popen(_cmd(tiny_model_dir, killed, 2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env())
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 240
    while not (latest.exists() and latest.read_text() >= "step-000002") and time.time() < deadline:
        time.sleep(0.02)
    # every process of the run dies at once, as when its node is lost (torchrun starts each worker in its own
    # session, so kill the launcher and its workers by id)
    launcher = psutil.Process(proc.pid)
    everyone = [launcher, *launcher.children(recursive=True)]
    for p in everyone:
        p.kill()
    psutil.wait_procs(everyone, timeout=30)
    proc.wait()
    assert not (killed / "final").exists(), "the run finished before it could be killed"
    again = _run(_cmd(tiny_model_dir, killed, 2))
    assert again.returncode != 0 and "pass --resume" in again.stderr
    resumed = _run(_cmd(tiny_model_dir, killed, 2, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count("resumed from step") == 1  # said once, by process 0
    assert [r["step"] for r in _rows(killed)] == list(range(1, 7))
    a, b = _weights(run), _weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(killed)[-1]["weights_checksums"] == rows[-1]["weights_checksums"]


def test_two_processes_run_the_updates_of_one(tmp_path, tiny_model_dir):
    """Same config, 1 and 2 processes: runs of the same length and shape. With algo expected (one full-batch
    gradient per update) the 2 processes' averaged gradient is the 1 process's: the same episodes, rewards and,
    up to float rounding, weights. (algo ppo splits the minibatches differently: the same shape, other weights.)"""
    extra = ("--set", "algo=expected")
    one = _run(_cmd(tiny_model_dir, tmp_path / "one", 1, *extra))
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(_cmd(tiny_model_dir, tmp_path / "two", 2, *extra))
    assert two.returncode == 0, two.stderr[-3000:]
    r1, r2 = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r["step"] for r in r1] == [r["step"] for r in r2] == list(range(1, 7))
    assert [set(r) for r in r1] == [set(r) for r in r2]
    assert [r["processes"] for r in r1] == [1] * 6 and [r["processes"] for r in r2] == [2] * 6
    assert [r["elimination_steps"] for r in r1] == [r["elimination_steps"] for r in r2]
    assert [r["steps_by_pool_size"] for r in r1] == [r["steps_by_pool_size"] for r in r2]
    for x, y in zip(r1, r2, strict=True):
        assert y["reward"] == pytest.approx(x["reward"], abs=1e-4)
        assert y["expected_reward"] == pytest.approx(x["expected_reward"], abs=1e-4)
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-4)
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert set(w1) == set(w2)
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(p.name for p in (tmp_path / "two").iterdir())


def test_the_pytorchjob_starts_the_same_entry_point_on_every_node():
    """k8s/training/pytorchjob.yaml: master and worker pods run torchrun over `iranker.cli train` with the same
    arguments, which the CLI accepts, on a profile that validates; one process per GPU of the pod."""
    import yaml

    from iranker.cli import build_parser
    from iranker.train import TrainConfig

    job = yaml.safe_load((ROOT / "k8s" / "training" / "pytorchjob.yaml").read_text())
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"} and specs["Master"]["replicas"] == 1
    commands = []
    for spec in specs.values():
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"  # the container the operator gives the rendezvous variables to
        assert container["resources"]["limits"]["nvidia.com/gpu"] == job["spec"]["nprocPerNode"]
        commands.append(container["command"])
    assert commands[0] == commands[1]
    cmd = commands[0]
    assert cmd[0] == "torchrun" and "--nproc_per_node=$(PET_NPROC_PER_NODE)" in cmd
    cli = cmd[cmd.index("iranker.cli") + 1:]
    assert cmd[cmd.index("iranker.cli") - 1] == "-m" and cli[0] == "train"
    args = build_parser().parse_args(cli)
    raw = yaml.safe_load((ROOT / args.config).read_text())
    for pair in args.set:
        key, _, value = pair.partition("=")
        raw[key] = yaml.safe_load(value)
    cfg = TrainConfig.model_validate(raw)
    assert args.out.startswith("/runs/") and args.resume and cfg.device == "cuda"
    processes = int(job["spec"]["nprocPerNode"]) * sum(s["replicas"] for s in specs.values())
    assert cfg.batch_size % processes == 0  # every process rolls out the same number of episodes


@pytest.mark.slow
def test_ray_train_workers_run_the_same_training_as_torchrun(tmp_path, tiny_model_dir):
    """The Ray Train path (optional extra `ray`): 2 CPU workers of a local Ray instance, the same run as torchrun's
    2 processes, to the bit (~45 s of Ray start-up and training, ~25 s for the torchrun run)."""
    pytest.importorskip("ray.train")
    env = {**_env(), "RAY_USAGE_STATS_ENABLED": "0"}
    args = ["--set", f"tokenizer={tiny_model_dir}", "--set", "threads=1"]
    ray_run = subprocess.run([sys.executable, "-m", "iranker.train.ray_job", "--config", str(SMOKE), "--out",
                              str(tmp_path / "ray"), "--workers", "2", *args], capture_output=True, text=True,
                             timeout=400, check=False, env=env)
    assert ray_run.returncode == 0, ray_run.stderr[-3000:]
    assert json.loads(ray_run.stdout.splitlines()[-1])["model"] == str(tmp_path / "ray" / "final")
    torchrun = _run(_cmd(tiny_model_dir, tmp_path / "torchrun", 2))
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    rows = _rows(tmp_path / "ray")
    assert [r["processes"] for r in rows] == [2] * 6
    assert rows[-1]["weights_checksums"] == [weights_checksum(_weights(tmp_path / "ray"))] * 2
    assert rows[-1]["weights_checksums"] == _rows(tmp_path / "torchrun")[-1]["weights_checksums"]
