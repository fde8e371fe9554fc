"""How wide a reduced twin's model can be: cost of a training step, and what the dense network reaches.

`cost`: process time of one SGD step (batch of 8x8 one-channel images, one thread) of each
`name:width` against a width-8 `resnet_small` step measured in the same process and repetition,
printed as a ratio (the twins' 30-minute budget was measured with `resnet_small` width 8).

`dense`: trains the dense network on digits labels for the twins' schedule (`twin_digits`: 30
epochs of 11 updates at batch 128, learning rate /10 at epochs 17, 22, 27, pad-1 random crops) and
prints its test top-1, for `name:width:optimizer:lr[:epochs[:seed]]`. A plain loop, not a stage:
it answers "does this width converge at all" before a 20-minute twin run does.

    python benchmarks/twin_width.py cost vgg19:4 vgg19:6 vgg19:8 alexnet_cifar:4
    python benchmarks/twin_width.py dense vgg19:6:adam:3e-3 vgg19:6:adam:3e-3:30:1
"""
from __future__ import annotations

import sys
import time

import torch
from torch.nn import functional as F

from sslprune.compute import dataset, model as models
from sslprune.control.config import ModelConfig


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


def dense_accuracy(name: str, width: int, optimizer: str, lr: float, epochs: int = 30, seed: int = 0) -> float:
    train, test = dataset.digits()
    norm = lambda images: (images.float() / 255 - 0.3) / 0.4  # the digits loader's mean and std
    xtr, ytr, xte, yte = norm(train.images), train.labels, norm(test.images), test.labels
    torch.manual_seed(seed)
    net = models.build(ModelConfig(name=name, width=width), 1, 10, seed)
    wd = 1e-4 if optimizer == "adam" else 5e-4
    opt = (torch.optim.Adam(net.parameters(), lr=lr, weight_decay=wd) if optimizer == "adam"
           else torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=wd))
    per_epoch = len(ytr) // 128
    steps = [int(epochs * f) * per_epoch for f in (17 / 30, 22 / 30, 27 / 30)]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, steps, 0.1)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(ytr), generator=g)
        for i in range(per_epoch):
            idx = order[i * 128:(i + 1) * 128]
            dx, dy = torch.randint(0, 3, (2,), generator=g).tolist()
            x = F.pad(xtr[idx], (1, 1, 1, 1))[:, :, dy:dy + 8, dx:dx + 8]
            opt.zero_grad()
            F.cross_entropy(net(x), ytr[idx]).backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        return 100 * (net(xte).argmax(1) == yte).float().mean().item()


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in ("cost", "dense"):
        sys.exit(__doc__)
    if argv[0] == "cost":
        torch.set_num_threads(1)
        for rep in range(2):
            ref = step_cost("resnet_small", 8)
            ratios = [f"{spec} x{step_cost(spec.split(':')[0], int(spec.split(':')[1])) / ref:.2f}" for spec in argv[1:]]
            print(f"resnet_small:8 {ref * 1000:.1f} ms |", " | ".join(ratios), flush=True)
    else:
        torch.set_num_threads(2)
        for spec in argv[1:]:
            name, width, optimizer, lr, *rest = spec.split(":")
            args = [int(v) for v in rest]
            print(spec, f"{dense_accuracy(name, int(width), optimizer, float(lr), *args):.1f} %", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
