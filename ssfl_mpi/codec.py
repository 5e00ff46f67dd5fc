"""Wire format of one client message when masks differ per client or change: values plus mask metadata.

Layout (little-endian, one contiguous uint8 buffer, every field 4-byte aligned):

    header  int32[4]  kind, n_values, n_extra, n_meta_bytes
    values  float32[n_values]   the kept prunable weights and the dense rest, in flat order
    extra   float32[n_extra]    method data, e.g. PruneFL's dense importance scores
    meta    kind 1: bitmap of the prunable vector, np.packbits order (ceil(N/8) bytes)
            kind 2: int32 indices of the kept prunable weights, ascending (4 bytes each)
            kind 0: nothing; the receiver already holds the mask

Whichever of bitmap and indices is smaller for a mask is sent (bitmap on a tie): indices win
below a density of 1/32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

HEADER = 4  # int32 fields
HEADER_BYTES = HEADER * 4
KNOWN, BITMAP, INDICES = 0, 1, 2
KIND_NAMES = {KNOWN: "none", BITMAP: "bitmap", INDICES: "indices"}


def meta_kind(n_prunable: int, n_kept: int) -> int:
    return INDICES if 4 * n_kept < (n_prunable + 7) // 8 else BITMAP


def meta_bytes(kind: int, n_prunable: int, n_kept: int) -> int:
    return {KNOWN: 0, BITMAP: (n_prunable + 7) // 8, INDICES: 4 * n_kept}[kind]


def message_bytes(*, n_values: int, n_extra: int = 0, kind: int = KNOWN, n_prunable: int = 0,
                  n_kept: int = 0) -> int:
    return HEADER_BYTES + 4 * (n_values + n_extra) + meta_bytes(kind, n_prunable, n_kept)


def encode(values: torch.Tensor, kept: torch.Tensor | None = None,
           extra: torch.Tensor | None = None) -> np.ndarray:
    """One message; `kept` (bool over the prunable vector) is sent only when given."""
    vals = values.detach().to("cpu", torch.float32).numpy().ravel()
    ext = np.zeros(0, np.float32) if extra is None else extra.detach().to("cpu", torch.float32).numpy().ravel()
    if kept is None:
        kind, meta = KNOWN, np.zeros(0, np.uint8)
    else:
        k = kept.detach().to("cpu", torch.bool).numpy()
        kind = meta_kind(k.size, int(k.sum()))
        meta = np.packbits(k) if kind == BITMAP else np.flatnonzero(k).astype("<i4").view(np.uint8)
    header = np.array([kind, vals.size, ext.size, meta.size], dtype="<i4")
    return np.concatenate([header.view(np.uint8), vals.astype("<f4").view(np.uint8),
                           ext.astype("<f4").view(np.uint8), meta])


@dataclass
class Message:
    kind: int
    values: torch.Tensor           # float32
    extra: torch.Tensor | None     # float32 or None
    kept: torch.Tensor | None      # bool over the prunable vector, or None (kind 0)
    nbytes: int


def header(buf: np.ndarray) -> tuple[int, int, int, int]:
    """(kind, n_values, n_extra, n_meta_bytes), checked against the message's length."""
    if buf.size < HEADER_BYTES:
        raise ValueError(f"message of {buf.size} bytes is shorter than its {HEADER_BYTES}-byte header")
    kind, n_values, n_extra, n_meta = (int(v) for v in buf[:HEADER_BYTES].view("<i4"))
    expected = HEADER_BYTES + 4 * (n_values + n_extra) + n_meta
    if kind not in KIND_NAMES or min(n_values, n_extra, n_meta) < 0 or buf.size != expected:
        raise ValueError(f"message header (kind {kind}, {n_values} values, {n_extra} extra, {n_meta} meta "
                         f"bytes) does not match its {buf.size} bytes")
    return kind, n_values, n_extra, n_meta


def decode(buf: np.ndarray, *, n_prunable: int) -> Message:
    """Parse one message, checking every length against the header and the model."""
    kind, n_values, n_extra, n_meta = header(buf)
    lo = HEADER_BYTES
    values = torch.from_numpy(buf[lo: lo + 4 * n_values].view("<f4").astype(np.float32))
    lo += 4 * n_values
    extra = torch.from_numpy(buf[lo: lo + 4 * n_extra].view("<f4").astype(np.float32)) if n_extra else None
    lo += 4 * n_extra
    meta = buf[lo:]
    kept = None
    if kind == BITMAP:
        if n_meta != (n_prunable + 7) // 8:
            raise ValueError(f"bitmap of {n_meta} bytes for {n_prunable} prunable weights")
        kept = torch.from_numpy(np.unpackbits(meta, count=n_prunable).astype(bool))
    elif kind == INDICES:
        idx = meta.view("<i4").astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n_prunable or np.any(np.diff(idx) <= 0)):
            raise ValueError("mask indices out of range or not ascending")
        kept = torch.zeros(n_prunable, dtype=torch.bool)
        kept[torch.from_numpy(idx)] = True
    return Message(kind=kind, values=values, extra=extra, kept=kept, nbytes=int(buf.size))
