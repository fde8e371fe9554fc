"""Where a stage runs: device, threads, and (when several processes run it) its rank.

`local(run)` is one process. `from_environment(run)` reads the SLURM/submitit environment: with
more than one task it sets up torch.distributed (gloo on CPU, NCCL on GPU) with a rendezvous
address and port derived from the job id and its restart count, so every requeue gets a fresh
rendezvous. The process group is set up once per process and kept for every stage of a pack
(a second init_process_group on the same port races the first one's teardown: a rank that finished
its stage early joined the old rendezvous). `Runtime.sync_batchnorm` makes batch-norm statistics
global across ranks, so a 2-process run matches a 1-process run at the same global batch.
What the ranks say to each other once the group is set up (decisions, sums, gathers) is in
sslprune.compute.distributed; Runtime's `agree_all` and `decide` bind it to this runtime's ranks.
"""
from __future__ import annotations

import atexit
import dataclasses
import datetime
import os
import random
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..core.errors import ConfigError, NoDevice
from ..core.schema import RunConfig
from . import distributed, torch_internals


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    # Process group for batch-norm statistics; None: the default group, the communicator DDP's
    # gradients use too (one NCCL communicator per rank, not two).
    group: Optional[Any] = None
    control: Optional[Any] = None  # a gloo (CPU) group for small decisions: no device sync; None: the default
    channels_last: Optional[bool] = None  # None: on CUDA (what convolutions there are fastest with)

    def __post_init__(self):
        if self.channels_last is None:
            self.channels_last = self.device.type == "cuda"

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def agree(self, wanted: bool) -> bool:
        """True on every rank when any rank wants it (one all-reduce of one CPU integer)."""
        return bool(self.agree_all([int(wanted)])[0])

    def agree_all(self, values: list[int]) -> list[int]:
        """The elementwise maximum over ranks of a few CPU integers (distributed.max_over_ranks),
        over the control group."""
        return distributed.max_over_ranks(values, self.world, self.control)

    def decide(self, value: int) -> int:
        """Rank 0's `value` on every rank (distributed.from_rank0): for what each rank would read
        from the store at a different moment, such as whether a stage is done."""
        return distributed.from_rank0(value, self.world, self.control)

    def sync_batchnorm(self, net: nn.Module) -> nn.Module:
        """Batch norm over the global batch (all ranks); a no-op for one process."""
        if self.world <= 1:
            return net
        if self.device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(net, process_group=self.group)
        return GlobalBatchNorm.convert(net, self.group)  # torch's SyncBatchNorm refuses CPU tensors

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def check_device(run: RunConfig) -> None:
    """Refuse run.device=cuda where no GPU is visible, before any work."""
    if run.device == "cuda" and not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise NoDevice("run.device=cuda but no CUDA device is visible (torch.cuda.is_available() is False"
                       + (f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "")
                       + "); use run.device=auto or run.device=cpu")


def uses_cuda(run: RunConfig) -> bool:
    """Whether this process's stages compute on a GPU (sslprune-run chooses its worker count from
    it); run.device=cuda without a visible GPU is refused, even on a finished store."""
    if run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device=cuda but no CUDA device is visible here (torch.cuda.is_available() is "
                          "False); use run.device=auto or run.device=cpu")
    return run.device == "cuda" or (run.device == "auto" and torch.cuda.is_available())


