"""Reading spec files, bounded: regular files only, at most ``max_bytes``, never blocking.

``lossdsl.load``, ``include`` and every command that reads a ``.loss`` file read through here, so
``/dev/zero``, a FIFO, a directory or a huge file is a diagnostic, never a hang or a MemoryError.
"""

from __future__ import annotations

import os
import stat

#: The largest spec file read, in bytes (1 MiB); ``max_bytes=`` and ``--max-bytes`` change it.
DEFAULT_MAX_BYTES = 1 << 20

# O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused after fstat). O_NOCTTY: a
# terminal device never becomes the controlling one. Neither exists on Windows, nor is needed there.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
_CHUNK = 1 << 16
_open = os.open  # (a seam for tests that refuse a file even to root)


class FileProblem(Exception):
    """Why a file was not read: a diagnostic code, a phrase ("is not a regular file"), and for text
    that is not UTF-8 the byte offset of the first bad byte with the bytes before it."""

    def __init__(self, code: str, problem: str, data: bytes = b"", offset: int | None = None,
                 reason: str | None = None):
        super().__init__(problem)
        self.code, self.problem, self.data, self.offset = code, problem, data, offset
        self.reason = reason  # the system's words, when opening or reading failed

    def position(self) -> tuple[int, int]:
        """(line, column) of the first byte that is not UTF-8, or (1, 1)."""
        if self.offset is None:
            return 1, 1
        line = self.data[: self.offset].count(b"\n") + 1
        column = self.offset - (self.data.rfind(b"\n", 0, self.offset) + 1) + 1
        return line, column


def check_max_bytes(max_bytes: object) -> int:
    """``max_bytes`` as given to ``compile``/``load``: a whole number of bytes, 0 or more."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise TypeError(f"max_bytes takes a whole number of bytes (0 or more), got {max_bytes!r}")
    return max_bytes


def read_text(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES, follow_symlinks: bool = True) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` bytes; ``FileProblem`` otherwise.

    The size is checked before reading (``fstat`` of the opened file) and again while reading,
    since a file can grow, and ``/proc`` files report size 0: at most ``max_bytes + 1`` bytes are read.
    """
    flags = _OPEN_FLAGS | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = _open(path, flags)
    except OSError as exc:
        raise FileProblem("E010", f"cannot be read: {exc.strerror or exc}", reason=exc.strerror or str(exc)) from None
    except (ValueError, UnicodeError):  # a NUL character, or a name the file system cannot encode
        reason = "the name is not a valid file name"
        raise FileProblem("E010", f"cannot be read: {reason}", reason=reason) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileProblem("E010", f"is not a regular file ({_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise FileProblem("E013", f"is {info.st_size:,} bytes, over the limit of {max_bytes:,}")
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise FileProblem("E013", f"is over the limit of {max_bytes:,} bytes")
    except OSError as exc:
        raise FileProblem("E010", f"cannot be read: {exc.strerror or exc}", reason=exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem("E011", "is not valid UTF-8", data, exc.start) from None


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"
