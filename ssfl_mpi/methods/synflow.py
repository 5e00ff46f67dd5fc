"""SynFlow (Tanaka et al. 2020): a shared mask found without data, by iterative synaptic flow.

The network with every parameter made positive is fed one all-ones input; a weight's score is
|dR/dw * w| with R the sum of the output, so a layer's scores conserve the flow through it and
no layer is cut off before the others (layer collapse). The mask shrinks from dense to the
target density over `--synflow-iterations` steps on an exponential schedule (density^(i/n)),
scores recomputed each step, as the authors' pruner does (100 steps, float64, global top-k).
Then FedAvg trains inside the fixed mask, as for SSFL.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from ..errors import RunError
from ..sparse import Mask, make_mask, n_keep, topk_mask
from .base import MaskContext, Method, Option


class SynFlow(Method):
    name = "synflow"
    summary = "SynFlow: a data-free shared mask by iterative synaptic-flow scores (Tanaka et al. 2020)"
    long_setup = True
    options = {"synflow_iterations": Option(100, "pruning steps from dense to the target density (the "
                                                 "authors' 100)", minimum=1)}

    def label(self, cfg: dict) -> str:
        n = cfg.get("synflow_iterations", 100)
        return "synflow" if n == 100 else f"synflow ({n} steps)"

    def find_mask(self, ctx: MaskContext) -> Mask:
        """Scored on the rank of client 0 and shared: float64 sums on other devices or thread counts
        could order ties differently. Sums with zeros from every other rank are exact."""
        flat = ctx.flat
        kept = np.zeros(flat.n_prunable, dtype=np.int64)
        scores = np.zeros(flat.n_prunable, dtype=np.float64)
        if 0 in ctx.clients:
            mask_bits, last = synflow_mask(flat.model, flat.flat.detach(), flat.prunable_idx,
                                           input_shape=ctx.input_shape, density=ctx.density,
                                           iterations=ctx.cfg.synflow_iterations)
            kept[:], scores[:] = mask_bits.cpu().numpy(), last.cpu().numpy()
        ctx.reduce_sum_(kept)
        ctx.reduce_sum_(scores)
        return make_mask(flat, torch.from_numpy(kept > 0), scores=scores.astype(np.float32))

    def mask_scores_attrs(self, cfg) -> dict:
        return {"what": "SynFlow scores |dR/dw * w| of the last pruning step (pruned weights: -1)",
                "iterations": cfg.synflow_iterations}

    def setup_bytes(self, *, n_clients: int, n_prunable: int, mask: Mask) -> tuple[int, int]:
        """No data is scored: the server finds the mask and sends each client its bitmap."""
        return 0, n_clients * ((n_prunable + 7) // 8)


@torch.no_grad()
def _set(params: list[nn.Parameter], vector: torch.Tensor) -> None:
    vector_to_parameters(vector, params)


def synflow_mask(model: nn.Module, weights: torch.Tensor, prunable_idx: torch.Tensor, *, input_shape: tuple,
                 density: float, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, scores of the last step) over the prunable weights; `weights` is the model's flat vector."""
    probe = copy.deepcopy(model).double().eval()
    params = list(probe.parameters())
    positive = weights.double().abs()
    n = prunable_idx.numel()
    kept = torch.ones(n, dtype=torch.bool, device=weights.device)
    embeds = any(isinstance(m, nn.Embedding) for m in probe.modules())
    x = torch.ones((1, *input_shape), dtype=torch.int64 if embeds else torch.float64, device=weights.device)
    scores = torch.zeros(n, dtype=torch.float64, device=weights.device)
    for i in range(1, iterations + 1):
        w = positive.clone()
        w[prunable_idx] *= kept
        _set(params, w)
        for p in params:
            p.grad = None
        probe(x).sum().backward()
        grad = parameters_to_vector([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
        scores = (grad * w)[prunable_idx].abs()
        if not torch.isfinite(scores).all():
            raise RunError("SynFlow scores overflowed float64 (a very deep or wide model): use fewer layers "
                           "or another method")
        scores[~kept] = -1.0  # a pruned weight never comes back
        kept = topk_mask(scores, n_keep(density ** (i / iterations), n))
    return kept, scores
