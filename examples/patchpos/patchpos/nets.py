"""A tiny plain CNN: `depth` 3x3 conv-BN-ReLU layers, the width doubling at each, a 2x2 max-pool
between them, then a global average pool (the penultimate features)."""
from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, in_channels: int, channels: int = 8, depth: int = 2):
        super().__init__()
        layers, cin = [], in_channels
        for i in range(depth):
            cout = channels * 2 ** i
            layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            if i < depth - 1:
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.out_features = cin  # the Backbone protocol: the size of forward()'s output
        # Layerwise pruning (prune.scope=conv<i>): each conv block, by module-name prefix.
        per = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
        self.cuts = {f"conv{k + 1}": (f"features.{i}",) for k, i in enumerate(per)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)


def tiny_cnn(in_channels: int, channels: int = 8, depth: int = 2) -> TinyCNN:
    """The factory a config names: `model: {_target_: patchpos.nets.tiny_cnn, channels: 8, depth: 2}`."""
    return TinyCNN(in_channels, channels, depth)
