"""Networks: a backbone that ends in the penultimate feature vector, plus a swappable linear head.

Models stay vanilla `nn.Module`s; sparsity lives in `sslprune.mask`. The head is owned by the
task (4 rotation classes, 10 or 1000 labels) and is replaced, not reshaped, when the task changes.

Every backbone names its cut points (`cuts`: cut name -> module-name prefixes, input to output),
the layer groups that layerwise pruning (prune.scope, paper Figures 4 and 9) counts in.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torchvision
from torch import nn

from ..core.errors import ConfigError
from ..core.schema import ModelConfig, CUT_POINTS, MODELS
from . import factory


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
        # Blocks are one flat Sequential (checkpoint names stay layers.<i>); stage i is a run of them.
        ends = [sum(blocks[:i + 1]) for i in range(len(blocks))]
        self.cuts = {"stem": ("stem",), **{
            f"stage{i + 1}": tuple(f"layers.{j}" for j in range(end - n, end))
            for i, (n, end) in enumerate(zip(blocks, ends))}}
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
        self.cuts = {"conv1": ("net.conv1",), **{f"layer{i}": (f"net.layer{i}",) for i in range(1, 5)}}

    def forward(self, x):
        return self.net(x)


def scaled(channels: int, width: int) -> int:
    """AlexNet and VGG widths: `width` 64 is the published network, any other scales every layer by width/64."""
    return max(1, round(channels * width / 64))


class MaxPool(nn.MaxPool2d):
    """Max-pooling that never collapses a small map to zero size, so one network runs on 8x8 digits,
    28 px Fashion-MNIST and 32 px CIFAR alike.

    Ceil mode keeps the border row of odd-sized maps; a map smaller than the window passes through
    unchanged. Neither changes the published networks at their own input size (224 px AlexNet,
    32 px VGG), where every map is large enough and the ceil and floor sizes agree."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__(kernel_size, stride, ceil_mode=True)

    def forward(self, x):
        if min(x.shape[-2:]) < self.kernel_size:
            return x
        return super().forward(x)


def _init(module: nn.Module) -> None:
    # DeepCluster's (and torchvision's) AlexNet initialisation, also used for VGG: He-normal
    # (fan-out, as the ResNets here) convolutions, N(0, 0.01) fully-connected layers; batch norm
    # starts at the identity.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)


# (channels at width 64, kernel, stride, padding, max-pool after it)
ALEXNET = ((96, 11, 4, 2, True), (256, 5, 1, 2, True), (384, 3, 1, 1, False), (384, 3, 1, 1, False),
           (256, 3, 1, 1, True))
# The same five layers for 28-32 px images: 5x5 stride-1 first layers instead of 11x11 stride 4,
# so a 32 px image still reaches conv5 as a 4x4 map (224 px AlexNet: 6x6 before fc6).
ALEXNET_CIFAR = ((96, 5, 1, 2, True), (256, 5, 1, 2, True), (384, 3, 1, 1, False), (384, 3, 1, 1, False),
                 (256, 3, 1, 1, True))


