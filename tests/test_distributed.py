"""sslprune.compute.distributed: how the global batch is shared out among ranks, and that every
collective gives on 2 gloo ranks what one process holds (tests/test_ranks.py runs whole stages)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.parametrize("world", [1, 2, 4])
def test_the_shares_of_every_rank_are_the_global_batch_in_order(world):
    from sslprune.compute import distributed

    order = list(range(100, 124))  # an epoch's order of 24 images, global batches of 8
    for i in range(3):
        shares = [order[distributed.share(i, 8, r, world)] for r in range(world)]
        assert sum(shares, []) == order[8 * i:8 * (i + 1)] and {len(s) for s in shares} == {8 // world}


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_test_image_is_one_ranks_and_its_positions_say_which(world):
    from sslprune.compute import distributed

    mine = [list(range(10))[distributed.test_share(r, world)] for r in range(world)]
    assert sorted(sum(mine, [])) == list(range(10))
    for r in range(world):  # positions of the images after the first batch of 2 of this rank's
        assert distributed.test_positions(r, world, 2, len(mine[r]) - 2).tolist() == mine[r][2:]


def test_a_batch_that_does_not_split_evenly_is_refused():
    from sslprune.compute import distributed

    distributed.check_divisible(8, 4)
    with pytest.raises(ValueError, match="^batch size 10 is not divisible by 4 ranks$"):
        distributed.check_divisible(10, 4)


def _max_of(*ranks):
    """An `agree` over ranks that want these values: their elementwise maximum."""
    return lambda _mine: [max(v) for v in zip(*ranks)]


def test_the_earliest_non_finite_step_of_any_rank_is_every_ranks():
    from sslprune.compute import distributed

    total = 100
    # rank 0 saw a NaN at step 7, rank 1 at step 3, rank 2 none and its weights are non-finite
    sent = [[total + 1 - bad if bad >= 0 else 0, int(w)] for bad, w in ((7, False), (3, False), (-1, True))]
    assert distributed.agree_non_finite(_max_of(*sent), 7, False, total) == (3, 1)
    assert distributed.agree_non_finite(_max_of([0, 0], [0, 0]), -1, False, total) == (-1, 0)
    assert distributed.agree_non_finite(_max_of([total + 1, 0]), 0, False, total) == (0, 0)  # step 0 is a step
    assert distributed.agree_non_finite(None, 5, False, total) == (5, False)  # one process: its own


def test_any_ranks_stop_and_rank_0s_clock_are_every_ranks():
    from sslprune.compute import distributed

    assert distributed.agree_stop(_max_of([0, 1], [1, 0]), False, True) == (True, True)
    assert distributed.agree_stop(_max_of([0, 0], [0, 0]), True, True) == (False, False)  # the agreement decides
    assert distributed.agree_stop(None, True, False) == (True, False)


def test_one_process_keeps_its_own_numbers():
    import torch
    from sslprune.compute import distributed

    assert distributed.max_over_ranks([3, 0], 1) == [3, 0] and distributed.from_rank0(5, 1) == 5
    x = torch.arange(6.0).view(3, 2)
    assert distributed.gather_test_rows(x) is x and distributed.gather_rows(x) == (x, 0)
    count = torch.tensor(4)
    assert distributed.gather_batch(x) == (x,) and distributed.global_count(count) == (count, 1)
    assert distributed.sum_over_ranks(torch.tensor(2.5), None) == [2.5, 0.0]


def _two_ranks(rank: int, root: str) -> None:
    import torch
    from sslprune.compute import distributed

    torch.distributed.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=2)
    test = torch.arange(7.0).view(7, 1) * 10  # a test set of 7 rows: rank 0 holds 4, rank 1 holds 3
    mine = test[distributed.test_share(rank, 2)]
    batch = torch.arange(8.0).view(8, 1)  # a global batch of 8: 4 rows a rank
    share = batch[distributed.share(0, 8, rank, 2)].requires_grad_()
    rows, offset = distributed.gather_rows(share)
    (rows * torch.arange(1.0, 9.0).view(8, 1)).sum().backward()  # each rank's loss uses every row
    summed = distributed.differentiable_sum(torch.tensor([float(rank + 1)], requires_grad=True))
    out = {"test": distributed.gather_test_rows(mine).flatten().tolist(),
           "batch": [t.flatten().tolist() for t in distributed.gather_batch(share.detach(), share.detach() * 2)],
           "rows": rows.detach().flatten().tolist(), "offset": offset, "grad": share.grad.flatten().tolist(),
           "sums": distributed.sum_over_ranks(torch.tensor(rank + 0.5), None if rank else torch.tensor(2.0)),
           "count": [float(c) for c in distributed.global_count(torch.tensor(3 + rank))],
           "max": distributed.max_over_ranks([rank, 1 - rank, 0], 2), "rank0": distributed.from_rank0(40 + rank, 2),
           "sum": summed.item()}
    (Path(root) / f"{rank}.json").write_text(json.dumps(out))
    torch.distributed.destroy_process_group()


def test_two_ranks_gather_and_sum_what_one_process_holds(tmp_path):
    import torch

    torch.multiprocessing.start_processes(_two_ranks, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert r0["test"] == r1["test"] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]  # the test set's own order
    assert r0["batch"] == r1["batch"] == [list(map(float, range(8))), [2.0 * i for i in range(8)]]
    assert r0["rows"] == r1["rows"] == list(map(float, range(8))) and (r0["offset"], r1["offset"]) == (0, 4)
    # d(sum over both ranks' losses)/d(row j) = 2 (j + 1), back on the rank that computed row j
    assert r0["grad"] + r1["grad"] == [2.0 * (j + 1) for j in range(8)]
    assert r0["sums"] == r1["sums"] == [2.0, 2.0]  # 0.5 + 1.5; rank 1's missing total counts as 0
    assert r0["count"] == r1["count"] == [7.0, 2.0]
    assert r0["max"] == r1["max"] == [1, 1, 0] and r0["rank0"] == r1["rank0"] == 40
    assert r0["sum"] == r1["sum"] == 3.0
