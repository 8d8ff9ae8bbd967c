"""Data parallelism for the PPO loop: the same entry point runs as one process or as N under `torchrun`,
`accelerate launch` or a PyTorchJob / Ray Train worker (they set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

Every process holds the whole model and rolls out its share of each update's episodes (episode e belongs to
process e % world); before every optimizer step the gradients are averaged across processes (one all-reduce of
the flattened gradients, as DDP does), so the weights stay identical everywhere. Process 0 writes checkpoints,
logs and the final model; the others wait for it. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Processes:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sync_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Average the gradients of `params` over all processes (a missing gradient counts as zero)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
            offset += n

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def combine(self, row: dict) -> dict:
        """A log row of the whole update: rewards weighted by each process's decisions, decisions summed."""
        if self.world == 1:
            return row
        import torch.distributed as dist

        n = row["elimination_steps"]
        t = torch.tensor([row["reward"] * n, row["expected_reward"] * n, float(n), row["seconds"]],
                         dtype=torch.float64)
        dist.all_reduce(t)
        total = max(t[2].item(), 1.0)
        return {**row, "reward": t[0].item() / total, "expected_reward": t[1].item() / total,
                "elimination_steps": int(t[2].item()), "steps_per_s": t[2].item() / (t[3].item() / self.world),
                "processes": self.world}


def init_processes(device: str) -> Processes:
    """Join the process group the launcher describes (a no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes()
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Processes(rank=rank, world=world)
