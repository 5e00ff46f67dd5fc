"""Random-k update sparsification: k values at seeded positions, the server's sum at the same ones."""

import math
from types import SimpleNamespace

import pytest
import torch

from ssfl_mpi.config import Config
from ssfl_mpi.methods import get
from ssfl_mpi.methods.randomk import RandomK
from ssfl_mpi.models import build
from ssfl_mpi.sparse import FlatModel, n_keep
from ssfl_mpi.training import LocalSpec

SPEC = LocalSpec(epochs=1, batch_size=8, lr=0.1, grad_clip=10.0)


def flat_cnn():
    return FlatModel(build("cnn", dataset="digits", input_shape=(1, 8, 8), n_classes=10, seed=0))


def data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("rescale", [False, True])
def test_a_client_sends_its_update_at_the_seeded_positions_only(rescale):
    flat = flat_cnn()
    n = flat.numel
    k = n_keep(0.1, n)
    cfg = Config(method="random-k", sparsity=0.9, randomk_rescale=rescale)
    wk = SimpleNamespace(flat=flat, cfg=cfg, spec=SPEC, device=torch.device("cpu"))
    start = flat.flat.detach().clone()
    reply, loss = get("random-k").client_update(wk, 3, {"values": start.clone()}, *data(), r=2)
    assert set(reply) == {"values"} and math.isfinite(loss)  # no positions on the wire
    pos = RandomK.positions(0, 3, 2, n=n, k=k)
    delta = flat.flat.detach() - start
    expected = delta[pos] * (n / k if rescale else 1.0)
    assert reply["values"].data.numel() == k and torch.equal(reply["values"].data, expected)
    assert len(set(pos.tolist())) == k and not torch.equal(pos, RandomK.positions(0, 3, 3, n=n, k=k))


def test_the_server_adds_the_size_weighted_mean_at_the_clients_positions():
    n = 50
    cfg = Config(method="random-k", sparsity=0.8)
    k = n_keep(0.2, n)
    srv = SimpleNamespace(cfg=cfg, global_flat=torch.ones(n), store=None)
    vals = {0: torch.arange(1, k + 1, dtype=torch.float32), 4: torch.full((k,), 2.0)}
    row = get("random-k").aggregate(srv, 7, {c: {"values": v} for c, v in vals.items()}, {0: 1.0, 4: 3.0})
    expected = torch.ones(n, dtype=torch.float64)
    for cid, w in ((0, 0.25), (4, 0.75)):
        expected[RandomK.positions(0, cid, 7, n=n, k=k)] += vals[cid].double() * w
    assert torch.equal(srv.global_flat, expected.float())
    assert row == {"density_up": k / n, "density_down": 1.0}


def test_a_reply_of_the_wrong_length_is_refused():
    srv = SimpleNamespace(cfg=Config(method="random-k", sparsity=0.5), global_flat=torch.zeros(10), store=None)
    with pytest.raises(RuntimeError, match="sent 4 values, not k = 5"):
        get("random-k").aggregate(srv, 1, {2: {"values": torch.ones(4)}}, {2: 1.0})