class AlexNet(nn.Module):
    """AlexNet as in self-supervised work (DeepCluster, Caron et al.): batch norm after every layer, no LRN.

    conv1..conv5 (conv-BN-ReLU, 3x3 stride-2 max-pools after conv1, conv2, conv5), an adaptive
    average pool to a `grid` x `grid` map, then fc6 and fc7 (linear-BN-ReLU, 4096 units at width
    64). The penultimate features are fc7's output; the head (paper: fc8) is `Network.head`.
    No dropout: batch norm after fc6/fc7 regularises them (as in RotNet's and the Goyal et al.
    benchmark's AlexNet), and dropout would draw from the global RNG, which no seed of ours controls.
    Layers followed by batch norm have no bias (it would be cancelled by the normalisation)."""

    def __init__(self, in_channels: int, width: int, convs=ALEXNET, grid: int = 6):  # convs: five layers
        super().__init__()
        cin = in_channels
        for i, (c, k, stride, pad, pool) in enumerate(convs, 1):
            c = scaled(c, width)
            layers = [nn.Conv2d(cin, c, k, stride, pad, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            setattr(self, f"conv{i}", nn.Sequential(*layers, *([MaxPool(3, 2)] if pool else [])))
            cin = c
        # Identity at the published input size (224 px: 6x6); other sizes reach the same fc6.
        self.pool = nn.AdaptiveAvgPool2d(grid)
        hidden = scaled(4096, width)
        self.fc6 = nn.Sequential(nn.Linear(cin * grid * grid, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU())
        self.fc7 = nn.Sequential(nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU())
        self.out_features = hidden
        self.cuts = {name: (name,) for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")}
        _init(self)

    def forward(self, x):
        x = self.conv5(self.conv4(self.conv3(self.conv2(self.conv1(x)))))
        return self.fc7(self.fc6(torch.flatten(self.pool(x), 1)))


# VGG-19 for CIFAR (Morcos et al., Frankle et al.): five blocks of 3x3 convolutions at width 64,
# a 2x2 max-pool between blocks.
VGG19 = ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512))


class VGG(nn.Module):
    """block1..block5 of conv3x3-BN-ReLU, max-pools between blocks, then a global average pool.

    The final MLP of the ImageNet VGG is gone: the single fully-connected layer after the pool is
    `Network.head` (as in the paper). A 32 px image reaches block5 as a 2x2 map, as in open_lth;
    smaller images stop shrinking at 1x1 (see MaxPool). Convolutions have no bias (batch norm follows)."""

    def __init__(self, in_channels: int, width: int, blocks=VGG19):
        super().__init__()
        cin = in_channels
        for i, block in enumerate(blocks, 1):
            layers = []
            for c in block:
                c = scaled(c, width)
                layers += [nn.Conv2d(cin, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
                cin = c
            if i < len(blocks):
                layers.append(MaxPool(2, 2))
            setattr(self, f"block{i}", nn.Sequential(*layers))
        self.out_features = cin
        self.cuts = {f"block{i}": (f"block{i}",) for i in range(1, len(blocks) + 1)}
        _init(self)

    def forward(self, x):
        for i in range(1, len(self.cuts) + 1):
            x = getattr(self, f"block{i}")(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class Network(nn.Module):
    def __init__(self, backbone: nn.Module, num_outputs: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_features, num_outputs)

    def forward(self, x):
        return self.head(self.backbone(x))

    def new_head(self, num_outputs: int, generator: torch.Generator) -> None:
        """Replace the head with a freshly initialised one (seeded, so reproducible)."""
        self.head = seeded_linear(self.backbone.out_features, num_outputs, generator, self.head.weight.device)


def seeded_linear(in_features: int, out_features: int, generator: torch.Generator,
                  device: torch.device | None = None) -> nn.Linear:
    """A fresh linear layer (every new head: Network.new_head, the standardised probe's) with
    nn.Linear's default distribution, U(-1/sqrt(in), 1/sqrt(in)) for weight then bias, drawn on the
    CPU from `generator` alone: the same numbers on every device, whatever the global RNG holds."""
    layer = nn.Linear(in_features, out_features)
    if device is not None:
        layer = layer.to(device)
    with torch.no_grad():
        bound = 1 / in_features ** 0.5
        layer.weight.copy_(torch.empty_like(layer.weight, device="cpu").uniform_(-bound, bound, generator=generator))
        layer.bias.copy_(torch.empty_like(layer.bias, device="cpu").uniform_(-bound, bound, generator=generator))
    return layer


HEAD = "head."  # parameter-name prefix of the last fully-connected layer: never pruned


# The built-in backbones: the first implementations of the Backbone protocol
# (sslprune.compute.protocol), built through the same door as a config's `_target_`.
def resnet_small(in_channels: int, width: int) -> CifarResNet:
    return CifarResNet(in_channels, [1, 1, 1], [width, 2 * width, 4 * width])


def resnet18_cifar(in_channels: int, width: int) -> CifarResNet:
    return CifarResNet(in_channels, [2, 2, 2, 2], [width, 2 * width, 4 * width, 8 * width])


def resnet50(in_channels: int, width: int) -> TorchvisionBackbone:  # width is torchvision's width_per_group
    return TorchvisionBackbone("resnet50", in_channels, width)


def alexnet(in_channels: int, width: int) -> AlexNet:
    return AlexNet(in_channels, width)


def alexnet_cifar(in_channels: int, width: int) -> AlexNet:
    return AlexNet(in_channels, width, ALEXNET_CIFAR, grid=4)


def vgg19(in_channels: int, width: int) -> VGG:
    return VGG(in_channels, width)


BUILTIN = {name: f"{__name__}.{name}" for name in MODELS}  # model.name -> its import path


def build(cfg: ModelConfig, in_channels: int, num_outputs: int, seed: int) -> Network:
    """Build a network with weights drawn from `seed` alone (independent of global RNG state).

    The backbone comes from `model._target_` (called with in_channels and the node's keyword
    arguments) or from the built-in of `model.name` (with `width`); the head is sslprune's."""
    if cfg._target_ is None and cfg.name not in MODELS:
        raise ConfigError(f"model.name={cfg.name!r} is not one of {', '.join(MODELS)}")
    path, kwargs = (cfg._target_, cfg.kwargs) if cfg._target_ is not None else (BUILTIN[cfg.name], {"width": cfg.width})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = factory.build("model._target_", path, kwargs, in_channels=in_channels)
        if not isinstance(getattr(backbone, "out_features", None), int):
            raise ConfigError(f"model._target_={path} built a {type(backbone).__name__} without an integer "
                              "`out_features` (the size of its penultimate features; docs/extending.md)")
        return Network(backbone, num_outputs)


def weights(net: nn.Module) -> list[str]:
    """The conv and linear weights outside the head, in module (input-to-output) order: what may be pruned."""
    names = []
    for name, module in net.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            pname = f"{name}.weight" if name else "weight"
            if not pname.startswith(HEAD):
                names.append(pname)
    return names


def cut_points(net: nn.Module, model_name: str | None = None) -> "OrderedDict[str, list[str]]":
    """Cut name -> the prunable weights of that layer group, input to output.

    Every weight of `weights(net)` belongs to exactly one cut point. Given `model_name`, the names
    must be config.CUT_POINTS[model_name] (the torch-free list the config is validated against)."""
    backbone = net.backbone
    cuts = getattr(backbone, "cuts", None)
    if cuts is None:
        raise ValueError(f"{type(backbone).__name__} names no cut points: layerwise pruning needs them")
    points = OrderedDict((cut, []) for cut in cuts)
    for name in weights(net):
        inner = name[len("backbone."):]
        owners = [cut for cut, prefixes in cuts.items() if any(inner.startswith(p + ".") for p in prefixes)]
        if len(owners) != 1:
            raise ValueError(f"{name} belongs to {len(owners)} cut points ({owners}); it must belong to one")
        points[owners[0]].append(name)
    if model_name is not None and tuple(points) != CUT_POINTS[model_name]:
        raise ValueError(f"{model_name}'s network has cut points {tuple(points)}, "
                         f"config.CUT_POINTS says {CUT_POINTS[model_name]}")
    return points


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
