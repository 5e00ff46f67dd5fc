"""SparsyFed (Guastella et al. 2025; code relogu/fl_powerpropagation), as ALGORITHMS.md describes it.

- Powerpropagation: every prunable conv and linear layer computes with W = sign(w)|w|^beta of its
  stored weight w (gradients flow through that map), so a zero weight gets zero gradient and stays
  zero in local training for beta > 1. Init: u from a normal truncated at 2 sigma with std
  sqrt(1/fan_in)/0.8796, w = sign(u)|u|^(1/beta), so W = u at the start.
- Activation sparsity, in training only: a layer whose W has a fraction s_l of zeros keeps, in the
  input saved for its weight gradient, the top (1 - s_l) fraction by magnitude (the forward pass
  and the input gradient use the whole input).
- After local training, every round: global unstructured magnitude pruning of the prunable weights
  to the target density (no ramp). Clients send their nonzero values with their positions; the
  server averages the sparse models with n_k weights and does not prune again, so the downlink can
  be denser than the target: `density_down` records how dense it was, `density_up` what the
  clients sent.

Layers other than conv and linear (an LSTM's, norms, embeddings) train without powerpropagation;
an LSTM's weights are pruned with the rest when the model marks them prunable.
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F
from torch import nn

from .. import fields
from ..errors import UsageError
from ..seeding import torch_gen
from ..sparse import make_mask, n_keep, topk_mask
from ..training import local_train
from .base import Option
from .messages import MessageMethod, prunable_density


def powerprop(w: torch.Tensor, beta: float) -> torch.Tensor:
    return torch.sign(w) * w.abs().pow(beta)


def keep_top(x: torch.Tensor, keep: float) -> torch.Tensor:
    """x with all but its ceil(keep * numel) largest-magnitude entries set to zero (ties kept)."""
    if keep >= 1.0:
        return x
    n = x.numel()
    k = math.ceil(keep * n)
    if k <= 0:
        return torch.zeros_like(x)
    threshold = torch.kthvalue(x.detach().abs().flatten(), n - k + 1).values
    return x * (x.abs() >= threshold)


class _SparseInputLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, keep):
        ctx.save_for_backward(keep_top(x, keep), weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        xs, weight = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        grad_w = g2.t() @ xs.reshape(-1, xs.shape[-1])
        return g @ weight, grad_w, (g2.sum(0) if ctx.has_bias else None), None


class _SparseInputConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, keep, stride, padding, dilation, groups):
        ctx.save_for_backward(keep_top(x, keep), weight)
        ctx.conf = (x.shape, stride, padding, dilation, groups, bias is not None)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g):
        xs, weight = ctx.saved_tensors
        shape, stride, padding, dilation, groups, has_bias = ctx.conf
        grad_x = torch.nn.grad.conv2d_input(shape, weight, g, stride, padding, dilation, groups)
        grad_w = torch.nn.grad.conv2d_weight(xs, weight.shape, g, stride, padding, dilation, groups)
        return grad_x, grad_w, (g.sum((0, 2, 3)) if has_bias else None), None, None, None, None, None


def _linear_forward(self, x):
    w = powerprop(self.weight, self.powerprop_beta)
    if self.training:
        keep = 1.0 - float((w == 0).double().mean())
        return _SparseInputLinear.apply(x, w, self.bias, keep)
    return F.linear(x, w, self.bias)


def _conv2d_forward(self, x):
    w = powerprop(self.weight, self.powerprop_beta)
    if self.training:
        keep = 1.0 - float((w == 0).double().mean())
        return _SparseInputConv2d.apply(x, w, self.bias, keep, self.stride, self.padding, self.dilation,
                                        self.groups)
    return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def powerprop_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


class SparsyFed(MessageMethod):
    name = "sparsyfed"
    summary = "SparsyFed: powerpropagation, activation sparsity, per-round magnitude re-pruning"
    options = {"powerprop_beta": Option(1.25, "powerpropagation exponent, W = sign(w)|w|^beta (>= 1)")}

    def check_config(self, cfg) -> str | None:
        if cfg.powerprop_beta < 1:
            return f"--powerprop-beta must be >= 1 (zero weights stay zero only for beta > 1), got {cfg.powerprop_beta}"
        return None

    def label(self, cfg: dict) -> str:
        return f"sparsyfed (beta={cfg.get('powerprop_beta', 1.25):g})"

    def prepare_model(self, flat, *, cfg) -> None:
        """Powerpropagation's init and forward, on every rank (the server evaluates with them too)."""
        gen = torch_gen(cfg.seed, "powerprop-init")
        for m in powerprop_layers(flat.model):
            if isinstance(m, nn.Conv2d) and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
                raise UsageError("sparsyfed: conv layers with non-zero or named padding are not supported")
            fan_in = m.weight[0].numel()
            std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
            u = torch.empty(m.weight.shape)
            nn.init.trunc_normal_(u, 0.0, std, -2 * std, 2 * std, generator=gen)
            with torch.no_grad():
                m.weight.copy_(torch.sign(u) * u.abs().pow(1.0 / cfg.powerprop_beta))
            m.powerprop_beta = cfg.powerprop_beta
            forward = _linear_forward if isinstance(m, nn.Linear) else _conv2d_forward
            m.forward = types.MethodType(forward, m)

    def downlink(self, srv, r, clients):
        g = srv.global_flat
        nonzero = g != 0
        return {"values": fields.values(g[nonzero]), "index": fields.index(nonzero)}

    def client_update(self, wk, cid, msg, x, y, r):
        flat, cfg = wk.flat, wk.cfg
        w = flat.flat.detach()
        w.zero_()
        w[msg["index"].to(wk.device)] = msg["values"].to(wk.device)
        loss = local_train(flat, x, y, spec=wk.spec, multiplier=None, gen=torch_gen(cfg.seed, "shuffle", cid, r),
                           round_=r)
        kept = topk_mask(w[flat.prunable_idx].abs(), n_keep(cfg.density, flat.n_prunable))
        w.mul_(make_mask(flat, kept).multiplier)
        out = w.cpu()
        nonzero = out != 0
        return {"values": fields.values(out[nonzero]), "index": fields.index(nonzero)}, loss

    def aggregate(self, srv, r, updates, sizes):
        total = sum(sizes.values())
        acc = torch.zeros(srv.global_flat.numel(), dtype=torch.float64)
        up = []
        prunable = srv.flat.prunable_idx.cpu()
        for cid, msg in updates.items():
            acc[msg["index"]] += msg["values"].double() * (sizes[cid] / total)
            up.append(float(msg["index"][prunable].double().mean()))  # what travels is the nonzeros
        down = prunable_density(srv.flat, srv.global_flat)
        srv.global_flat.copy_(acc.float())
        return {"density_up": sum(up) / len(up), "density_down": down}

    def global_kept(self, srv):
        return srv.global_flat[srv.flat.prunable_idx.cpu()] != 0
