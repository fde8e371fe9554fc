"""Reading a pretrained checkpoint into a network's backbone (`model.weights=<file>`, docs/extending.md).

A file is read with `torch.load(weights_only=True)` (sslprune.compute.checkpoint.load's reader): a
crafted pickle runs no code and is refused as not a checkpoint. Then the tensors of the backbone are
found in whichever common layout the file has:

- an entry holding the network: VISSL's `classy_state_dict` -> base_model -> model -> trunk, DINO's
  `teacher` (or `student`, `model.weights_key`), MoCo's, SwAV's and timm's `state_dict`, DeiT's
  `model`; else the file itself is the state dict (torchvision, timm's released files);
- a prefix on every name of the encoder: MoCo v1/v2 `module.encoder_q.`, MoCo v3
  `module.base_encoder.`, DINO `backbone.` / `module.backbone.`, VISSL `_feature_blocks.`, SwAV and
  SimCLR ports `module.`, or none (torchvision, timm): the one under which most names match the
  backbone's (ties: the first listed);
- the backbone's own container (sslprune's resnet50 keeps torchvision's network as `net.`).

Names under the chosen prefix that the backbone does not have are heads when their first part is a
head's (`fc`, `head`, `projection_head`, `prototypes`, ...: ignored, reported), else a mismatch;
names outside it are the file's other parts (MoCo's key encoder and queue, a DINO head): ignored,
reported. A backbone tensor the file lacks (but batch norm's `num_batches_tracked`, which some
ports drop) or of another shape is a mismatch. A mismatch is one line naming the file and the first
unmatched names, raised before the stage writes anything.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..core.errors import ConfigError, Damaged, Unsafe
from . import checkpoint

# Entries that hold the network, in the order they are looked for (VISSL's is a path).
ENTRIES = ("teacher", "state_dict", "model", "module", "net", "network")
VISSL = ("classy_state_dict", "base_model", "model", "trunk")
# Encoder prefixes of the common layouts, most specific first.
PREFIXES = ("module.encoder_q.", "encoder_q.", "module.base_encoder.", "base_encoder.", "module.backbone.",
            "backbone.", "module.encoder.", "encoder.", "module.trunk._feature_blocks.", "trunk._feature_blocks.",
            "_feature_blocks.", "module.", "")
# First name parts of projection and classification heads: never part of a backbone.
HEADS = ("fc", "head", "heads", "projection_head", "prototypes", "projector", "predictor", "classifier", "mlp",
         "last_layer")
OPTIONAL = ("num_batches_tracked",)  # batch-norm counters: absent from some ports, never used in training
SHOWN = 5  # unmatched names a mismatch error lists


@dataclass
class KeyMap:
    """How a file's names met the backbone's: `entry` the part of the file read (`` the whole),
    `prefix` stripped from its names; counts and examples of what was matched, ignored, missing."""

    file: str
    entry: str
    prefix: str
    matched: list = field(default_factory=list)  # backbone names given a tensor
    heads: list = field(default_factory=list)  # names of heads under the prefix (ignored)
    others: list = field(default_factory=list)  # file names outside the encoder (ignored)
    kept: list = field(default_factory=list)  # optional backbone buffers the file lacks (kept as built)

    def summary(self) -> dict:
        """What result.json and the stage's log say about the load."""
        return {"file": self.file, "entry": self.entry or None, "prefix": self.prefix, "matched": len(self.matched),
                "ignored_heads": _groups(self.heads, 1), "ignored_other": _groups(self.others, 2),
                "kept_as_built": len(self.kept)}

    def line(self) -> str:
        s = self.summary()
        heads = ", ".join(f"{k} ({n})" for k, n in s["ignored_heads"].items()) or "none"
        other = ", ".join(f"{k} ({n})" for k, n in s["ignored_other"].items()) or "none"
        where = (f"entry {self.entry!r}, " if self.entry else "") + f"prefix {self.prefix!r}"
        return (f"pretrained {self.file} ({where}): {len(self.matched)} backbone tensors matched, heads ignored: "
                f"{heads}; other parts ignored: {other}")


def _groups(names: list, parts: int) -> dict:
    """Names counted by their first `parts` parts (a head `fc`, `module.encoder_k`): a readable summary."""
    out: dict = {}
    for n in names:
        key = ".".join(n.split(".")[:parts])
        out[key] = out.get(key, 0) + 1
    return out


def read(path: str) -> dict:
    """The file's contents, as plain data; a crafted or damaged file is one line: not a checkpoint."""
    try:
        return checkpoint.load(Path(path), verify=False)
    except Unsafe:
        raise ConfigError(f"model.weights={path} is not a checkpoint: it holds objects other than tensors and "
                          "numbers (read with weights_only=True, nothing in it was run)") from None
    except Damaged as e:
        why = str(e).split(" cannot be read ", 1)[-1].strip("()")
        raise ConfigError(f"model.weights={path} is not a checkpoint ({why})") from None


