"""A finished stage's network as standalone files that load without sslprune's store.

In the export folder (`write`):
- `model.pt`: a plain state_dict, pruned weights exactly zero. ResNet-50 on 3-channel images
  loads (strict) into `torchvision.models.resnet50(num_classes=N, width_per_group=W)`: the
  project's network *is* torchvision's with its `fc` kept as `head` (keys `backbone.net.X` -> `X`,
  `head.*` -> `fc.*`). The other networks load into the project's own class,
  `sslprune.compute.model.build(ModelConfig(name, width), in_channels, N, 0)`, because none of them
  is torchvision's: the AlexNet is DeepCluster's (96-256-384-384-256 channels, batch norm after
  every layer, no biases, no dropout) where torchvision's has 64-192-384-256-256 channels, biases and
  no batch norm; the VGG-19 has no biases, no max-pool after its last block, a global average pool
  and one linear head where torchvision's vgg19_bn keeps the biases, the last pool, a 7x7 pool and a
  three-layer classifier; the CIFAR ResNets have a 3x3 stride-1 stem and no max-pool.
- `mask.pt`: {weight name: bool tensor}, the same names as `model.pt`.
- `compact.pt`: the same network with each masked weight stored as its mask packed to bits
  (uint8, 8 weights a byte, most significant bit first) and its kept values in row-major order;
  every other tensor as it is. `expand` turns it back into `model.pt`'s state_dict and the mask.
- `export.json`: what the files hold, how to load them, the stage's stored result, the sizes on disk.
All .pt files are dicts of tensors, strings, ints and lists: `torch.load(path, weights_only=True)`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

import torch

from ..core import store as files
from ..core.stage import Stage
from . import checkpoint, cost as costs

FORMAT = "sslprune-compact-1"
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def torchvision_constructor(model_name: str, width: int, in_channels: int) -> Optional[str]:
    """The torchvision call whose network the project's is, or None (see the module docstring)."""
    if model_name == "resnet50" and in_channels == 3:
        return f"torchvision.models.resnet50(num_classes={{num_outputs}}, width_per_group={width})"
    return None


def to_torchvision(name: str) -> str:
    """A parameter name of the project's ResNet-50 as torchvision's resnet50 names it."""
    if name.startswith("backbone.net."):
        return name[len("backbone.net."):]
    if name.startswith("head."):
        return "fc." + name[len("head."):]
    raise KeyError(f"{name} has no torchvision counterpart")


def pack(mask: torch.Tensor) -> torch.Tensor:
    """A 0/1 tensor as bits: uint8, 8 entries a byte, most significant first, zero-padded."""
    flat = mask.flatten().bool()
    pad = (-len(flat)) % 8
    flat = torch.cat([flat, torch.zeros(pad, dtype=torch.bool)])
    return (flat.view(-1, 8).to(torch.uint8) * _BITS).sum(1, dtype=torch.uint8)


def unpack(bits: torch.Tensor, shape) -> torch.Tensor:
    """`pack`'s inverse: the bool tensor of `shape`."""
    n = 1
    for s in shape:
        n *= s
    return ((bits.unsqueeze(1) & _BITS) != 0).flatten()[:n].view(*shape)


def compact(state: Dict[str, torch.Tensor], mask: Dict[str, torch.Tensor]) -> dict:
    """The state_dict with every masked weight stored as bits plus its kept values."""
    masked = {}
    for name, m in mask.items():
        keep = m.bool()
        masked[name] = {"shape": list(m.shape), "bits": pack(keep), "values": state[name][keep].clone()}
    return {"format": FORMAT, "dense": {k: v for k, v in state.items() if k not in mask}, "masked": masked}


def expand(packed: dict) -> tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """(state_dict, mask) from `compact`'s dict; pruned weights are zero. Tensor order is not kept:
    load_state_dict matches names."""
    if packed.get("format") != FORMAT:
        raise ValueError(f"not an {FORMAT} file (format {packed.get('format')!r})")
    state, mask = dict(packed["dense"]), {}
    for name, m in packed["masked"].items():
        keep = unpack(m["bits"], m["shape"])
        w = torch.zeros(m["shape"], dtype=m["values"].dtype)
        w[keep] = m["values"]
        state[name], mask[name] = w, keep
    return state, mask


