"""Two-view tasks with a momentum target: MoCo v2 (key encoder and a queue of keys) and BYOL
(predictor and EMA target).

The target is a copy of the online network and of the task's projection tail, made before the
first step of a fit (`begin`) unless the task's state (a checkpoint, or the rewind point) brought
one, and updated after every optimizer step (`after_step`): theta_t <- m theta_t + (1 - m) theta
over parameters; its batch-norm statistics are its own, from its own forward passes.

IMP semantics. The mask prunes the online network: its weights are the ticket. The target is
masked with the same mask after each update (and when a fit begins). Why: pruned online weights
are zero from the level's first step, so the average would decay the target's weight there
geometrically towards zero anyway (m^t: at MoCo's 0.999 still 37 % after 1000 steps); left dense,
the target would be a dense teacher whose pruned weights keep shaping the keys and regression
targets, so a level's signal would come partly from weights the mask removed, and the mask would
not be what is tested. Masked, the target computes with the ticket's architecture, and its
weights are exactly what the uninterrupted EMA would converge to at those positions. At the rewind
point the target, the queue and the tail/predictor are saved with W_k (the task's state) and
restored with it, so level L starts from the whole state that level 0 had after k updates.

Batch norm. MoCo shuffles the keys' batch across GPUs ("shuffled BN") so the statistics of a
query's sub-batch and its key's differ: a sub-batch's statistics would otherwise leak which key
belongs with which query. The stand-in here is SimCLR's global batch norm: queries and keys are
separate forward passes, each normalised with statistics of the whole global batch (one process
holds it; under DDP the batch norms are the ranks' GlobalBatchNorm / SyncBatchNorm), so no pair
shares a small sub-batch's statistics and the results do not depend on the rank count, which a
shuffle across ranks would make them do."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from . import distributed, mask as masks, seed as seeds
from .contrastive import TwoViews
from .runtime import GlobalBatchNorm
from .seed import Draws

from ..core.schema import TaskConfig


def byol_momentum(step: int, total: int, base: float) -> float:
    """BYOL's EMA rate after `step` of `total` updates: 1 - (1 - base)(cos(pi step / total) + 1) / 2,
    from `base` at step 0 to 1 at the end (Grill et al. 2020, section 3.2); a pure function of the step."""
    return 1 - (1 - base) * (math.cos(math.pi * min(step, total) / max(total, 1)) + 1) / 2


def _copy(module: nn.Module) -> nn.Module:
    """A deep copy sharing the process groups (GlobalBatchNorm.group, SyncBatchNorm.process_group):
    a process group cannot be copied, and the copy's batch norms must reduce over the same ranks."""
    memo = {}
    for m in module.modules():
        for attr in ("group", "process_group"):
            g = getattr(m, attr, None)
            if g is not None:
                memo[id(g)] = g
    return copy.deepcopy(module, memo)


class Momentum(TwoViews):
    """A two-view task with a momentum target (see the module docstring)."""

    def __init__(self, cfg: TaskConfig, data):
        super().__init__(cfg, data)
        self.base = cfg.target_momentum
        self.target = self._pending = self._mask = None
        self.total = 0

    def momentum_at(self, step: int) -> float:
        return self.base

    def begin(self, model, mask, step: int, total: int) -> None:
        """The target: a copy of the online network and tail, or the state loaded into this task."""
        self.total = total
        self.target = nn.ModuleDict({"net": _copy(model), "tail": _copy(self._bound())}).train()
        self.target.requires_grad_(False)
        if self._pending is not None:
            self.target.load_state_dict(self._pending)
            self._pending = None
        self._online = [p for m in (model, self._bound()) for p in m.parameters()]
        self._params = [p for m in (self.target["net"], self.target["tail"]) for p in m.parameters()]
        self._mask = masks.Applier(self.target["net"], mask)
        self._mask()

    @torch.no_grad()
    def after_step(self, model, mask, step: int) -> None:
        m = self.momentum_at(step)
        torch._foreach_mul_(self._params, m)
        torch._foreach_add_(self._params, [p.detach() for p in self._online], alpha=1 - m)
        self._mask()

    @torch.no_grad()
    def target_embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.target is None:
            raise RuntimeError(f"{self.name} has no target network: the trainer calls begin() before the first step")
        return F.normalize(self.target["tail"](self.target["net"](x)), dim=1)

    def state_dict(self) -> dict:
        target = self.target.state_dict() if self.target is not None else self._pending
        return {**super().state_dict(), "target": target}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.target is not None:
            self.target.load_state_dict(state["target"])
        else:
            self._pending = state["target"]


