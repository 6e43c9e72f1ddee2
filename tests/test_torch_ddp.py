"""DistributedDataParallel with cusparseconv layers: two gloo processes on the CPU.

Each process trains on its own two batch items; the loss is the mean over
items of each item's mean squared error, so DDP's gradient average over the
two processes equals the single-process gradient on the concatenated batch
(four items, batch indices 0..3). After a few SGD steps the parameters of both
runs must agree to float64 rounding.
"""

import datetime
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import cusparseconv.torch as cst  # noqa: E402
from conftest import random_coords  # noqa: E402

WORLD_SIZE = 2
STEPS = 4


class SmallNet(torch.nn.Module):
    """Conv, strided conv, transposed conv back to the input coordinates, head."""

    def __init__(self):
        super().__init__()
        self.enc = cst.SparseConv3d(3, 8, dtype=torch.float64)
        self.down = cst.SparseConv3d(8, 8, 2, stride=2, dtype=torch.float64)
        self.up = cst.SparseConvTranspose3d(8, 8, dtype=torch.float64)
        self.head = cst.SparseLinear(16, 2, dtype=torch.float64)
        self.act = cst.SparseReLU()

    def forward(self, coords, feats):
        x = cst.SparseTensor(coords, feats)
        e = self.act(self.enc(x))
        d = self.up(self.act(self.down(e)))
        return self.head(cst.cat(d, e)).feats


def per_item_loss(out, target, batch_index, n_items):
    """Mean over batch items of each item's mean squared error."""
    squared = ((out - target) ** 2).sum(dim=1)
    sums = torch.zeros(n_items, dtype=out.dtype).index_add_(0, batch_index, squared)
    counts = torch.bincount(batch_index, minlength=n_items).to(out.dtype)
    return (sums / (counts * out.shape[1])).mean()


def train(model, coords, feats, target, n_items):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    batch_index = torch.from_numpy(coords[:, 0].astype(np.int64))
    losses = []
    for _ in range(STEPS):
        loss = per_item_loss(model(coords, feats), target, batch_index, n_items)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _worker(rank, init_file, shards, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        model = SmallNet()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        coords, feats, target = shards[rank]
        train(ddp, coords, torch.from_numpy(feats), torch.from_numpy(target), n_items=2)
        if rank == 0:
            torch.save(model.state_dict(), os.path.join(out_dir, "ddp.pt"))
    finally:
        dist.destroy_process_group()


def make_shards(rng):
    shards = []
    for _ in range(WORLD_SIZE):
        coords = random_coords(rng, 120, 3, n_batch=2, low=-4, high=4)
        feats = rng.standard_normal((120, 3))
        target = rng.standard_normal((120, 2))
        shards.append((coords, feats, target))
    return shards


def test_ddp_two_processes_match_single_process(rng, tmp_path):
    shards = make_shards(rng)
    mp.spawn(_worker, args=(str(tmp_path / "store"), shards, str(tmp_path)),
             nprocs=WORLD_SIZE, join=True)
    ddp_state = torch.load(tmp_path / "ddp.pt")

    # one process, the concatenated batch: shard r's items become 2r and 2r + 1
    coords = np.concatenate([c + np.array([2 * r, 0, 0, 0], dtype=np.int32)
                             for r, (c, _, _) in enumerate(shards)])
    feats = torch.from_numpy(np.concatenate([f for _, f, _ in shards]))
    target = torch.from_numpy(np.concatenate([t for _, _, t in shards]))
    torch.manual_seed(0)
    model = SmallNet()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    losses = train(model, coords, feats, target, n_items=2 * WORLD_SIZE)
    assert losses[-1] < losses[0]
    for name, value in model.state_dict().items():
        assert not torch.equal(value, initial[name]), f"{name} did not train"
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-10, atol=1e-12,
                                   msg=lambda m: f"{name}: {m}")
