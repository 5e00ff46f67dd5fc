"""The paper's baselines (DisPFL, SparsyFed) and Top-K, their message format and the method registry,
checked in-process against hand-computed answers and invariants."""

import math

import numpy as np
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ssfl_mpi import fields
from ssfl_mpi.config import Config
from ssfl_mpi.errors import UsageError
from ssfl_mpi.methods import get, names, registry
from ssfl_mpi.methods.dispfl import DisPFL, holder_average
from ssfl_mpi.methods.sparsyfed import (_SparseInputConv2d, _SparseInputLinear, keep_top, powerprop,
                                        powerprop_layers)
from ssfl_mpi.models import build
from ssfl_mpi.sparse import FlatModel, make_mask, n_keep
from ssfl_mpi.training import LocalSpec, local_train


def cnn_flat(seed=0):
    return FlatModel(build("cnn", dataset="digits", input_shape=(1, 8, 8), n_classes=10, seed=seed))


def data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


SPEC = LocalSpec(epochs=1, batch_size=8, lr=0.1, grad_clip=10.0)


def worker(flat, **cfg):
    return SimpleNamespace(flat=flat, cfg=Config(**cfg), spec=SPEC, device=torch.device("cpu"))


# --- the message format ---------------------------------------------------------------

def test_fields_round_trip_and_count_traffic_without_client_state():
    vals = torch.arange(10, dtype=torch.float32)
    dense_idx = torch.zeros(100, dtype=torch.bool)
    dense_idx[::2] = True  # 50 of 100: a 13-byte bitmap
    sparse_idx = torch.zeros(1000, dtype=torch.bool)
    sparse_idx[[3, 500]] = True  # 2 of 1000: 8 bytes of positions beat a 125-byte bitmap
    residual = torch.ones(7)
    msg = {"values": fields.values(vals), "a": fields.index(dense_idx), "b": fields.index(sparse_idx),
           "residual": fields.state(residual)}
    buf = fields.encode(msg)
    out = fields.decode(buf)
    assert torch.equal(out["values"], vals) and torch.equal(out["a"], dense_idx)
    assert torch.equal(out["b"], sparse_idx) and torch.equal(out["residual"], residual)
    t = fields.Traffic()
    t.add(buf, times=3)
    per = fields.TOP + (40 + 40) + (40 + 13 + 3) + (40 + 8)  # headers, payloads, padding to 8
    assert (t.total, t.values, t.bitmap, t.positions) == (3 * per, 3 * 40, 3, 3)
    assert buf.size == per + 40 + 28 + 4  # the state field travels but is not counted


@pytest.mark.parametrize("damage", ["truncate", "bad_version", "bad_length"])
def test_damaged_messages_are_refused(damage):
    buf = fields.encode({"values": fields.values(torch.ones(4))})
    if damage == "truncate":
        buf = buf[:-4]
    elif damage == "bad_version":
        buf = buf.copy()
        buf[4] = 9
    else:
        buf = buf.copy()
        buf[fields.TOP + 24] = 5  # length 5 floats in 16 bytes
    with pytest.raises(ValueError):
        fields.decode(buf)


# --- Top-K ------------------------------------------------------------------------------

@pytest.mark.parametrize("feedback", [False, True])
def test_topk_sends_exactly_k_and_the_residual_is_what_it_did_not_send(feedback):
    flat = cnn_flat()
    wk = worker(flat, method="topk", sparsity=0.9, error_feedback=feedback)
    start = flat.flat.detach().clone()
    old = torch.randn(flat.numel) * 1e-3
    msg = {"values": start.clone()}
    if feedback:
        msg["residual"] = old.clone()
    x, y = data()
    reply, loss = get("topk").client_update(wk, 3, msg, x, y, r=1)
    delta = flat.flat.detach() - start + (old if feedback else 0)
    sent = reply["index"].data
    k = n_keep(0.1, flat.numel)
    assert int(sent.sum()) == k and math.isfinite(loss)
    assert torch.equal(reply["values"].data, delta[sent])
    assert delta[sent].abs().min() >= delta[~sent].abs().max()  # the k largest
    if feedback:
        residual = reply["residual"].data
        assert reply["residual"].role == "state"
        assert torch.equal(residual[~sent], delta[~sent]) and not residual[sent].any()
    else:
        assert "residual" not in reply


