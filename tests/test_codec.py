"""The wire format of per-client and changing masks: round trips, the bitmap/indices choice, sizes."""

import numpy as np
import pytest
import torch

from ssfl_mpi import codec


def mask(n, k, seed=0):
    kept = torch.zeros(n, dtype=torch.bool)
    kept[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]] = True
    return kept


@pytest.mark.parametrize("n,k,kind", [(1000, 500, codec.BITMAP), (1000, 32, codec.BITMAP),
                                      (1000, 31, codec.INDICES), (1001, 3, codec.INDICES)])
def test_round_trip_and_the_smaller_encoding(n, k, kind):
    kept = mask(n, k)
    values = torch.randn(k + 7)  # kept weights plus a dense rest of 7
    extra = torch.arange(5, dtype=torch.float32)
    buf = codec.encode(values, kept, extra)
    msg = codec.decode(buf, n_prunable=n)
    assert msg.kind == kind
    assert torch.equal(msg.kept, kept) and torch.equal(msg.values, values) and torch.equal(msg.extra, extra)
    # hand count: 16-byte header + 4 per value + 4 per extra + ceil(n/8) bitmap or 4 per index
    meta = (n + 7) // 8 if kind == codec.BITMAP else 4 * k
    assert buf.size == msg.nbytes == 16 + 4 * (k + 7) + 4 * 5 + meta
    assert buf.size == codec.message_bytes(n_values=k + 7, n_extra=5, kind=kind, n_prunable=n, n_kept=k)


def test_values_only_message_has_no_mask():
    values = torch.randn(12)
    msg = codec.decode(codec.encode(values), n_prunable=40)
    assert msg.kind == codec.KNOWN and msg.kept is None and msg.extra is None
    assert msg.nbytes == 16 + 48


def test_a_message_that_disagrees_with_its_header_is_refused():
    buf = codec.encode(torch.randn(10), mask(64, 10))
    with pytest.raises(ValueError, match="does not match"):
        codec.decode(buf[:-1], n_prunable=64)
    with pytest.raises(ValueError, match="bitmap"):
        codec.decode(buf, n_prunable=128)
    with pytest.raises(ValueError, match="shorter"):
        codec.decode(np.zeros(3, np.uint8), n_prunable=64)
