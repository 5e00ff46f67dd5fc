"""Local SGD inside a mask on the flat parameter vector, and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import augment_batch
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


def sgd_step(w: torch.Tensor, g: torch.Tensor, multiplier: torch.Tensor | None, buf: torch.Tensor | None,
             spec: LocalSpec) -> torch.Tensor | None:
    """torch.optim.SGD after clip_grad_norm_, on one flat vector, with pruned coordinates held at 0.

    The reference does w <- w - lr * (grad(w*m) * m) and re-applies the mask; the gradient is
    masked before clipping so that the norm is that of the trainable weights.
    """
    if multiplier is not None:
        g.mul_(multiplier)
    if spec.grad_clip > 0:
        norm = torch.linalg.vector_norm(g)
        g.mul_(torch.clamp(spec.grad_clip / (norm + 1e-6), max=1.0))
    if spec.weight_decay:
        g.add_(w, alpha=spec.weight_decay)
    step = g
    if spec.momentum:
        buf = g.clone() if buf is None else buf.mul_(spec.momentum).add_(g)
        step = buf
    w.add_(step, alpha=-spec.lr)
    if multiplier is not None:
        w.mul_(multiplier)
    return buf


def local_train(flat: FlatModel, x: torch.Tensor, y: torch.Tensor, *, spec: LocalSpec,
                multiplier: torch.Tensor | None, gen: torch.Generator) -> float:
    """Train in place from the current weights; returns the sample-weighted mean training loss."""
    model = flat.model
    model.train()
    device = flat.flat.device
    buf = None
    total, seen = torch.zeros((), dtype=torch.float64, device=device), 0
    w = flat.flat.detach()
    for _ in range(spec.epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), spec.batch_size):
            idx = order[i: i + spec.batch_size]
            xb = x[idx]
            if spec.augment:
                xb = augment_batch(xb, gen)
            yb = y[idx].to(device)
            flat.zero_grad()
            loss = F.cross_entropy(model(xb.to(device)), yb)
            loss.backward()
            buf = sgd_step(w, flat.grad, multiplier, buf, spec)
            total += loss.detach() * len(idx)  # stays on the device: no sync per step
            seen += len(idx)
    flat.zero_grad()
    return float(total) / max(1, seen)


@torch.no_grad()
def evaluate(flat: FlatModel, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1000) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the current weights."""
    model = flat.model
    model.eval()
    device = flat.flat.device
    correct, loss = 0, 0.0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i: i + batch_size].to(device), y[i: i + batch_size].to(device)
        out = model(xb)
        loss += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    return correct / len(y), loss / len(y)