def test_topk_server_adds_the_size_weighted_mean_of_the_sparse_updates():
    flat = cnn_flat()
    n = flat.numel
    srv = SimpleNamespace(cfg=Config(method="topk", sparsity=0.5), global_flat=torch.zeros(n), store=None)
    a, b = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    a[[0, 1]], b[[1, 2]] = True, True
    updates = {0: {"index": a, "values": torch.tensor([1.0, 2.0])},
               5: {"index": b, "values": torch.tensor([4.0, 8.0])}}
    get("topk").aggregate(srv, 1, updates, {0: 1.0, 5: 3.0})
    assert srv.global_flat[:4].tolist() == [0.25, 0.5 + 3.0, 6.0, 0.0]


# --- SparsyFed --------------------------------------------------------------------------

def test_sparsyfed_init_makes_the_effective_weights_the_truncated_normal():
    flat = cnn_flat()
    get("sparsyfed").prepare_model(flat, cfg=Config(method="sparsyfed", powerprop_beta=2.0))
    for m in powerprop_layers(flat.model):
        w_eff = powerprop(m.weight.detach(), 2.0)
        sigma = math.sqrt(1 / m.weight[0].numel()) / 0.87962566103423978
        assert w_eff.abs().max() <= 2 * sigma + 1e-6
        if w_eff.numel() > 5000:  # a 2-sigma truncated normal of scale sigma has std 0.8796 sigma
            assert abs(float(w_eff.std()) / (0.87962566103423978 * sigma) - 1) < 0.05


def test_sparsyfed_zero_weights_stay_zero_in_local_training():
    flat = cnn_flat()
    get("sparsyfed").prepare_model(flat, cfg=Config(method="sparsyfed"))
    kept = torch.rand(flat.n_prunable, generator=torch.Generator().manual_seed(1)) < 0.3
    flat.flat.detach().mul_(make_mask(flat, kept).multiplier)
    x, y = data()
    local_train(flat, x, y, spec=SPEC, multiplier=None, gen=torch.Generator().manual_seed(0))
    w = flat.flat.detach()[flat.prunable_idx]
    assert not w[~kept].any()  # no mask was applied: powerpropagation's zero gradient did it
    assert (w[kept] != 0).float().mean() > 0.99


def test_activation_sparse_layers_give_autograds_gradients_and_sparsify_only_the_weight_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 6, 6, generator=g, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(5, generator=g, requires_grad=True)
    ref = torch.autograd.grad(F.conv2d(x, w, b, 1, 1).square().sum(), (x, w, b))
    got = torch.autograd.grad(_SparseInputConv2d.apply(x, w, b, 1.0, (1, 1), (1, 1), (1, 1), 1).square().sum(),
                              (x, w, b))
    for r, o in zip(ref, got):
        assert torch.allclose(r, o, atol=1e-5)
    xs = keep_top(x.detach(), 0.25)
    assert int((xs != 0).sum()) == math.ceil(0.25 * x.numel())
    out = F.conv2d(x, w, b, 1, 1)
    gw_sparse = torch.autograd.grad(F.conv2d(xs, w, b, 1, 1), w, torch.ones_like(out))[0]
    got = torch.autograd.grad(_SparseInputConv2d.apply(x, w, b, 0.25, (1, 1), (1, 1), (1, 1), 1), (x, w),
                              torch.ones_like(out))
    assert torch.allclose(got[1], gw_sparse, atol=1e-5)  # weight gradient from the sparse input
    assert torch.allclose(got[0], torch.autograd.grad(out, x, torch.ones_like(out))[0], atol=1e-5)
    xl = torch.randn(6, 7, generator=g, requires_grad=True)
    wl = torch.randn(3, 7, generator=g, requires_grad=True)
    ref = torch.autograd.grad(F.linear(xl, wl).square().sum(), (xl, wl))
    got = torch.autograd.grad(_SparseInputLinear.apply(xl, wl, None, 1.0).square().sum(), (xl, wl))
    assert all(torch.allclose(r, o, atol=1e-5) for r, o in zip(ref, got))


