"""Data parallelism for the PPO loop: the same entry point runs as one process or as N under `torchrun`,
`accelerate launch`, a PyTorchJob (they set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) or Ray Train (which
sets up the process group itself, `iranker.train.ray_job`).

Every process holds the whole model and rolls out its share of each update's episodes (episode e belongs to
process e % world). At the start, process 0's weights are broadcast to the others (as DDP does). Before every
optimizer step the gradients are averaged across processes, each process's weighted by the decisions (or tokens)
its loss averaged over: the gradient of the mean over the whole update's batch, as one process would compute it
(bucketed all-reduces). The weights therefore stay identical everywhere; every update's log row carries a
fingerprint of each process's weights (`weights_checksums`) and training stops if they ever differ. Process 0
writes checkpoints, logs and the final model; the others wait for it. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch

# Process 0 writes checkpoints, the final model and runs the probe while the others wait in a collective: allow
# a large checkpoint on slow shared storage.
TIMEOUT = timedelta(minutes=30)
BUCKET_BYTES = 64 * 2**20
_PRIME = 2**61 - 1
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
# how `combine` merges the log rows of the processes (other float entries: weighted by each process's decisions)
_SUMMED = {"elimination_steps", "completion_tokens"}
_LARGEST = {"ratio_dev", "seconds"}
_OWN_RULE = {"step", "steps_per_s", "reward_by_pool_size", "steps_by_pool_size"}


def weights_checksum(tensors: Mapping[str, torch.Tensor]) -> int:
    """An exact fingerprint of named weights, independent of device and thread count: for each tensor (in name
    order) the sum of its bit patterns read as integers, the sums combined by position modulo the prime 2**61 - 1.
    Equal weights give equal numbers; any single changed bit changes it."""
    sums = [_bit_sum(tensors[n]) for n in sorted(tensors)]
    return sum((k + 1) * (s % _PRIME) for k, s in enumerate(sums)) % _PRIME


def _bit_sum(t: torch.Tensor) -> int:
    """The sum of a tensor's bit patterns read as signed integers (numpy on the CPU: ~20x faster than torch's
    reduction there; torch on a GPU)."""
    bits = t.detach().contiguous().view(_INT_VIEW[t.element_size()])
    if bits.device.type == "cpu":
        return int(bits.numpy().sum(dtype="int64"))
    return int(bits.sum(dtype=torch.int64))


def _buckets(tensors: Iterable[torch.Tensor], limit: int = BUCKET_BYTES) -> Iterator[list[torch.Tensor]]:
    """Consecutive runs of tensors of one dtype and device, up to `limit` bytes each (a larger tensor alone)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and (size + nbytes > limit or t.dtype != bucket[0].dtype or t.device != bucket[0].device):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += nbytes
    if bucket:
        yield bucket


