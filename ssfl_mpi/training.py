"""Local SGD inside a mask on the flat parameter vector, and evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .data import augment_batch
from .lifecycle import alive
from .sparse import FlatModel


@dataclass(frozen=True, kw_only=True)
class LocalSpec:
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # 0: no clipping
    augment: bool = False
    pad_fill: torch.Tensor | None = None  # what augmentation pads with (data.Dataset.pad_fill)
    prox_mu: float = 0.0  # FedProx: mu/2 * ||w - w_global||^2 added to the local loss
    lr_schedule: str = "constant"
    lr_decay: float = 1.0
    lr_period: int = 10
    lr_min: float = 0.0

    def lr_at(self, round_: int, epoch: int) -> float:
        """Step size in local epoch `epoch` (0-based) of federated round `round_` (1-based).

        exp-round is the paper's CIFAR-10 schedule as the reference runs it: lr * decay^round with
        rounds counted from 1 (its loop is range(1, 1000)), so round 1 already uses lr * decay;
        exp-round-shifted starts at lr (decay^(round-1)). cosine-restarts is the CIFAR-100 one:
        CosineAnnealingWarmRestarts stepped per local epoch, restarted with every round's new
        optimizer.
        """
        if self.lr_schedule == "exp-round":
            return self.lr * self.lr_decay ** round_
        if self.lr_schedule == "exp-round-shifted":
            return self.lr * self.lr_decay ** (round_ - 1)
        if self.lr_schedule == "cosine-restarts":
            t = (epoch % self.lr_period) / self.lr_period
            return self.lr_min + (self.lr - self.lr_min) * (1 + math.cos(math.pi * t)) / 2
        return self.lr


def sgd_step(w: torch.Tensor, g: torch.Tensor, multiplier: torch.Tensor | None, buf: torch.Tensor | None,
             spec: LocalSpec, *, lr: float, anchor: torch.Tensor | None = None,
             sizes: list[int] | None = None) -> torch.Tensor | None:
    """torch.optim.SGD after clip_grad_norm_, on one flat vector, with pruned coordinates held at 0.

    The reference does w <- w - lr * (grad(w*m) * m) and re-applies the mask; the gradient is
    masked before clipping so that the norm is that of the trainable weights. `sizes` (the
    parameters' sizes, in order) makes the clipping norm torch's own (the norm of the
    per-parameter norms, as clip_grad_norm_ computes it): bit-identical to the reference's step.
    """
    if multiplier is not None:
        g.mul_(multiplier)
    if spec.prox_mu and anchor is not None:  # zero at pruned weights: both w and anchor are zero there
        g.add_(w - anchor, alpha=spec.prox_mu)
    if spec.grad_clip > 0:  # one client's vector, or one row per client (local_train_batched)
        if g.dim() == 1:
            norm = torch.nn.utils.get_total_norm(list(g.split(sizes or [g.numel()])))
        else:
            norm = torch.linalg.vector_norm(g, dim=1, keepdim=True)
        g.mul_(torch.clamp(spec.grad_clip / (norm + 1e-6), max=1.0))
    if spec.weight_decay:
        g.add_(w, alpha=spec.weight_decay)
    step = g
    if spec.momentum:
        buf = g.clone() if buf is None else buf.mul_(spec.momentum).add_(g)
        step = buf
    w.add_(step, alpha=-lr)
    if multiplier is not None:
        w.mul_(multiplier)
    return buf


def local_train(flat: FlatModel, x: torch.Tensor, y: torch.Tensor, *, spec: LocalSpec,
                multiplier: torch.Tensor | None, gen: torch.Generator, round_: int = 1,
                grad_sq: torch.Tensor | None = None) -> float:
    """Train in place from the current weights; returns the sample-weighted mean training loss.

    grad_sq, if given, accumulates the squared raw gradient of every weight, pruned ones included
    (PruneFL's importance), before the mask or clipping touch it.
    """
    model = flat.model
    model.train()
    device = flat.flat.device
    buf = None
    total, seen = torch.zeros((), dtype=torch.float64, device=device), 0
    w = flat.flat.detach()
    anchor = w.clone() if spec.prox_mu else None
    for epoch in range(spec.epochs):
        lr = spec.lr_at(round_, epoch)
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), spec.batch_size):
            idx = order[i: i + spec.batch_size]
            xb = x[idx]
            if spec.augment:
                xb = augment_batch(xb, gen, fill=spec.pad_fill)
            yb = y[idx].to(device)
            flat.zero_grad()
            loss = F.cross_entropy(model(xb.to(device)), yb)
            loss.backward()
            if grad_sq is not None:
                grad_sq.addcmul_(flat.grad, flat.grad)
            buf = sgd_step(w, flat.grad, multiplier, buf, spec, lr=lr, anchor=anchor, sizes=flat.sizes)
            alive()
            total += loss.detach() * len(idx)  # stays on the device: no sync per step
            seen += len(idx)
    flat.zero_grad()
    return float(total) / max(1, seen)


def local_train_batched(flat: FlatModel, xs: list[torch.Tensor], ys: list[torch.Tensor], *, spec: LocalSpec,
                        multiplier: torch.Tensor | None, gens: list[torch.Generator],
                        round_: int = 1) -> tuple[torch.Tensor, list[float]]:
    """local_train for several clients with the same number of samples, side by side: one
    `torch.func.vmap` over their stacked weights per step (grouped kernels instead of one small
    kernel per client). Each client takes the steps local_train would (its own shuffle and
    augmentation from its own generator, its own clip norm and momentum); the arithmetic differs
    in rounding only. Returns the trained weights [clients, numel] (flat.flat is left as it was)
    and each client's mean training loss."""
    from torch.func import functional_call, grad_and_value, vmap

    n_clients, n = len(ys), len(ys[0])
    if any(len(y) != n for y in ys):
        raise ValueError("local_train_batched: clients of one batch must hold the same number of samples")
    model, device = flat.model, flat.flat.device
    model.train()
    w = flat.flat.detach().unsqueeze(0).repeat(n_clients, 1)
    anchor = w.clone() if spec.prox_mu else None
    x, y = torch.stack(xs), torch.stack(ys)
    rows = torch.arange(n_clients).unsqueeze(1)
    spans = [(name, int(flat.offsets[i]), int(flat.offsets[i + 1]), flat.shapes[i])
             for i, name in enumerate(flat.names)]

    def loss_of(params, xb, yb):
        return F.cross_entropy(functional_call(model, params, (xb,)), yb)

    step = vmap(grad_and_value(loss_of))
    buf, total, seen = None, torch.zeros(n_clients, dtype=torch.float64, device=device), 0
    for epoch in range(spec.epochs):
        lr = spec.lr_at(round_, epoch)
        order = torch.stack([torch.randperm(n, generator=g) for g in gens])
        for i in range(0, n, spec.batch_size):
            idx = order[:, i: i + spec.batch_size]
            xb = x[rows, idx]
            if spec.augment:
                xb = torch.stack([augment_batch(xb[c], gens[c], fill=spec.pad_fill) for c in range(n_clients)])
            params = {name: w[:, lo:hi].view(n_clients, *shape) for name, lo, hi, shape in spans}
            grads, loss = step(params, xb.to(device), y[rows, idx].to(device))
            g = torch.cat([grads[name].reshape(n_clients, -1) for name, *_ in spans], dim=1)
            buf = sgd_step(w, g, multiplier, buf, spec, lr=lr, anchor=anchor)
            alive()
            total += loss.detach() * idx.shape[1]
            seen += idx.shape[1]
    return w, (total / max(1, seen)).tolist()


@torch.no_grad()
def predict(flat: FlatModel, x: torch.Tensor, y: torch.Tensor, *,
            batch_size: int = 1000) -> tuple[torch.Tensor, float]:
    """(per-sample correctness as bool [n] on the CPU, summed cross-entropy) of the current weights."""
    model = flat.model
    model.eval()
    device = flat.flat.device
    correct, loss = [], 0.0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i: i + batch_size].to(device), y[i: i + batch_size].to(device)
        out = model(xb)
        loss += float(F.cross_entropy(out, yb, reduction="sum"))
        alive()
        correct.append((out.argmax(1) == yb).cpu())
    return torch.cat(correct), loss


def evaluate(flat: FlatModel, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1000) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the current weights."""
    correct, loss = predict(flat, x, y, batch_size=batch_size)
    return float(correct.double().mean()), loss / len(y)


def split_accuracy(correct: torch.Tensor, owner: np.ndarray, n_clients: int) -> float:
    """Mean over clients (with a non-empty split) of the accuracy on their own test samples."""
    owner_t = torch.from_numpy(owner)
    hits = torch.bincount(owner_t, weights=correct.double(), minlength=n_clients)
    sizes = torch.bincount(owner_t, minlength=n_clients)
    has = sizes > 0
    return float((hits[has] / sizes[has]).mean())
