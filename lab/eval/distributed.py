"""One evaluation spread over several processes of one host: a model replica per process (per GPU), the run's
batches shared out by rank, every process writing into the same run.

    torchrun --nproc_per_node 4 -m lab.eval mmlu --model Qwen2.5-7B-Instruct --quant bf16    # 4 GPUs, one run
    torchrun --nproc_per_node 2 -m lab.eval mmlu --model tiny-random --limit 200             # 2 CPU processes
    accelerate launch --num_processes 2 -m lab.eval mmlu ...                                 # the same launcher env
    torchrun --nproc_per_node 4 -m lab.eval mmlu --resume RUN_ID       # any number of processes, or one, resumes

The launcher sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE (torchrun and `accelerate launch` alike);
`Group.from_env()` reads them. Without them, or with WORLD_SIZE 1, nothing here runs: `SOLO` is the one process.

What each process does:
- Its GPU: process k of a host sees only the k-th visible GPU (CUDA_VISIBLE_DEVICES is narrowed before CUDA
  starts), so "cuda" and the model layer's cuda:0 are its own GPU. On a CPU every process shares the cores.
- Its share: the run's item list is a pure function of the request, cut into the same fixed batches as one
  process cuts it (same contents, same seed per batch); batch b is computed by rank b % WORLD_SIZE. So every
  sample equals the one-process run's, and a run started with N processes resumes with any M.
- The run: rank 0 creates it (or checks a resume) and the others learn its id; each process saves its batches;
  after a barrier rank 0 writes the summary from the store, which now holds every rank's samples, and records
  what each rank scored in the run's params ("processes": one entry per run or resume).

Why one lab.db with concurrent writers rather than per-rank files merged: lab.db is already in WAL mode and
commits one transaction per batch, so N writers take turns at the write lock for milliseconds per batch (seconds
of compute each); a killed run leaves exactly the batches written before the kill, in the one place resume, list,
show and compare already read, with no merge step that a kill could skip or a reader could see half done. The
cost: every process must reach the same file through a file system with working locks, which one host's local
disk gives. Several hosts go through an OpenAI-compatible deployment instead (README, "Past one GPU").

Why gloo, also on GPUs: the processes exchange only a run id, statuses and counts (Python objects, at a run's
start and end), never tensors. Gloo does that on the CPU, with no NCCL communicator and no GPU memory taken from
the model, and the same code runs in CI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Sequence, TypeVar

from lab.errors import LabError

T = TypeVar("T")
BACKEND = "gloo"
# a rank waits this long at a barrier for the slowest (one rank's share of a long benchmark, a model loading)
TIMEOUT = timedelta(hours=12)


@dataclass
class Group:
    """The processes of one evaluation; `SOLO` is a single process, where every collective is the identity."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    gpu: str | None = None  # the physical GPU this process was given (its CUDA_VISIBLE_DEVICES), if any

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def lead_rank(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto") -> "Group":
        """The launcher's group (torch.distributed over gloo), its GPU pinned unless `device` is cpu; SOLO when no
        launcher started this process."""
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return SOLO
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        if local_world != world:
            raise LabError(f"The launcher started {world} processes over several hosts; lab.eval spreads over the "
                           "processes of one host (its run history is one SQLite file), so use --nnodes 1, or an "
                           "OpenAI-compatible deployment behind --model openai:URL#NAME for a cluster.")
        gpu = None if device == "cpu" else _pin_gpu(local, local_world, device)
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(BACKEND, timeout=TIMEOUT)
        return cls(rank, world, local, local_world, gpu)

    # ---- collectives (over gloo; the identity in one process) --------------------------------------
    def broadcast(self, value: T) -> T:
        """Rank 0's `value`, on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value if self.lead_rank else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def lead(self, fn: Callable[[], T]) -> T:
        """fn() on rank 0, its result on every rank. A LabError it raises is raised on every rank, the same
        sentence, so every process ends as one process would (and the launcher sees them all stop)."""
        if not self.distributed:
            return fn()
        result, error = None, None
        if self.lead_rank:
            try:
                result = fn()
            except LabError as e:
                error = str(e)
        result, error = self.broadcast((result, error))
        if error is not None:
            raise LabError(error)
        return result

    # ---- sharing work -------------------------------------------------------------------------------
    def share(self, batches: Sequence[T]) -> list[T]:
        """This rank's batches: batch b goes to rank b % world_size (batches are alike in size, so shares are)."""
        return list(batches[self.rank::self.world_size])

    def sandbox_workers(self) -> int | None:
        """Parallel sandbox programs for this process: the host's CPUs shared among its processes (None: the
        sandbox's own default, every CPU, when this is the only one)."""
        if self.local_world_size <= 1:
            return None
        return max(1, (os.cpu_count() or 1) // self.local_world_size)

    def describe(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size, "gpu": self.gpu}

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


SOLO = Group()


def overall_status(statuses) -> str:
    """The status of work shared by processes, from each one's: finished only when every share finished."""
    return "finished" if all(s == "finished" for s in statuses) else "cancelled"


def _pin_gpu(local_rank: int, local_world: int, device: str) -> str | None:
    """Narrow CUDA_VISIBLE_DEVICES to this process's GPU, before CUDA starts (the device count NVML reports
    follows the variable until then). None on a host without GPUs."""
    import torch

    if torch.cuda.is_initialized():
        raise LabError("CUDA started before the process's GPU was chosen; start lab.eval through torchrun directly.")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in visible.split(",") if x.strip()] if visible is not None else None
    count = torch.cuda.device_count()
    if count == 0:
        if device == "cuda":
            raise LabError("--device cuda was asked for but this host shows no CUDA GPU to its processes.")
        return None
    ids = (ids or [str(i) for i in range(count)])[:count]
    if local_world > len(ids):
        raise LabError(f"The launcher started {local_world} processes on a host with {len(ids)} GPU(s); start one "
                       f"per GPU (--nproc_per_node {len(ids)}), or pass --device cpu.")
    os.environ["CUDA_VISIBLE_DEVICES"] = ids[local_rank]
    return ids[local_rank]
