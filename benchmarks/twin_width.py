"""How wide a reduced twin's model can be: the cost of its training step.

Process time of one SGD step (batch of 8x8 one-channel images, one thread) of each
`name:width` against a width-8 `resnet_small` step measured in the same process and repetition,
printed as a ratio (the twins' 30-minute budget was measured with `resnet_small` width 8).

Whether a width converges is not measured here but by the twin's own level-0 stage
(docs/reproduction.md, Figure-6 findings), e.g.

    sslprune-imp experiment=fig6_cifar10_vgg19_small signal=labels seed=0 level=0 run.threads=1 \
        model.width=6 signals.labels.optim.lr=3e-3 store=/tmp/width

Usage:

    python benchmarks/twin_width.py cost vgg19:4 vgg19:6 vgg19:8 alexnet_cifar:4
"""
from __future__ import annotations

import re
import sys
import time

import torch
from torch.nn import functional as F

from sslprune.core.schema import ModelConfig
from sslprune.compute import model as models


def step_cost(name: str, width: int, batch: int = 128, steps: int = 20) -> float:
    x, y = torch.randn(batch, 1, 8, 8), torch.randint(0, 10, (batch,))
    net = models.build(ModelConfig(name=name, width=width), 1, 10, 0)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for i in range(steps + 3):
        if i == 3:
            start = time.process_time()
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return (time.process_time() - start) / steps


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] != "cost":
        sys.exit(__doc__)
    for spec in argv[1:]:
        if not re.fullmatch(r"\w+:[1-9]\d*", spec):
            sys.exit(f"twin_width.py: model {spec!r} is not name:width (e.g. vgg19:6)")
    torch.set_num_threads(1)
    for rep in range(2):
        ref = step_cost("resnet_small", 8)
        ratios = [f"{spec} x{step_cost(spec.split(':')[0], int(spec.split(':')[1])) / ref:.2f}" for spec in argv[1:]]
        print(f"resnet_small:8 {ref * 1000:.1f} ms |", " | ".join(ratios), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
