"""`bench plain`: the yardstick for the parallel runs. One process, no MPI, plain PyTorch
(`torch.optim.SGD`, `clip_grad_norm_`), training the same clients of the same rounds one after
another with the same model, partition and local settings, then averaging them by n_k (FedAvg).
Its wall time, start-up included, is what `mpiexec -n C python -m ssfl_mpi run` is compared with."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("ssfl_mpi")


def plain_fedavg(cfg, *, threads: int = 1) -> dict:
    """Times the whole job from inside (imports of this module's dependencies included)."""
    t0 = time.perf_counter()
    import torch
    import torch.nn.functional as F

    from . import data, models
    from .partition import split_for
    from .seeding import sample_clients, torch_gen

    torch.set_num_threads(threads)
    t_import = time.perf_counter() - t0
    ds = data.load(cfg.dataset, root=cfg.data_root, download=False, synthetic_alpha=cfg.synthetic_alpha,
                   synthetic_beta=cfg.synthetic_beta)
    clients = {k: ds.train_subset(p) for k, p in enumerate(split_for(cfg, ds))}
    net = models.build(models.resolve(cfg.model, cfg.dataset), dataset=cfg.dataset, input_shape=ds.input_shape,
                       n_classes=ds.n_classes, seed=0)
    params = list(net.parameters())
    global_w = [p.detach().clone() for p in params]
    t_setup = time.perf_counter() - t0
    steps = 0
    for r in range(1, cfg.rounds + 1):
        acc = [torch.zeros_like(p) for p in params]
        total = 0
        for cid in sample_clients(cfg.seed, r, cfg.clients, cfg.clients_per_round):
            x, y = clients[int(cid)]
            with torch.no_grad():
                for p, g in zip(params, global_w):
                    p.copy_(g)
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            gen = torch_gen(cfg.seed, "shuffle", int(cid), r)
            net.train()
            for _ in range(cfg.local_epochs):
                order = torch.randperm(len(y), generator=gen)
                for i in range(0, len(y), cfg.batch_size):
                    idx = order[i: i + cfg.batch_size]
                    opt.zero_grad()
                    F.cross_entropy(net(x[idx]), y[idx]).backward()
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    opt.step()
                    steps += 1
            for a, p in zip(acc, params):
                a.add_(p.detach(), alpha=len(y))
            total += len(y)
        global_w = [a / total for a in acc]
    with torch.no_grad():
        for p, g in zip(params, global_w):
            p.copy_(g)
        net.eval()
        xt, yt = ds.test_set()
        accuracy = float((net(xt).argmax(1) == yt).double().mean())
    wall = time.perf_counter() - t0
    row = {"wall_s": wall, "imports_s": t_import, "setup_s": t_setup, "steps": steps, "accuracy": accuracy,
           "threads": threads}
    log.info("plain PyTorch FedAvg, %d rounds x %d clients: %.2f s (imports %.2f s, setup to round 1 %.2f s), "
             "%d steps, final accuracy %.4f", cfg.rounds, cfg.clients_per_round, wall, t_import, t_setup, steps,
             accuracy)
    return row