def test_sparsyfed_client_prunes_to_the_target_and_the_server_does_not():
    flat = cnn_flat()
    cfg = dict(method="sparsyfed", sparsity=0.8)
    get("sparsyfed").prepare_model(flat, cfg=Config(**cfg))
    wk = worker(flat, **cfg)
    g = flat.flat.detach().clone()
    x, y = data()
    replies = []
    for cid in (0, 1):
        msg = fields.decode(fields.encode(get("sparsyfed").downlink(SimpleNamespace(global_flat=g), 1, [cid])))
        reply, _ = get("sparsyfed").client_update(wk, cid, msg, x[cid * 20:(cid + 1) * 20], y[cid * 20:(cid + 1) * 20], 1)
        replies.append(fields.decode(fields.encode(reply)))
    k = n_keep(0.2, flat.n_prunable)
    for rep in replies:
        dense = torch.zeros(flat.numel)
        dense[rep["index"]] = rep["values"]
        assert int((dense[flat.prunable_idx] != 0).sum()) == k
    srv = SimpleNamespace(flat=flat, global_flat=g.clone())
    row = get("sparsyfed").aggregate(srv, 1, {0: replies[0], 1: replies[1]}, {0: 1.0, 1: 1.0})
    assert row["density_up"] == pytest.approx(k / flat.n_prunable)
    union = float((srv.global_flat[flat.prunable_idx] != 0).double().mean())
    assert union > 0.2  # two different masks averaged: denser than the target, not pruned again
    assert row["density_down"] == 1.0  # the dense initial model went down


# --- DisPFL -----------------------------------------------------------------------------

def test_holder_average_is_the_mean_over_the_masks_holding_each_coordinate():
    flat = cnn_flat()
    n, p = flat.numel, flat.prunable_idx
    m1, m2 = torch.zeros(flat.n_prunable, dtype=torch.bool), torch.zeros(flat.n_prunable, dtype=torch.bool)
    m1[[0, 1]], m2[[1]] = True, True
    w1, w2 = torch.zeros(n), torch.zeros(n)
    w1[p[0]], w1[p[1]], w2[p[1]] = 2.0, 4.0, 8.0
    dense = flat.dense_idx[0]
    w1[dense], w2[dense] = 1.0, 3.0
    avg = holder_average(flat, [w1, w2], [m1, m2])
    assert avg[p[0]] == 2.0 and avg[p[1]] == 6.0 and avg[dense] == 2.0 and not avg[p[2:]].any()


def test_dispfl_prune_and_regrow_per_tensor_keeps_each_layers_count():
    flat = cnn_flat()
    cfg = Config(method="dispfl", sparsity=0.5, readjust_ratio=0.5, rounds=10)
    k = n_keep(0.5, flat.n_prunable)
    from ssfl_mpi.masks import random_mask
    old = random_mask(flat.prunable_shapes(), k, "erk", torch.Generator().manual_seed(0))
    flat.flat.detach().mul_(make_mask(flat, old).multiplier)
    x, y = data()
    rate = DisPFL.prune_rate(2, rounds=10, a=0.5)
    new = DisPFL().prune_regrow(flat, old, x, y, cid=0, r=2, cfg=cfg)
    lo = 0
    for _, size in flat.prunable_layers():
        seg = slice(lo, lo + size)
        lo += size
        nnz = int(old[seg].sum())
        assert int(new[seg].sum()) == nnz  # pruned as many as regrown
        assert int((old[seg] & ~new[seg]).sum()) <= math.ceil(rate * nnz)
    assert (new != old).any()
    assert torch.equal(DisPFL().prune_regrow(flat, old, x, y, cid=0, r=10, cfg=cfg), old)  # r_T = 0
    random = DisPFL().prune_regrow(flat, old, x, y, cid=0, r=2, cfg=Config(method="dispfl", regrow="random",
                                                                           readjust_ratio=0.5, rounds=10))
    assert not torch.equal(random, new) and int(random.sum()) == int(old.sum())


