# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""AlignedRecordFile: aligned records, the same bytes with and without O_DIRECT."""

import errno
import io
import os

import pytest
import torch

from megatron.minimax.checkpoint import aligned_record_file
from megatron.minimax.checkpoint.aligned_record_file import ALIGNMENT, AlignedRecordFile

STAGING = 2 * ALIGNMENT


def _payloads():
    # Sizes around the alignment and the (small) staging buffer, including a record spanning
    # several staging buffers and an empty one.
    sizes = [1, ALIGNMENT - 1, ALIGNMENT, ALIGNMENT + 1, 0, 3 * STAGING + 17, STAGING]
    return [bytes((7 * i + size) % 251 for i in range(size)) for size in sizes]


def _write(path, direct, payloads):
    records = []
    with AlignedRecordFile(path, direct=direct, staging_bytes=STAGING) as f:
        for payload in payloads:
            # Several writes per record, as torch.save makes.
            f.write(payload[:5])
            f.write(memoryview(payload)[5:])
            records.append(f.end_record())
    return records


@pytest.mark.parametrize("direct", [True, False])
def test_records_are_aligned_and_exact(tmp_path, direct):
    payloads = _payloads()
    path = tmp_path / "data.bin"
    records = _write(path, direct, payloads)
    data = path.read_bytes()
    for (offset, length), payload in zip(records, payloads):
        assert offset % ALIGNMENT == 0
        assert length == len(payload)
        assert data[offset : offset + length] == payload
        assert data[offset + length : -(-(offset + length) // ALIGNMENT) * ALIGNMENT].count(0) == (
            -length % ALIGNMENT
        )
    last_offset, last_length = records[-1]
    assert len(data) == last_offset + -(-last_length // ALIGNMENT) * ALIGNMENT


def test_direct_and_buffered_write_the_same_bytes(tmp_path):
    payloads = _payloads()
    assert _write(tmp_path / "a", True, payloads) == _write(tmp_path / "b", False, payloads)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_filesystem_without_o_direct_falls_back(tmp_path, monkeypatch):
    real_open = os.open

    def refuse_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(aligned_record_file.os, "open", refuse_direct)
    payloads = _payloads()
    records = _write(tmp_path / "fallback", True, payloads)
    monkeypatch.undo()
    assert records == _write(tmp_path / "reference", False, payloads)
    assert (tmp_path / "fallback").read_bytes() == (tmp_path / "reference").read_bytes()


def test_filesystem_refusing_o_direct_writes_falls_back(tmp_path, monkeypatch):
    # A filesystem that accepts O_DIRECT at open and refuses the writes (EINVAL), simulated on
    # any filesystem: the open succeeds without the flag, writes to that descriptor fail.
    real_open, real_write = os.open, os.write
    direct_fds, refused = set(), []

    def open_claiming_direct(path, flags, *args):
        fd = real_open(path, flags & ~os.O_DIRECT, *args)
        if flags & os.O_DIRECT:
            direct_fds.add(fd)
        return fd

    def refuse_direct_writes(fd, data):
        if fd in direct_fds:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(aligned_record_file.os, "open", open_claiming_direct)
    monkeypatch.setattr(aligned_record_file.os, "write", refuse_direct_writes)
    payloads = _payloads()
    records = _write(tmp_path / "fallback", True, payloads)
    monkeypatch.undo()
    assert len(refused) == 1  # then the file is written through the page cache
    assert records == _write(tmp_path / "reference", False, payloads)
    assert (tmp_path / "fallback").read_bytes() == (tmp_path / "reference").read_bytes()


def test_torch_save_records_load_back(tmp_path):
    tensors = [torch.arange(n, dtype=torch.bfloat16) for n in (3, 5000, 40000)]
    path = tmp_path / "tensors.bin"
    with AlignedRecordFile(path, staging_bytes=STAGING) as f:
        records = []
        for tensor in tensors:
            torch.save(tensor, f)
            records.append(f.end_record())
    data = path.read_bytes()
    for (offset, length), tensor in zip(records, tensors):
        loaded = torch.load(io.BytesIO(data[offset : offset + length]), weights_only=True)
        assert torch.equal(loaded, tensor)


def test_unfinished_record_is_dropped(tmp_path):
    path = tmp_path / "partial.bin"
    f = AlignedRecordFile(path, staging_bytes=STAGING)
    f.write(b"x" * 10)
    offset, length = f.end_record()
    f.write(b"y" * 100)  # interrupted before end_record
    f.close()
    assert f.closed
    assert path.read_bytes() == b"x" * 10 + bytes(ALIGNMENT - 10)


def test_staging_size_must_be_aligned(tmp_path):
    with pytest.raises(ValueError, match="multiple"):
        AlignedRecordFile(tmp_path / "x", staging_bytes=ALIGNMENT + 1)


def test_large_writes_copied_in_bulk(tmp_path):
    # Writes of 64 KiB and more are copied by numpy (without the GIL), across staging buffers.
    staging = 64 * ALIGNMENT
    payloads = [bytes((i * 31) % 256 for i in range(size)) for size in (100_000, 3 * staging + 5)]
    path = tmp_path / "bulk.bin"
    with AlignedRecordFile(path, staging_bytes=staging) as f:
        records = []
        for payload in payloads:
            f.write(payload)
            records.append(f.end_record())
    data = path.read_bytes()
    for (offset, length), payload in zip(records, payloads):
        assert offset % ALIGNMENT == 0 and data[offset : offset + length] == payload