class MoCoV2(Momentum):
    """He et al. 2020 with Chen et al.'s v2 changes (MLP head, blur, cosine schedule): the query is
    view 1 through the online network, its key view 2 through the momentum key encoder (m =
    target_momentum, constant); InfoNCE over the key and the `queue` keys of earlier batches at
    `temperature`. After each step the global batch's keys (gathered over ranks, one process's
    order) replace the oldest in the queue, which starts as random unit vectors drawn from the
    loader's seed. Keys do not need gradients: they are made in `prepare`, before the online
    forward pass, as MoCo does. Colour jitter 0.4, blur on both views with probability 0.5."""

    name = "mocov2"

    def __init__(self, cfg: TaskConfig, data):
        super().__init__(cfg, data)
        self.size = cfg.queue
        self.queue = self._keys = self._push = None
        self.at = 0  # where the next keys go (a Python int: saved as part of the state)

    def bind(self, loader) -> None:
        super().bind(loader)
        g = seeds.generator(loader.seed, "mocov2-queue")
        self.queue = F.normalize(torch.randn(self.size, self.embedding, generator=g), dim=1).to(loader.device)
        self.at = 0

    def prepare(self, x, index, draws: Draws):
        v1, v2 = self.two(x, draws)
        self._keys = self.target_embed(v2)
        return v1, index

    def loss(self, outputs, index):
        if self._keys is None:
            raise RuntimeError("MoCoV2.loss uses the keys its prepare() made: call prepare first")
        q, k = self.embed(outputs), self._keys.to(outputs.dtype)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ self.queue.to(q.dtype).T], 1) / self.temperature
        zero = torch.zeros(len(q), dtype=torch.long, device=q.device)
        loss = F.cross_entropy(logits, zero)
        self._seen = ((logits.detach().argmax(1) == 0).sum(), len(q))
        if torch.is_grad_enabled() and outputs.requires_grad:
            self.remember(q.detach(), index)
            self._push = k
        return loss

    @torch.no_grad()
    def after_step(self, model, mask, step: int) -> None:
        super().after_step(model, mask, step)
        if self._push is not None:
            (keys,) = distributed.gather_batch(self._push.to(self.queue.dtype))
            keys = keys[-self.size:]
            at = (self.at + torch.arange(len(keys), device=keys.device)) % self.size
            self.queue.index_copy_(0, at.to(self.queue.device), keys.to(self.queue.device))
            self.at = (self.at + len(keys)) % self.size
            self._push = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "queue": self.queue, "queue_at": torch.tensor(self.at)}

    def load_state_dict(self, state: dict) -> None:
        if "queue" not in state:
            raise ValueError("this checkpoint holds no MoCo v2 queue: it was not written by a mocov2 run")
        if state["queue"].shape != self.queue.shape:
            raise ValueError(f"checkpointed queue has shape {tuple(state['queue'].shape)}, "
                             f"task.queue={self.size} needs {tuple(self.queue.shape)}")
        super().load_state_dict(state)
        self.queue.copy_(state["queue"])
        self.at = int(state["queue_at"])


class BYOL(Momentum):
    """Grill et al. 2020: the online network, projector (the head and the tail, with batch norm)
    and predictor regress the EMA target's projection of the other view; loss 2 - 2 cos(p, z'),
    symmetrised over the two views (the paper's L + L~, each a mean over the batch). The EMA rate
    follows `byol_momentum` from target_momentum (0.996) to 1. No negatives: `score` counts the
    predictions whose nearest target in this rank's batch is their own image's (a training
    diagnostic only). Views as BYOL's: blur with probability 1.0 / 0.1, solarisation 0 / 0.2,
    colour jitter 0.4."""

    name = "byol"
    blur = (1.0, 0.1)
    solarize = (0.0, 0.2)
    tail_norm = True

    def __init__(self, cfg: TaskConfig, data):
        super().__init__(cfg, data)
        self.predictor = self._targets = None

    def bind(self, loader) -> None:
        super().bind(loader)
        g = seeds.generator(loader.seed, "byol-predictor")
        self.predictor = nn.Sequential(
            self._layer(self.embedding, self.num_outputs, g, loader.device),
            GlobalBatchNorm(self.num_outputs).to(loader.device), nn.ReLU(),
            self._layer(self.num_outputs, self.embedding, g, loader.device))

    def modules(self) -> list[nn.Module]:
        return [self._bound(), self.predictor]

    def momentum_at(self, step: int) -> float:
        return byol_momentum(step, self.total, self.base)

    def prepare(self, x, index, draws: Draws):
        v1, v2 = self.two(x, draws)
        both = torch.cat([v1, v2])
        t = self.target_embed(both)
        b = len(x)
        self._targets = torch.cat([t[b:], t[:b]])  # view 1 regresses view 2's target, and back
        return both, index

    def loss(self, outputs, index):
        if self._targets is None:
            raise RuntimeError("BYOL.loss uses the targets its prepare() made: call prepare first")
        z = self._bound()(outputs)
        p = F.normalize(self.predictor(z), dim=1)
        t = self._targets.to(p.dtype)
        loss = 2 * (2 - 2 * (p * t).sum(1)).mean()
        own = torch.arange(len(p), device=p.device)
        self._seen = (((p.detach() @ t.T).argmax(1) == own).sum(), len(p))
        if torch.is_grad_enabled() and outputs.requires_grad:
            self.remember(F.normalize(z[:len(z) // 2].detach(), dim=1), index)
        return loss

    def state_dict(self) -> dict:
        return {**super().state_dict(), "predictor": self.predictor.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "predictor" not in state:
            raise ValueError("this checkpoint holds no BYOL predictor: it was not written by a byol run")
        super().load_state_dict(state)
        self.predictor.load_state_dict(state["predictor"])