def test_dispfl_neighbours_are_distinct_others_plus_self_and_seeded():
    cfg = Config(method="dispfl", clients=20, neighbours=10)
    group = DisPFL().neighbours(cfg, 7, 3)
    assert len(group) == 11 == len(set(group)) and 7 in group
    assert group == DisPFL().neighbours(cfg, 7, 3) and group != DisPFL().neighbours(cfg, 7, 4)
    assert DisPFL().neighbours(Config(method="dispfl", clients=4, clients_per_round=2), 1, 1) == [0, 1, 2, 3]


def _dispfl_reference(flat, cfg, rounds, clients_of, data_of):
    """DisPFL's data flow written out from dispfl_api.py, per layer, with its own state: each client's
    trained weights `w_per`, the mask they were trained in `shared`, its current mask `local`.
    Training and prune-and-regrow are the method's own (tested on their own above)."""
    from ssfl_mpi.masks import random_mask
    from ssfl_mpi.seeding import torch_gen

    init = flat.flat.detach().clone()
    k = n_keep(cfg.density, flat.n_prunable)
    local = [random_mask(flat.prunable_shapes(), k, "erk", torch_gen(cfg.seed, "client-mask", c))
             for c in range(cfg.clients)]
    shared = [m.clone() for m in local]
    w_per = [init * make_mask(flat, m).multiplier for m in local]
    for r in range(1, rounds + 1):
        last_w, last_shared = [w.clone() for w in w_per], [m.clone() for m in shared]
        for c in clients_of(r):
            group = DisPFL().neighbours(cfg, c, r)
            full = []
            for w, m in ((last_w[j], last_shared[j]) for j in group):  # a dense copy of each shared mask
                held = torch.ones(flat.numel, dtype=torch.bool)
                held[flat.prunable_idx] = m
                full.append((w.double(), held.double()))
            count = sum(h for _, h in full)
            total = sum(w for w, _ in full)
            avg = torch.where(count > 0, total / torch.clamp(count, min=1), 0.0).float()
            start = avg * make_mask(flat, local[c]).multiplier  # cut to the current mask only now
            flat.flat.detach().copy_(start)
            x, y = data_of(c)
            local_train(flat, x, y, spec=SPEC, multiplier=make_mask(flat, local[c]).multiplier,
                        gen=torch_gen(cfg.seed, "shuffle", c, r), round_=r)
            trained = flat.flat.detach().clone()
            new = DisPFL().prune_regrow(flat, local[c], x, y, cid=c, r=r, cfg=cfg)
            w_per[c], shared[c], local[c] = trained, local[c].clone(), new
    return w_per, shared, local


def test_dispfl_follows_its_authors_data_flow_bit_for_bit():
    """Three rounds of the method's hooks (downlink, client_update, aggregate) against the data
    flow written out above: every client's weights, shared and current masks are bit-identical."""
    from ssfl_mpi.clientstate import ClientStore

    cfg = Config(method="dispfl", clients=5, clients_per_round=3, neighbours=2, sparsity=0.6, rounds=6,
                 readjust_ratio=0.5, regrow="random")
    xs = {c: data(24, seed=c) for c in range(5)}

    def clients_of(r):
        from ssfl_mpi.seeding import sample_clients
        return [int(c) for c in sample_clients(cfg.seed, r, cfg.clients, cfg.clients_per_round)]

    ref_w, ref_shared, ref_local = _dispfl_reference(cnn_flat(), cfg, 3, clients_of, lambda c: xs[c])
    flat = cnn_flat()
    method = DisPFL()
    srv = SimpleNamespace(cfg=cfg, flat=flat, global_flat=flat.flat.detach().clone(),
                          store=ClientStore(method.client_state(cfg, flat), cfg.clients))
    method.init_clients(srv)
    wk = SimpleNamespace(flat=cnn_flat(), cfg=cfg, spec=SPEC, device=torch.device("cpu"))
    for r in range(1, 4):
        clients = np.array(clients_of(r))
        downs = method.downlink(srv, r, clients)
        replies = {}
        for cid, msg in zip(clients.tolist(), downs):
            decoded = fields.decode(fields.encode(msg))
            reply, _ = method.client_update(wk, cid, decoded, *xs[cid], r)
            replies[cid] = fields.decode(fields.encode(reply))
        method.aggregate(srv, r, replies, {c: 24.0 for c in replies})
    for c in range(5):
        assert torch.equal(srv.store.get("weights", c), ref_w[c]), c
        assert torch.equal(srv.store.get("shared", c), ref_shared[c]), c
        assert torch.equal(srv.store.get("mask", c), ref_local[c]), c
    # a regrown weight starts from the neighbours' trained values, not from a held zero
    assert any(not torch.equal(ref_shared[c], ref_local[c]) for c in range(5))


