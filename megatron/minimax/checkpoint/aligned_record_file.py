# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""An append-only file of records, each starting at a 4 KiB-aligned offset, written with
``O_DIRECT`` where the filesystem allows it.

A converter writes hundreds of GB once and never reads them back. Through the page cache, every
byte is first copied by the kernel into a freshly allocated cache page, which is then written
back and evicted again: on a 2-core VM that copy was half of the converter's CPU time and, with
two threads writing at once, contended so that both ran at half speed. With ``O_DIRECT`` the
device reads the bytes from this process's memory: the CPU only copies them once into a small,
reused staging buffer (the alignment ``O_DIRECT`` needs), and the page cache of the host is left
to the processes that read.

Records are padded with zeros to the alignment, so each starts on an aligned offset; a reader
that knows each record's offset and length (the torch_dist ``.metadata``) never sees the padding.
The bytes written are the same whether or not ``O_DIRECT`` is available (a filesystem that
refuses it at open, such as tmpfs on older kernels, or at the first write, gets ordinary writes
of the same records).
"""

import errno
import mmap
import os
from pathlib import Path
from typing import Optional, Union

import numpy

__all__ = ["ALIGNMENT", "AlignedRecordFile"]

ALIGNMENT = 4096
"""Record and write alignment: a multiple of every block device's logical block size in use."""

STAGING_BYTES = 16 * 1024 * 1024
"""Default staging buffer size: a record larger than this is written in pieces of this size."""

_NUMPY_COPY_BYTES = 64 * 1024


class AlignedRecordFile:
    """Appends records to a new file; for one thread at a time.

    Write a record with any number of :meth:`write` calls (a file-like ``write``, so that
    ``torch.save`` can write into it) and finish it with :meth:`end_record`, which returns the
    record's ``(offset, length)``.

    Args:
        path: the file to create (truncated if it exists).
        direct: try ``O_DIRECT`` (default); if False, or if the filesystem refuses it, the same
            bytes are written through the page cache.
        staging_bytes: staging buffer size, a multiple of :data:`ALIGNMENT`.
    """

    def __init__(
        self, path: Union[str, Path], direct: bool = True, staging_bytes: int = STAGING_BYTES
    ):
        if staging_bytes <= 0 or staging_bytes % ALIGNMENT:
            raise ValueError(f"staging_bytes must be a positive multiple of {ALIGNMENT}")
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        self.direct = False
        self._fd: Optional[int] = None
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self._fd = os.open(self.path, flags | os.O_DIRECT, 0o644)
                self.direct = True
            except OSError:
                self._fd = None
        if self._fd is None:
            self._fd = os.open(self.path, flags, 0o644)
        # Anonymous mmap: page-aligned, as O_DIRECT needs of the memory it writes from.
        self._staging = mmap.mmap(-1, staging_bytes)
        self._staging_bytes = staging_bytes
        self._view = memoryview(self._staging)
        # numpy copies large blocks without holding the GIL (a memoryview assignment holds it),
        # so the converter's other threads run meanwhile.
        self._array = numpy.frombuffer(self._staging, dtype=numpy.uint8)
        self._filled = 0
        """Bytes in the staging buffer, not yet written."""
        self._flushed = 0
        """File offset of the staging buffer's first byte."""
        self._record_start = 0

    @property
    def closed(self) -> bool:
        return self._fd is None

    def tell(self) -> int:
        return self._flushed + self._filled

    def write(self, data) -> int:
        """Appends bytes to the current record (any object with the buffer protocol)."""
        data = memoryview(data).cast("B")
        total = len(data)
        while len(data):
            n = min(len(data), self._staging_bytes - self._filled)
            if n >= _NUMPY_COPY_BYTES:
                numpy.copyto(
                    self._array[self._filled : self._filled + n],
                    numpy.frombuffer(data[:n], dtype=numpy.uint8),
                )
            else:
                self._view[self._filled : self._filled + n] = data[:n]
            self._filled += n
            data = data[n:]
            if self._filled == self._staging_bytes:
                self._write_staging(self._staging_bytes)
        return total

    def flush(self) -> None:
        """No-op: bytes are written by whole aligned blocks (``torch.save`` calls this at the
        end of every record; :meth:`end_record` finishes the record)."""

    def end_record(self):
        """Pads the record to the alignment and writes it out; returns ``(offset, length)``."""
        offset, end = self._record_start, self.tell()
        padded = -(-self._filled // ALIGNMENT) * ALIGNMENT
        self._view[self._filled : padded] = bytes(padded - self._filled)
        self._write_staging(padded)
        self._record_start = self._flushed
        return offset, end - offset

    def _write_staging(self, nbytes: int) -> None:
        view = self._view[:nbytes]
        done = 0
        while done < nbytes:
            try:
                done += os.write(self._fd, view[done:])
            except OSError as e:
                # Some filesystems accept O_DIRECT at open and refuse the writes (EINVAL).
                if not (self.direct and e.errno == errno.EINVAL):
                    raise
                self._reopen_buffered(self._flushed + done)
        self._flushed += nbytes
        self._filled = 0

    def _reopen_buffered(self, position: int) -> None:
        fd = os.open(self.path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        os.lseek(fd, position, os.SEEK_SET)
        os.close(self._fd)
        self._fd, self.direct = fd, False

    def close(self) -> None:
        """Syncs the file to the device and closes it. Bytes of a record that was not ended
        (a write interrupted by an error) are dropped: no record points at them."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
            del self._array
            self._view.release()
            self._staging.close()

    def __enter__(self) -> "AlignedRecordFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
