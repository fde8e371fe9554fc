"""The rewind point of late resetting: its notation (<n>it, <n>ep, <n>sa, <n>%) and its value in
optimizer updates. Both planes need it: the compute plane rewinds to it, the control plane reports
it (the `rewind` column, findings per rewind point)."""
from __future__ import annotations

import math
import re

from .errors import ConfigError

REWIND = re.compile(r"^(\d+(?:\.\d+)?)(it|ep|sa|%)$")


def rewind_steps(rewind: str, steps_per_epoch: int, batch_size: int, total_steps: int) -> int:
    """Convert the rewind point to optimizer updates (k of late resetting)."""
    m = REWIND.match(rewind)
    if not m:
        raise ConfigError(f"prune.rewind={rewind!r} is malformed")
    amount, unit = float(m.group(1)), m.group(2)
    steps = {
        "it": amount,
        "ep": amount * steps_per_epoch,
        "sa": amount / batch_size,
        "%": amount / 100 * total_steps,
    }[unit]
    k = int(math.floor(steps + 1e-9))
    if k > total_steps:
        raise ConfigError(f"prune.rewind={rewind} is {k} updates, beyond the {total_steps} updates of training")
    return k