# --- LotteryFL -------------------------------------------------------------------------

def test_lotteryfl_prunes_ten_percent_rewinds_and_stops_at_the_floor(monkeypatch):
    import ssfl_mpi.methods.lotteryfl as lottery

    flat = cnn_flat()
    method = lottery.LotteryFL()
    method.prepare_model(flat, cfg=Config(method="lotteryfl"))
    initial = flat.flat.detach().clone()
    wk = worker(flat, method="lotteryfl", sparsity=0.5)
    x, y = data()
    monkeypatch.setattr(lottery, "ACC_THRESHOLD", -1.0)  # any accuracy qualifies
    dense = torch.ones(flat.n_prunable, dtype=torch.bool)
    trained = initial + 0.01  # the global model it receives
    reply, _ = method.client_update(wk, 0, {"values": trained.clone(), "mask": dense}, x, y, 1)
    changes = reply["changes"].data
    assert int(changes.sum()) == math.ceil(0.1 * flat.n_prunable)
    pruned = torch.nonzero(changes).flatten()
    survivors = torch.nonzero(~changes).flatten()
    assert trained[flat.prunable_idx][pruned].abs().max() <= trained[flat.prunable_idx][survivors].abs().min()
    floor = n_keep(0.5, flat.n_prunable)
    at_floor = torch.zeros(flat.n_prunable, dtype=torch.bool)
    at_floor[:floor] = True
    reply, _ = method.client_update(wk, 0, {"values": trained[make_mask(flat, at_floor).send_idx], "mask": at_floor},
                                    x, y, 1)
    assert not reply["changes"].data.any()
    # the rewind: with no training steps the survivors are back at their initial values
    wk0 = SimpleNamespace(**{**vars(wk), "spec": LocalSpec(epochs=0, batch_size=8, lr=0.1)})
    reply, _ = method.client_update(wk0, 0, {"values": trained.clone(), "mask": dense}, x, y, 1)
    kept = make_mask(flat, ~reply["changes"].data)
    assert torch.equal(reply["values"].data, initial[kept.send_idx])


# --- the registry -----------------------------------------------------------------------

def test_every_list_of_method_names_is_the_registrys():
    from ssfl_mpi.cli import build_parser

    assert len(names()) == len(set(names())) and {"ssfl", "dispfl", "sparsyfed", "topk"} <= set(names())
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    choices = next(a.choices for a in run._actions if a.dest == "method")
    assert tuple(choices) == names()
    for name in names():
        Config(method=name)
        assert get(name).label({**Config(method=name).to_dict()})
    with pytest.raises(UsageError, match="unknown value 'nope'"):
        Config(method="nope")