def standalone(weights: Dict[str, torch.Tensor], mask: Dict[str, torch.Tensor], model_name: str, width: int):
    """(state_dict, mask, the constructor it loads into) of a network of the project: names as
    torchvision has them where the network is torchvision's, the project's names otherwise."""
    in_channels = next(v for v in weights.values() if v.dim() == 4).shape[1]  # the stem convolution's input
    num_outputs = weights["head.weight"].shape[0]
    tv = torchvision_constructor(model_name, width, in_channels)
    rename = to_torchvision if tv else (lambda n: n)
    state = {rename(k): v.contiguous() for k, v in weights.items()}
    mask = {rename(k): v.bool() for k, v in mask.items()}
    loads_into = (tv.format(num_outputs=num_outputs) if tv else
                  f"sslprune.compute.model.build(ModelConfig(name={model_name!r}, width={width}), "
                  f"{in_channels}, {num_outputs}, 0)")
    return state, mask, loads_into


def _save(obj, path: Path) -> int:
    files.replace(path, lambda f: torch.save(obj, f))
    return path.stat().st_size


def write(stage: Stage, out: Path) -> dict:
    """Export a finished IMP level or re-training stage (they save their network) into folder `out`;
    returns export.json's record."""
    if stage.kind not in ("imp", "retrain"):
        raise ValueError(f"{stage.label}: a {stage.kind} stage saves no network of its own; export its IMP level")
    result = stage.result()  # Corrupt / missing: the caller's error names the stage
    weights = checkpoint.load(stage.dir / "model.pt")
    mask = {k: v.bool() for k, v in checkpoint.load(stage.dir / "mask.pt").items()}
    bad = [n for n, m in mask.items() if bool((weights[n][~m] != 0).any())]
    if bad:
        raise ValueError(f"{stage.dir / 'model.pt'}: pruned weights of {bad[:3]} are not zero")
    cfg = stage.cfg
    state, mask, loads_into = standalone(weights, mask, cfg.model.name, cfg.model.width)
    tv = not loads_into.startswith("sslprune")
    in_channels = next(v for v in weights.values() if v.dim() == 4).shape[1]
    num_outputs = weights["head.weight"].shape[0]
    model = {"name": cfg.model.name, "width": cfg.model.width}
    if cfg.model._target_ is not None:  # a network of your own loads into what its target builds
        model = {"name": cfg.model.name, "_target_": cfg.model._target_, "kwargs": cfg.model.kwargs}
        loads_into = (f"sslprune.compute.model.build(ModelConfig(name={cfg.model.name!r}, "
                      f"_target_={cfg.model._target_!r}, kwargs={cfg.model.kwargs!r}), {in_channels}, {num_outputs}, 0)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"model.pt": _save(state, out / "model.pt"), "mask.pt": _save(mask, out / "mask.pt"),
             "compact.pt": _save(compact(state, mask), out / "compact.pt")}
    record = {
        "stage": stage.label, "experiment": cfg.experiment, "signal": stage.signal, "seed": stage.seed,
        "level": stage.level, "kind": stage.kind, "scheme": getattr(stage, "scheme", None),
        "evaluation": stage.evaluation, "accuracy": result["accuracy"], "metric": result.get("metric", "top1"),
        "remaining": result["remaining"], "stage_dir": str(stage.dir),
        "model": model, "in_channels": in_channels,
        "num_outputs": num_outputs, "loads_into": loads_into, "torchvision": tv,
        **{k: result[k] for k in (*costs.FIELDS, "input_size") if k in result},
        "bytes": sizes, "compact_vs_dense": sizes["compact.pt"] / sizes["model.pt"],
    }
    text = json.dumps(record, indent=2) + "\n"
    files.replace(out / "export.json", lambda f: f.write(text.encode()))
    return record
