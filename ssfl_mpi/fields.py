"""Wire format of a message of named fields: what methods on the message protocol send each other.

A message is a dict {name: Field}. Each field has a role that decides how it is counted:

    values  float32 numbers of the model or update: counted in bytes_*, as value bytes
    index   a bool vector (which positions the values belong to, or which mask bits changed):
            counted in bytes_* and meta_bytes_*; sent as a bitmap or as int32 positions,
            whichever is smaller (positions win below a density of 1/32)
    extra   float32 numbers that are not weights (PruneFL's importance): counted in bytes_* and
            meta_bytes_*
    state   a client's own state that a real client would keep at home (its DisPFL mask, its
            error-feedback residual). The simulation keeps all client state on the server (so it
            is checkpointed with the run) and sends it along; it is not traffic and not counted.

Layout (little-endian, one contiguous uint8 buffer):

    int32[2]            number of fields, format version
    per field, in insertion order:
      char[16]          name, ASCII, NUL-padded
      int32             encoding: 1 float32, 2 bitmap, 3 int32 positions
      int32             role: 1 values, 2 index, 3 state, 4 extra
      int64             length: float32 count, or the bool vector's length
      int64             payload bytes, then the payload padded to a multiple of 8
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

VERSION = 1
TOP = 8
FIELD_HEADER = 40
NAME_BYTES = 16
F32, BITMAP, POSITIONS = 1, 2, 3
VALUES, INDEX, STATE, EXTRA = 1, 2, 3, 4
ROLES = {"values": VALUES, "index": INDEX, "state": STATE, "extra": EXTRA}


@dataclass(frozen=True)
class Field:
    role: str   # values, index or state
    data: object  # float32 (values, or state) or bool (index, or state) array / tensor


def values(data) -> Field:
    return Field("values", data)


def index(data) -> Field:
    return Field("index", data)


def state(data) -> Field:
    return Field("state", data)


def extra(data) -> Field:
    return Field("extra", data)


def _pad(n: int) -> int:
    return (-n) % 8


def index_bytes(length: int, n_set: int) -> tuple[int, int]:
    """(encoding, payload bytes) of a bool vector: the smaller of a bitmap and int32 positions."""
    if 4 * n_set < (length + 7) // 8:
        return POSITIONS, 4 * n_set
    return BITMAP, (length + 7) // 8


def size(spec: dict[str, tuple[str, object]]) -> int:
    """Bytes of a message without building it: name -> ("values"|"extra", n floats) or
    ("index", (length, n_set)); state fields are not traffic and are left out."""
    total = TOP
    for role, what in spec.values():
        n = index_bytes(*what)[1] if role == "index" else 4 * int(what)
        total += FIELD_HEADER + n + _pad(n)
    return total


def _np(data) -> np.ndarray:
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    return np.ascontiguousarray(data).ravel()


def encode(fields: dict[str, Field]) -> np.ndarray:
    parts = [np.array([len(fields), VERSION], dtype="<i4").view(np.uint8)]
    for name, f in fields.items():
        raw = name.encode("ascii")
        if len(raw) > NAME_BYTES or f.role not in ROLES:
            raise ValueError(f"field {name!r}: name longer than {NAME_BYTES} bytes or unknown role {f.role!r}")
        a = _np(f.data)
        if a.dtype == bool:
            enc, _ = index_bytes(a.size, int(np.count_nonzero(a)))
            payload = np.flatnonzero(a).astype("<i4").view(np.uint8) if enc == POSITIONS else np.packbits(a)
        else:
            enc, payload = F32, a.astype("<f4", copy=False).view(np.uint8)
        head = np.zeros(FIELD_HEADER, dtype=np.uint8)
        head[:len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        head[16:24] = np.array([enc, ROLES[f.role]], dtype="<i4").view(np.uint8)
        head[24:40] = np.array([a.size, payload.size], dtype="<i8").view(np.uint8)
        parts += [head, payload, np.zeros(_pad(payload.size), dtype=np.uint8)]
    return np.concatenate(parts)


@dataclass(frozen=True)
class Entry:
    name: str
    encoding: int
    role: int
    length: int
    start: int    # payload offset in the buffer
    nbytes: int   # payload bytes (without padding)

    @property
    def span(self) -> int:
        """Bytes of this field in the buffer: header, payload, padding."""
        return FIELD_HEADER + self.nbytes + _pad(self.nbytes)


def entries(buf: np.ndarray) -> list[Entry]:
    """The field table of a message, every length checked against the buffer."""
    if buf.size < TOP:
        raise ValueError(f"message of {buf.size} bytes is shorter than its {TOP}-byte header")
    n, version = (int(v) for v in buf[:TOP].view("<i4"))
    if version != VERSION or not 0 <= n <= 64:
        raise ValueError(f"message header ({n} fields, version {version}) is not of this format")
    out, lo = [], TOP
    for _ in range(n):
        if lo + FIELD_HEADER > buf.size:
            raise ValueError("message ends inside a field header")
        head = buf[lo: lo + FIELD_HEADER]
        name = bytes(head[:16]).rstrip(b"\0").decode("ascii", errors="replace")
        enc, role = (int(v) for v in head[16:24].view("<i4"))
        length, nbytes = (int(v) for v in head[24:40].view("<i8"))
        expected = {F32: 4 * length, BITMAP: (length + 7) // 8}.get(enc, nbytes)
        if enc not in (F32, BITMAP, POSITIONS) or role not in ROLES.values() or length < 0 \
                or nbytes != expected or nbytes % (4 if enc == POSITIONS else 1):
            raise ValueError(f"field {name!r}: encoding {enc}, role {role}, length {length}, {nbytes} bytes "
                             f"do not fit together")
        e = Entry(name, enc, role, length, lo + FIELD_HEADER, nbytes)
        if lo + e.span > buf.size:
            raise ValueError(f"field {name!r} runs past the end of its {buf.size}-byte message")
        out.append(e)
        lo += e.span
    if lo != buf.size:
        raise ValueError(f"message of {buf.size} bytes holds {lo} bytes of fields")
    return out


def decode(buf: np.ndarray) -> dict[str, torch.Tensor]:
    """name -> float32 or bool tensor (on the CPU)."""
    out = {}
    for e in entries(buf):
        payload = buf[e.start: e.start + e.nbytes]
        if e.encoding == F32:
            out[e.name] = torch.from_numpy(payload.view("<f4").astype(np.float32))
        elif e.encoding == BITMAP:
            out[e.name] = torch.from_numpy(np.unpackbits(payload, count=e.length).view(bool))
        else:
            pos = payload.view("<i4").astype(np.int64)
            if pos.size and (pos.min() < 0 or pos.max() >= e.length or np.any(np.diff(pos) <= 0)):
                raise ValueError(f"field {e.name!r}: positions out of range or not ascending")
            kept = torch.zeros(e.length, dtype=torch.bool)
            kept[torch.from_numpy(pos)] = True
            out[e.name] = kept
    return out


@dataclass
class Traffic:
    """What one direction of one round sent, counted from the buffers: state fields excluded."""

    total: int = 0    # bytes: message headers, and every values and index field with its header
    values: int = 0   # of which float32 value payload
    bitmap: int = 0   # index fields sent as a bitmap
    positions: int = 0  # index fields sent as int32 positions

    def add(self, buf: np.ndarray, times: int = 1) -> None:
        total, vals, bitmap, positions = TOP, 0, 0, 0
        for e in entries(buf):
            if e.role == STATE:
                continue
            total += e.span
            if e.role == VALUES:
                vals += e.nbytes
            bitmap += e.encoding == BITMAP
            positions += e.encoding == POSITIONS
        self.total += times * total
        self.values += times * vals
        self.bitmap += times * bitmap
        self.positions += times * positions

    @property
    def meta(self) -> int:
        return self.total - self.values
