"""XDR, the External Data Representation (RFC 4506), without I/O.

Every item is a multiple of four bytes, big-endian: ``int`` and ``unsigned int`` are four
bytes, ``hyper`` eight, ``bool`` an int that is 0 or 1, variable-length ``opaque`` and
``string`` a length then the bytes padded with zeros to four, arrays a count then the
items. :class:`Packer` writes them, :class:`Unpacker` reads them and refuses anything that
does not follow the grammar (:class:`XdrError`): a short buffer, non-zero padding, a bool
that is 2, a length beyond the limit the caller gives.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_INT, _UINT = struct.Struct(">i"), struct.Struct(">I")
_HYPER, _UHYPER = struct.Struct(">q"), struct.Struct(">Q")


class XdrError(ValueError):
    """The bytes are not the XDR the caller expected."""


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


class Packer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def bytes(self) -> bytes:
        return b"".join(self.parts)

    def int(self, value: int) -> None:
        if not -(2**31) <= value < 2**31:
            raise XdrError(f"int {value} out of range")
        self.parts.append(_INT.pack(value))

    def uint(self, value: int) -> None:
        if not 0 <= value < 2**32:
            raise XdrError(f"unsigned int {value} out of range")
        self.parts.append(_UINT.pack(value))

    def hyper(self, value: int) -> None:
        if not -(2**63) <= value < 2**63:
            raise XdrError(f"hyper {value} out of range")
        self.parts.append(_HYPER.pack(value))

    def uhyper(self, value: int) -> None:
        if not 0 <= value < 2**64:
            raise XdrError(f"unsigned hyper {value} out of range")
        self.parts.append(_UHYPER.pack(value))

    def bool(self, value: bool) -> None:
        self.parts.append(_INT.pack(1 if value else 0))

    def fixed_opaque(self, data: bytes) -> None:
        self.parts.append(data + b"\0" * _pad(len(data)))

    def opaque(self, data: bytes) -> None:
        self.uint(len(data))
        self.fixed_opaque(data)

    def string(self, text: str) -> None:
        self.opaque(text.encode("utf-8"))

    def array(self, items: list[T], pack: Callable[[T], None]) -> None:
        self.uint(len(items))
        for item in items:
            pack(item)

    def optional(self, value: T | None, pack: Callable[[T], None]) -> None:
        self.bool(value is not None)
        if value is not None:
            pack(value)


class Unpacker:
    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data, self.pos = data, offset

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise XdrError(
                f"needs {n} bytes at offset {self.pos}, {len(self.data) - self.pos} left"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    @property
    def done(self) -> bool:
        return self.pos == len(self.data)

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    def int(self) -> int:
        return _INT.unpack(self._take(4))[0]

    def uint(self) -> int:
        return _UINT.unpack(self._take(4))[0]

    def hyper(self) -> int:
        return _HYPER.unpack(self._take(8))[0]

    def uhyper(self) -> int:
        return _UHYPER.unpack(self._take(8))[0]

    def bool(self) -> bool:
        value = self.int()
        if value not in (0, 1):
            raise XdrError(f"bool {value} is neither 0 nor 1")
        return value == 1

    def fixed_opaque(self, n: int) -> bytes:
        data = self._take(n)
        if self._take(_pad(n)).strip(b"\0"):
            raise XdrError("non-zero padding")
        return data

    def opaque(self, limit: int = 2**31) -> bytes:
        n = self.uint()
        if n > limit:
            raise XdrError(f"opaque of {n} bytes, at most {limit}")
        return self.fixed_opaque(n)

    def string(self, limit: int = 2**31) -> str:
        try:
            return self.opaque(limit).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise XdrError(f"string is not UTF-8: {exc}") from None

    def array(self, unpack: Callable[[], T], limit: int = 2**16) -> list[T]:
        n = self.uint()
        if n > limit:
            raise XdrError(f"array of {n} items, at most {limit}")
        return [unpack() for _ in range(n)]

    def optional(self, unpack: Callable[[], T]) -> T | None:
        return unpack() if self.bool() else None

    def end(self) -> None:
        """The arguments must use every byte: trailing bytes are garbage (GARBAGE_ARGS)."""
        if not self.done:
            raise XdrError(f"{len(self.data) - self.pos} bytes after the last item")