def _threads_and_device(run: RunConfig, local_rank: int = 0) -> torch.device:
    if run.threads:
        torch.set_num_threads(run.threads)
    check_device(run)
    if run.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(run.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def local(run: RunConfig) -> Runtime:
    return Runtime(_threads_and_device(run))


def rendezvous_port(job_id: str, restart: int) -> int:
    """A port from the job id and its restart count: stable across ranks, new after each requeue.
    A pack's stages share the one process group its first stage sets up (from_environment), so
    no second rendezvous ever meets the first one's store, still open on this port."""
    return random.Random(f"{job_id}/{restart}").randint(20000, 60000)


_ranks: Optional[Runtime] = None  # this process's rank of a multi-task job, set up by its first stage
_start_threads = 0  # torch's thread count before the first stage set it: what run.threads=0 means in a job


def from_environment(run: RunConfig) -> Runtime:
    """The runtime of a submitit job: one process, or one rank of a multi-task (DDP) job. The
    ranks rendezvous once per process: the next stage of a pack reuses the same process group."""
    global _ranks, _start_threads
    import submitit

    env = submitit.JobEnvironment()
    if not run.threads:  # one thread per CPU SLURM gave the task: the same count on every restart
        run = dataclasses.replace(run, threads=int(os.environ.get("SLURM_CPUS_PER_TASK", "0") or 0))
    if env.num_tasks <= 1:
        return local(run)
    if _ranks is not None:
        # Set again for each stage of a pack: the previous stage may have changed it (a resumed
        # checkpoint's recorded count), and the count changes CPU results.
        torch.set_num_threads(run.threads or _start_threads)
        return _ranks
    _start_threads = torch.get_num_threads()
    os.environ["MASTER_PORT"] = str(rendezvous_port(env.job_id, int(os.environ.get("SLURM_RESTART_COUNT", 0))))
    dist = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    device = _threads_and_device(run, dist.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, init_method="env://", rank=dist.rank, world_size=dist.world_size,
                                         timeout=datetime.timedelta(minutes=30),
                                         **({"device_id": device} if device.type == "cuda" else {}))
    # Batch-norm statistics use the default group, as DDP does: the ranks issue both kinds of all-reduce
    # in the same (autograd's) order, so one communicator serves both. Decisions go over gloo, so
    # they never wait for the GPU; with gloo as the backend the default group is that group.
    control = torch.distributed.new_group(backend="gloo") if backend != "gloo" else None
    _ranks = Runtime(device, dist.rank, dist.world_size, None, control)
    atexit.register(_ranks.close)  # once the job's last stage is done
    return _ranks


class GlobalBatchNorm(torch_internals.BatchNorm):
    """Batch norm (1-d or 2-d) whose training statistics cover the batches of all ranks (a CPU/gloo
    SyncBatchNorm; AlexNet's fully-connected layers use BatchNorm1d, the convolutions BatchNorm2d).

    Mean and variance are computed in two passes over the global batch; running statistics use
    the global unbiased variance, exactly as one process holding the whole batch would."""

    group = None

    def _check_input_dim(self, x):
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2-d, 3-d or 4-d input (got {x.dim()}-d)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.distributed.is_initialized()):
            return super().forward(x)
        dims = tuple(d for d in range(x.dim()) if d != 1)
        shape = [1, -1] + [1] * (x.dim() - 2)
        # Every rank holds an equal slice of the global batch (the loaders guarantee it), so the
        # global count is derived: no extra all-reduce and host sync per layer and step.
        n = float(x.numel() // x.shape[1] * torch.distributed.get_world_size(self.group))
        mean = distributed.differentiable_sum(x.sum(dims), self.group) / n
        centred = x - mean.view(shape)
        var = distributed.differentiable_sum((centred * centred).sum(dims), self.group) / n
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / max(n - 1, 1), alpha=m)
                self.num_batches_tracked.add_(1)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @classmethod
    def convert(cls, module: nn.Module, group=None) -> nn.Module:
        """Replace every BatchNorm1d/2d by a GlobalBatchNorm sharing its parameters and buffers."""
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(module, cls):
            new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            new.group = group
            if module.affine:
                new.weight, new.bias = module.weight, module.bias
            if module.track_running_stats:
                new.running_mean, new.running_var = module.running_mean, module.running_var
                new.num_batches_tracked = module.num_batches_tracked
            new.train(module.training)
            return new
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child, group))
        return module
