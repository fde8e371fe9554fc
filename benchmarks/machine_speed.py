"""How fast this machine computes right now: seconds for one fixed piece of the suite's kind of work.

This project's 2-core VM ran the same tests 1.4x slower at 05:20 than at 04:30 UTC on 2026-12-07,
idle both times (the Figure-5 twin: 6 min 25 s, then 9 min 08 s), so a tier's wall time alone
says little. `.ci/run` prints this before its first tier and after its last; a time measured
there is read against the reference seconds printed beside it (docs/development.md).

The work: 60 SGD steps of the Figure-5 twin's network (`alexnet_cifar` at width 4) on a fixed batch
of 128 digits-sized images, on one thread, after 10 untimed steps; the median and the fastest of
7 repetitions, in seconds (about 6 s in all). Its numbers are not checked, only its time. On
2026-12-07 between 05:42 and 05:43, idle, single repetitions read 0.67 to 1.00 s: the host's
speed changes within seconds, so one reading at each end of a 40-minute run says only roughly how
fast the machine was.

    python benchmarks/machine_speed.py
"""
from __future__ import annotations

import statistics
import time

import torch

from sslprune.compute import model as models
from sslprune.core.schema import ModelConfig


def once(steps: int = 60) -> float:
    torch.manual_seed(0)
    net = models.build(ModelConfig("alexnet_cifar", width=4), 1, 10, 8)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(128, 1, 8, 8), torch.randint(0, 10, (128,))
    for i in range(10 + steps):
        if i == 10:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    times = [once() for _ in range(7)]
    print(f"machine speed: median {statistics.median(times):.2f} s, fastest {min(times):.2f} s for the reference "
          f"work (benchmarks/machine_speed.py, 1 thread; lower is faster)")


if __name__ == "__main__":
    main()