def _tensors(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def state(obj, path: str, key: Optional[str] = None) -> tuple[str, dict]:
    """(entry, state dict): the part of a checkpoint that holds the network's tensors."""
    if not isinstance(obj, Mapping):
        raise ConfigError(f"model.weights={path} is not a checkpoint: it holds a {type(obj).__name__}, "
                          "not a dict of tensors")
    if key is not None:
        found = obj
        for part in key.split("."):
            if not isinstance(found, Mapping) or part not in found:
                raise ConfigError(f"model.weights_key={key}: {path} has no entry {key!r} "
                                  f"(its entries: {', '.join(map(str, obj)) or 'none'})")
            found = found[part]
        if not _tensors(found):
            raise ConfigError(f"model.weights_key={key}: entry {key!r} of {path} is not a dict of tensors")
        return key, dict(found)
    found = obj
    for i, part in enumerate(VISSL):
        if not isinstance(found, Mapping) or part not in found:
            break
        found = found[part]
        if i == len(VISSL) - 1 and _tensors(found):
            return ".".join(VISSL), dict(found)
    for entry in ENTRIES:
        if _tensors(obj.get(entry)):
            return entry, dict(obj[entry])
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors:
        return "", tensors
    raise ConfigError(f"model.weights={path} holds no tensors where a network's are kept (entries: "
                      f"{', '.join(map(str, obj)) or 'none'}; name the one with model.weights_key)")


def _container(names) -> str:
    """The backbone's own wrapper prefix when every name has one (sslprune's resnet50: `net.`)."""
    firsts = {n.split(".", 1)[0] for n in names}
    return (firsts.pop() + ".") if len(firsts) == 1 and all("." in n for n in names) else ""


def match(tensors: Mapping, backbone: torch.nn.Module, path: str, entry: str = "") -> tuple[KeyMap, dict]:
    """(the mapping, backbone state dict) of a file's tensors onto `backbone`; a mismatch raises one line."""
    own = backbone.state_dict()
    inner = _container(own)
    best = None
    for prefix in PREFIXES:
        hits = sum(1 for k in tensors if k.startswith(prefix) and _own(k[len(prefix):], own, inner) is not None)
        if best is None or hits > best[1]:
            best = (prefix, hits)
    prefix = best[0]
    m = KeyMap(file=path, entry=entry, prefix=prefix)
    loaded, unmatched, shapes = {}, [], []
    for k, v in tensors.items():
        if not k.startswith(prefix):
            m.others.append(k)
            continue
        name = k[len(prefix):]
        mine = _own(name, own, inner)
        if mine is None:
            if name.split(".", 1)[0] in HEADS:
                m.heads.append(name)
            else:
                unmatched.append(k)
        elif tuple(v.shape) != tuple(own[mine].shape):
            shapes.append(f"{k} is {tuple(v.shape)}, the network's {mine} {tuple(own[mine].shape)}")
        else:
            loaded[mine] = v
            m.matched.append(mine)
    missing = [k for k in own if k not in loaded and k.rsplit(".", 1)[-1] not in OPTIONAL]
    m.kept = [k for k in own if k not in loaded and k.rsplit(".", 1)[-1] in OPTIONAL]
    if shapes:
        raise ConfigError(f"model.weights={path}: {len(shapes)} tensors differ in shape from the network's: "
                          f"{'; '.join(shapes[:SHOWN])}" + (" ..." if len(shapes) > SHOWN else ""))
    if unmatched or missing:
        parts = []
        if unmatched:
            parts.append(f"{len(unmatched)} names of the file match no backbone tensor (prefix {prefix!r}): "
                         f"{', '.join(unmatched[:SHOWN])}" + (" ..." if len(unmatched) > SHOWN else ""))
        if missing:
            parts.append(f"{len(missing)} backbone tensors are not in the file: {', '.join(missing[:SHOWN])}" +
                         (" ..." if len(missing) > SHOWN else ""))
        raise ConfigError(f"model.weights={path} does not fit the network: " + "; ".join(parts))
    return m, loaded


def _own(name: str, own: Mapping, inner: str) -> Optional[str]:
    if name in own:
        return name
    if inner and inner + name in own:
        return inner + name
    return None


def load(path: str, key: Optional[str], backbone: torch.nn.Module) -> KeyMap:
    """Put the file's backbone tensors into `backbone` (copied, of equal shapes); returns the mapping."""
    entry, tensors = state(read(path), path, key)
    m, loaded = match(tensors, backbone, path, entry)
    backbone.load_state_dict({**backbone.state_dict(), **loaded})
    return m


def check(path: str, key: Optional[str], backbone: torch.nn.Module) -> KeyMap:
    """The mapping of the file onto `backbone` without changing it (a meta-device backbone will do)."""
    entry, tensors = state(read(path), path, key)
    return match(tensors, backbone, path, entry)[0]
