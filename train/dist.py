"""Several processes (`torchrun --nproc-per-node N -m clipstore train ...`): gloo on CPU, NCCL on
GPU. Every process computes the same loss over the global batch: per-sample features are
gathered with their gradients (torch.distributed.nn.functional.all_gather), features every
process computes in full (keywords, caption targets) are not; the gradients are then averaged.
With gathered features each process's own slice receives the gradient of every copy of the
loss (W of them), so the average is exactly one process's gradient for the global batch.
Only rank 0 writes to the store; the others wait at a barrier."""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @classmethod
    def start(cls) -> "Dist":
        """Join the process group torchrun describes in the environment; a single process otherwise."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not tdist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            tdist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
        return cls(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def device(self, requested: str | None) -> str | None:
        """One GPU per process under torchrun (cuda:LOCAL_RANK) unless a device was named."""
        if requested is None and self.active and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's tensor in rank order, keeping the gradient path."""
        if not self.active:
            return t
        import torch.distributed.nn.functional as dnn
        with warnings.catch_warnings():   # deprecated in favour of a private API; the public one still works
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(dnn.all_gather(t), dim=0)

    def average_gradients(self, params) -> None:
        if not self.active:
            return
        for p in params:
            if p.grad is not None:
                tdist.all_reduce(p.grad, op=tdist.ReduceOp.SUM)
                p.grad.div_(self.world)

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def broadcast(self, obj):
        """rank 0's object on every process."""
        if not self.active:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.active and tdist.is_initialized():
            tdist.destroy_process_group()