@dataclass
class Processes:
    rank: int = 0
    world: int = 1
    owns_group: bool = False  # this module created the process group (and destroys it in `close`)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sync_grads(self, params: list[torch.nn.Parameter], weight: float = 1.0) -> None:
        """Average the gradients of `params` over all processes, each process's weighted by `weight` (how many
        decisions or tokens its loss is the mean over): sum_r weight_r * grad_r / sum_r weight_r. A missing
        gradient counts as zero, and a parameter that has no gradient on any process (or when no process has any
        weight) keeps none, so the optimizer skips it as it would in one process."""
        if self.world == 1 or not params:
            return
        import torch.distributed as dist

        dev = params[0].device
        # one small all-reduce: the total weight and, per parameter, how many processes have a gradient for it
        counts = torch.tensor([float(weight)] + [float(p.grad is not None) for p in params], dtype=torch.float64,
                              device=dev)
        dist.all_reduce(counts)
        total, *has = counts.tolist()
        if total <= 0:
            for p in params:
                p.grad = None
            return
        scale = float(weight) / total
        synced = []
        for p, h in zip(params, has, strict=True):
            if h == 0:
                p.grad = None
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            synced.append(p)
        for bucket in _buckets([p.grad for p in synced]):
            flat = torch.cat([g.reshape(-1) for g in bucket]).float().mul_(scale)
            dist.all_reduce(flat)
            offset = 0
            for g in bucket:
                n = g.numel()
                g.copy_(flat[offset:offset + n].view_as(g))
                offset += n

    def broadcast(self, tensors: Iterable[torch.Tensor]) -> None:
        """Overwrite `tensors` on every process with process 0's (bucketed broadcasts)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for bucket in _buckets([t.data for t in tensors]):
                flat = torch.cat([t.reshape(-1) for t in bucket])
                dist.broadcast(flat, src=0)
                offset = 0
                for t in bucket:
                    n = t.numel()
                    t.copy_(flat[offset:offset + n].view_as(t))
                    offset += n

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj) -> list:
        """Every process's `obj` (picklable), in rank order, on every process."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def mean_std(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (unbiased) standard deviation of the values of `x` on all processes together; std 1 when
        there are fewer than two values."""
        x = x.detach().double().reshape(-1)
        moments = torch.stack([x.sum(), (x * x).sum(), torch.tensor(float(x.numel()), dtype=torch.float64,
                                                                    device=x.device)])
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(moments)
        s, ss, n = moments.tolist()
        mean = s / n if n else 0.0
        std = max((ss - n * mean * mean) / (n - 1), 0.0) ** 0.5 if n > 1 else 1.0
        return torch.tensor(mean, device=x.device), torch.tensor(max(std, 1e-6), device=x.device)

    def combine(self, row: dict, checksums: tuple[int, ...] = ()) -> dict:
        """The log row of the whole update from every process's row: decisions and tokens summed; rewards, rates
        and loss terms weighted by each process's decisions; `ratio_dev` the largest; the update's time the slowest
        process's, `steps_per_s` all decisions over it. Adds `processes` and each process's weights fingerprint
        (`weights_checksums`: the first of its `checksums`); when any process's `checksums` differ from process
        0's, every process stops with an error."""
        gathered = self.gather((row, tuple(checksums)))
        sums = [c for _, c in gathered]
        if any(c != sums[0] for c in sums):
            raise RuntimeError(f"update {row['step']}: the {self.world} processes hold different weights "
                               f"(checksums per process: {sums}); stopping before they drift further")
        rows = [r for r, _ in gathered]
        out = dict(rows[0])
        if self.world > 1:
            for r in rows[1:]:  # loss terms are absent from the row of a process that had no decisions
                for key, v in r.items():
                    out.setdefault(key, v)
            n = [r["elimination_steps"] for r in rows]
            for key, first in list(out.items()):
                values = [(k, r[key]) for k, r in zip(n, rows, strict=True) if key in r]
                if key in _SUMMED:
                    out[key] = sum(v for _, v in values)
                elif key in _LARGEST:
                    out[key] = max(v for _, v in values)
                elif key not in _OWN_RULE and isinstance(first, float):
                    weight = sum(k for k, _ in values)
                    out[key] = (sum(k * v for k, v in values) / weight if weight
                                else sum(v for _, v in values) / len(values))
            if "steps_by_pool_size" in out:
                counts: dict[str, int] = {}
                rewards: dict[str, float] = {}
                for r in rows:
                    for size, c in r.get("steps_by_pool_size", {}).items():
                        counts[size] = counts.get(size, 0) + c
                        rewards[size] = rewards.get(size, 0.0) + c * r["reward_by_pool_size"][size]
                order = sorted(counts, key=int)
                out["reward_by_pool_size"] = {s: rewards[s] / counts[s] for s in order}
                out["steps_by_pool_size"] = {s: counts[s] for s in order}
            out["steps_per_s"] = out["elimination_steps"] / out["seconds"] if out.get("seconds") else 0.0
        out["processes"] = self.world
        out["weights_checksums"] = [c[0] if c else None for c in sums]
        return out

    def close(self) -> None:
        """Leave the process group if this module created it."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def init_processes(device: str) -> Processes:
    """Join the process group the launcher describes (a no-op for one process). A group that is already set up
    (Ray Train, or a caller's own `init_process_group`) is used as it is: the caller has chosen the device."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Processes(rank=dist.get_rank(), world=dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes()
    rank = int(os.environ["RANK"])
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return Processes(rank=rank, world=world, owns_group=True)

