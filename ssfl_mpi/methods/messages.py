"""The base of methods that speak in messages of named fields (`fields`), run by `message_rounds`.

Such a method decides, without MPI: what each sampled client receives (`downlink`: one message
shared by all, or one per client), what a client does with it (`client_update`, on a worker), how
the server folds the replies in (`aggregate`), and what per-client state the server keeps between
rounds (`client_state`, checkpointed with the run). Personalized methods also say which model is
each client's own (`personal_vector`).

The server object `srv` that the hooks receive has: s (the rank's Setup), cfg, flat (the model),
global_flat (float32 CPU vector of the global model), store (the ClientStore), mask (shared, if
any). The worker object `wk` has: s, cfg, flat, spec (local training settings), device.
"""

from __future__ import annotations

import numpy as np
import torch

from ..fields import Field
from ..sparse import FlatModel, Mask, dense_mask, make_mask
from .base import MaskContext, Method

Message = dict[str, Field]


class MessageMethod(Method):
    rounds = "messages"

    def find_mask(self, ctx: MaskContext) -> Mask:
        """The shared mask where one exists; dense (no shared mask) by default."""
        return dense_mask(ctx.flat)

    def client_state(self, cfg, flat: FlatModel) -> dict[str, tuple[type, int]]:
        """name -> (dtype, length) of each array the server keeps per client."""
        return {}

    def init_clients(self, srv) -> None:
        """Fill the store before round 1 (it starts as zeros)."""

    def downlink(self, srv, r: int, clients: np.ndarray) -> Message | list[Message]:
        raise NotImplementedError

    def client_update(self, wk, cid: int, msg: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                      r: int) -> tuple[Message, float]:
        """The client's reply and its mean training loss."""
        raise NotImplementedError

    def aggregate(self, srv, r: int, updates: dict[int, dict[str, torch.Tensor]],
                  sizes: dict[int, float]) -> dict:
        """Fold the replies (client-id order, finite ones only) into srv; returns row fields:
        density_up, density_down, and mask_changes where masks change."""
        raise NotImplementedError

    def personal_vector(self, srv, cid: int) -> torch.Tensor | None:
        """Client cid's own model (flat float32), for personalized methods."""
        return None

    def global_kept(self, srv) -> torch.Tensor | None:
        """The prunable weights the global model holds now (for its mask record), if it changes."""
        return None


def load_masked(flat: FlatModel, values: torch.Tensor, kept: torch.Tensor) -> Mask:
    """A client's start: the received values in the model inside the received mask, zeros elsewhere."""
    mask = make_mask(flat, kept.to(flat.flat.device))
    flat.flat.detach().zero_().index_copy_(0, mask.send_idx, values.to(flat.flat.device))
    return mask


def apply_changes(srv, r: int, cid: int, msg: dict[str, torch.Tensor], *, values_on: str = "new") -> tuple[Mask, Mask]:
    """A client that keeps its own mask sent its values and the changed positions of its mask: store
    the new mask; returns (the old mask, the new one). The values' count is checked against the mask
    they were sent on: the new one, or the old one (`values_on="old"`: the mask it trained in)."""
    old = make_mask(srv.flat, srv.store.get("mask", cid).clone())
    new = make_mask(srv.flat, old.kept ^ msg["changes"].to(old.kept.device))
    expected = (new if values_on == "new" else old).payload
    if msg["values"].numel() != expected:
        raise RuntimeError(f"round {r}: client {cid} sent {msg['values'].numel()} values for a mask of {expected}")
    srv.store.put("mask", cid, new.kept)
    return old, new


def prunable_density(flat: FlatModel, vector: torch.Tensor) -> float:
    """Fraction of the prunable weights of a flat vector that are not zero."""
    return float((vector[flat.prunable_idx.cpu()] != 0).double().mean()) if flat.n_prunable else 1.0
