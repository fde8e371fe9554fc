"""Networks: a backbone that ends in pooled penultimate features, plus a swappable linear head.

Models stay vanilla `nn.Module`s; sparsity lives in `sslprune.mask`. The head is owned by the
task (4 rotation classes, 10 or 1000 labels) and is replaced, not reshaped, when the task changes.
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn

from .config import ModelConfig, ConfigError, MODELS


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet with the 3x3 stride-1 stem used for 32px (and smaller) images."""

    def __init__(self, in_channels: int, blocks: list[int], widths: list[int]):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.out_features = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layers(self.stem(x))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class TorchvisionBackbone(nn.Module):
    """torchvision's ImageNet ResNet without its classifier."""

    def __init__(self, name: str, in_channels: int, width: int):
        super().__init__()
        net = getattr(torchvision.models, name)(weights=None, width_per_group=width)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.out_features = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x):
        return self.net(x)


class Network(nn.Module):
    def __init__(self, backbone: nn.Module, num_outputs: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_features, num_outputs)

    def forward(self, x):
        return self.head(self.backbone(x))

    def new_head(self, num_outputs: int, generator: torch.Generator) -> None:
        """Replace the head with a freshly initialised one (seeded, so reproducible)."""
        head = nn.Linear(self.backbone.out_features, num_outputs).to(self.head.weight.device)
        with torch.no_grad():
            bound = 1 / self.backbone.out_features ** 0.5
            head.weight.copy_(torch.empty_like(head.weight, device="cpu").uniform_(-bound, bound, generator=generator))
            head.bias.copy_(torch.empty_like(head.bias, device="cpu").uniform_(-bound, bound, generator=generator))
        self.head = head


HEAD = "head."  # parameter-name prefix of the last fully-connected layer: never pruned


def build(cfg: ModelConfig, in_channels: int, num_outputs: int, seed: int) -> Network:
    """Build a network with weights drawn from `seed` alone (independent of global RNG state)."""
    if cfg.name not in MODELS:
        raise ConfigError(f"model.name={cfg.name!r} is not one of {', '.join(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        w = cfg.width
        if cfg.name == "resnet_small":
            backbone = CifarResNet(in_channels, [1, 1, 1], [w, 2 * w, 4 * w])
        elif cfg.name == "resnet18_cifar":
            backbone = CifarResNet(in_channels, [2, 2, 2, 2], [w, 2 * w, 4 * w, 8 * w])
        else:  # resnet50; width is torchvision's width_per_group (64 = standard)
            backbone = TorchvisionBackbone("resnet50", in_channels, w)
        return Network(backbone, num_outputs)


class FrozenBackbone(Network):
    """A network whose backbone is frozen in eval mode: only the head learns (linear probing).

    `train()` never reaches the backbone, so batch-norm statistics stay as loaded, and the
    backbone runs without autograd."""

    def __init__(self, net: Network):
        nn.Module.__init__(self)
        self.backbone, self.head = net.backbone, net.head
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True):
        self.training = mode
        self.head.train(mode)
        self.backbone.eval()
        return self

    def forward(self, x):
        with torch.no_grad():
            features = self.backbone(x)
        return self.head(features)