def test_a_static_method_in_one_new_file_is_everywhere(tmp_path):
    """One file in the methods package (here on its search path) and nothing else edited."""
    (tmp_path / "mymethod.py").write_text(textwrap.dedent('''
        from ssfl_mpi.masks import magnitude_mask
        from ssfl_mpi.methods.base import Method, Option
        from ssfl_mpi.sparse import make_mask

        class SmallestFirst(Method):
            name = "smallest-first"
            summary = "keeps the smallest |w| (a test method)"
            options = {"smallest_margin": Option(3, "a setting of its own", minimum=1)}

            def find_mask(self, ctx):
                return make_mask(ctx.flat, ~magnitude_mask(ctx.flat.flat.detach()[ctx.flat.prunable_idx],
                                                           ctx.flat.n_prunable - ctx.k))
    '''))
    code = textwrap.dedent(f'''
        import sys
        import ssfl_mpi.methods as m
        m.__path__.append({str(tmp_path)!r})
        from ssfl_mpi.config import Config
        from ssfl_mpi.cli import main
        from ssfl_mpi.errors import UsageError
        assert Config(method="smallest-first").smallest_margin == 3
        try:
            Config(method="smallest-first", smallest_margin=0)
            sys.exit("a bad value of the method's own option was accepted")
        except UsageError as exc:
            assert "--smallest-margin must be >= 1" in str(exc), exc
        sys.exit(main(sys.argv[1:]))
    ''')
    for args, expect in ((["presets"], "smallest-first"), (["run", "--help"], "smallest-first"),
                         (["run", "--help"], "--smallest-margin")):
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert expect in proc.stdout


def test_registry_refuses_a_name_defined_twice(monkeypatch):
    import ssfl_mpi.methods as m

    import ssfl_mpi.methods.static as static

    class Clash(static.SSFL):
        name = "ssfl"

    Clash.__module__ = "ssfl_mpi.methods.static"
    monkeypatch.setattr(static, "Clash", Clash, raising=False)
    monkeypatch.setattr(m, "_REGISTRY", None)
    with pytest.raises(RuntimeError, match="defined twice"):
        registry()
    monkeypatch.setattr(m, "_REGISTRY", None)


def test_an_option_declared_twice_differently_is_refused(monkeypatch):
    import ssfl_mpi.methods as m
    from ssfl_mpi.methods import options
    from ssfl_mpi.methods.base import Option
    from ssfl_mpi.methods.dispfl import DisPFL

    assert options()["readjust_ratio"][1] == ("dispfl", "feddst")  # one declaration, shared
    monkeypatch.setattr(DisPFL, "options", {**DisPFL.options, "readjust_ratio": Option(0.5, "another default")})
    monkeypatch.setattr(m, "_REGISTRY", None)
    with pytest.raises(RuntimeError, match="declared differently"):
        options()
    monkeypatch.setattr(m, "_REGISTRY", None)


def test_a_new_random_stream_needs_no_entry_in_a_list():
    from ssfl_mpi.seeding import PURPOSES, purpose_code

    assert purpose_code("shuffle") == PURPOSES["shuffle"]
    assert purpose_code("neighbours") == 65536 + 1506447011  # CRC-32: fixed forever, like the list
    assert len({purpose_code(p) for p in ("neighbours", "powerprop-init", "regrow")}) == 3


@pytest.mark.parametrize("n,k,encoding", [(1000, 500, fields.BITMAP), (1000, 32, fields.BITMAP),
                                          (1000, 31, fields.POSITIONS), (1001, 3, fields.POSITIONS)])
def test_a_mask_travels_as_the_smaller_of_bitmap_and_positions(n, k, encoding):
    kept = torch.zeros(n, dtype=torch.bool)
    kept[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k]] = True
    buf = fields.encode({"values": fields.values(torch.randn(k + 7)), "mask": fields.index(kept),
                         "importance": fields.extra(torch.ones(5))})
    (e_values, e_mask, e_extra) = fields.entries(buf)
    assert e_mask.encoding == encoding and torch.equal(fields.decode(buf)["mask"], kept)
    assert buf.size == fields.size({"values": ("values", k + 7), "mask": ("index", (n, k)),
                                    "importance": ("extra", 5)})
    t = fields.Traffic()
    t.add(buf)
    assert t.values == 4 * (k + 7) and t.meta == buf.size - 4 * (k + 7)
