"""Our PPO loop on Ray Train: a `TorchTrainer` whose workers each call `run_training`, the function `iranker train`
runs under torchrun. Ray Train sets up the torch process group (gloo on CPU workers, NCCL on GPU workers) and
`init_processes` joins it as it is; everything else (episode split, gradient averaging, process 0 writing the run)
is the same code as under torchrun.

    pip install -e '.[train,ray]'
    python -m iranker.train.ray_job --config configs/smoke.yaml --out runs/ray-smoke --workers 2
    python -m iranker.train.ray_job --config configs/gpu-3b.yaml --out /runs/gpu-3b-ray --workers 16 --gpu \
        --address auto --set batch_size=128          # on a Ray cluster (KubeRay): 16 GPU workers

`--out` must be a folder every worker sees (one machine, or shared storage such as the runs PVC on a cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _worker(config: dict) -> None:
    """One Ray Train worker: the same `run_training` as every torchrun process."""
    import ray.train
    import torch

    from iranker.train.loop import run_training

    rank = ray.train.get_context().get_world_rank()
    if config["gpu"]:
        import ray.train.torch

        torch.cuda.set_device(ray.train.torch.get_device())
    run_training(config["cfg"], config["out"], resume=config["resume"], progress=rank == 0)


def _absolute(cfg):
    """The config with local paths made absolute: Ray workers need not share the driver's working directory."""
    def fix(p):
        return str(Path(p).resolve()) if p and Path(p).exists() else p

    return cfg.model_copy(update={"data": [d if d == "samples" else fix(d) for d in cfg.data],
                                  "model": fix(cfg.model), "tokenizer": fix(cfg.tokenizer)})


def train_on_ray(cfg, out: str | Path, workers: int, gpu: bool = False, resume: bool = False,
                 cpus_per_worker: float = 1, address: str | None = None) -> Path:
    """Run `run_training(cfg, out)` on `workers` Ray Train workers (data parallel); returns the final model folder.
    Starts a local Ray instance unless `address` names a cluster (`auto`: the one this process runs in)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from iranker.train.distributed import TIMEOUT

    out = Path(out).resolve()
    env = {k: os.environ[k] for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "OMP_NUM_THREADS", "HF_TOKEN",
                                      "HF_HOME", "IRANKER_CACHE") if k in os.environ}
    if not ray.is_initialized():
        if address:
            ray.init(address=address, runtime_env={"env_vars": env})
        else:
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                     runtime_env={"env_vars": env})
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": _absolute(cfg), "out": str(out), "resume": resume, "gpu": gpu},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo", timeout_s=int(TIMEOUT.total_seconds())),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if gpu else {})}),
        run_config=RunConfig(name=f"iranker-{out.name}"),
    )
    trainer.fit()  # raises when a worker fails
    return out / "final" if (out / "final").exists() else out / "checkpoints"


def main(argv: list[str] | None = None) -> None:
    import yaml

    from iranker.train import load_config

    ap = argparse.ArgumentParser(prog="python -m iranker.train.ray_job", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="profile YAML, e.g. configs/smoke.yaml")
    ap.add_argument("--out", required=True, help="run folder, seen by every worker")
    ap.add_argument("--workers", type=int, default=2, help="Ray Train workers = training processes (default 2)")
    ap.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL); default: CPU workers (gloo)")
    ap.add_argument("--cpus-per-worker", type=float, default=1)
    ap.add_argument("--address", default=None, help="Ray cluster address ('auto' inside a cluster); default: a "
                                                     "local Ray instance")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile setting")
    args = ap.parse_args(argv)
    overrides = {}
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            ap.error(f"--set {pair}: expected KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value) if value.strip() else value
    try:
        cfg = load_config(args.config, overrides)
        out = Path(args.out)
        if out.exists() and any(out.iterdir()) and not args.resume:  # before any worker starts
            raise FileExistsError(f"--out {out}: not empty; pass --resume to continue the run there, or another "
                                  "folder")
        final = train_on_ray(cfg, out, args.workers, gpu=args.gpu, resume=args.resume,
                             cpus_per_worker=args.cpus_per_worker, address=args.address)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"[iranker] error: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"out": str(args.out), "model": str(final)}))


if __name__ == "__main__":
    main()
