"""Hessian 2.0 serialization, written here because the protocol is the point.

Follows the Hessian 2.0 grammar and, where the grammar allows several encodings, makes the
choices Caucho's ``Hessian2Output`` makes, so that our bytes equal Java's (the tests compare
with Caucho's own jar):

- int: one byte for -16..47, two for -2048..2047, three for -262144..262143, else ``I``;
- long: likewise from ``xe0``/``xf8``/``x3c``, ``Y`` for the int32 range, else ``L``;
- double: ``x5b``/``x5c`` for 0 and 1, ``x5d``/``x5e`` for small integers, ``x5f`` for values
  that are a whole number of thousandths, else ``D``;
- string: length in UTF-16 code units, each unit in UTF-8 (so a character outside the BMP is
  two 3-byte surrogates, as Java writes it), chunks of 32768 units;
- date: ``x4b`` minutes when whole minutes, else ``J`` milliseconds;
- list, map, object (class definitions once per stream), and back-references ``Q``.

An :class:`Encoder`/:class:`Decoder` keeps class definitions, types and references for a
whole stream (a Dubbo body is several values in one stream). :func:`dumps`/:func:`loads`
do one value.

Python ↔ Java: None/null, bool/boolean, int/int (or long when it does not fit; wrap in
:class:`Long` to force long), float/double, str/String, bytes/binary, list/list, dict/map,
datetime/Date, :class:`JavaObject`/object.
"""

from __future__ import annotations

import datetime as dt
import math
import struct
from dataclasses import dataclass, field
from typing import Any

MAX_DEPTH = 64
STRING_CHUNK = 0x8000
BINARY_CHUNK = 0x8000
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class HessianError(ValueError):
    """Malformed or unsupported Hessian data (or a value that cannot be encoded)."""


@dataclass(frozen=True)
class Long:
    """An int that must travel as a Java long."""

    value: int


@dataclass
class JavaObject:
    """A typed object: Java class name and fields in declaration order."""

    type: str
    fields: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"{self.type}({inner})"


@dataclass
class TypedList:
    """A list with a Java type (``java.util.ArrayList``, ``[int``, ...)."""

    type: str
    items: list[Any]


# -- strings: UTF-16 code units, each written as UTF-8 -----------------------------------
def _utf16_units(text: str) -> str:
    """The string with every non-BMP character split into its surrogate pair."""
    if text.isascii() or all(ord(c) <= 0xFFFF for c in text):
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if code > 0xFFFF:
            code -= 0x10000
            out.append(chr(0xD800 + (code >> 10)))
            out.append(chr(0xDC00 + (code & 0x3FF)))
        else:
            out.append(ch)
    return "".join(out)


def _join_surrogates(units: str) -> str:
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in units):
        return units
    # Pairs become characters; a lone surrogate stays as it is (Java allows them).
    return units.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


class Encoder:
    def __init__(self) -> None:
        self.out = bytearray()
        self._classes: dict[tuple[str, tuple[str, ...]], int] = {}
        self._types: dict[str, int] = {}
        self._refs: dict[int, int] = {}  # id(obj) -> ref number, for lists/maps/objects
        self._alive: list[Any] = []  # keeps referenced objects alive so ids stay unique

    def getvalue(self) -> bytes:
        return bytes(self.out)

    # -- scalars -------------------------------------------------------------------
    def write_int(self, v: int) -> None:
        out = self.out
        if -16 <= v <= 47:
            out.append(0x90 + v)
        elif -2048 <= v <= 2047:
            out += bytes((0xC8 + (v >> 8), v & 0xFF))
        elif -262144 <= v <= 262143:
            out += bytes((0xD4 + (v >> 16), (v >> 8) & 0xFF, v & 0xFF))
        else:
            out.append(0x49)
            out += struct.pack(">i", v)

    def write_long(self, v: int) -> None:
        if not INT64_MIN <= v <= INT64_MAX:
            raise HessianError(f"{v} does not fit in a Java long")
        out = self.out
        if -8 <= v <= 15:
            out.append(0xE0 + v)
        elif -2048 <= v <= 2047:
            out += bytes((0xF8 + (v >> 8), v & 0xFF))
        elif -262144 <= v <= 262143:
            out += bytes((0x3C + (v >> 16), (v >> 8) & 0xFF, v & 0xFF))
        elif INT32_MIN <= v <= INT32_MAX:
            out.append(0x59)
            out += struct.pack(">i", v)
        else:
            out.append(0x4C)
            out += struct.pack(">q", v)

    def write_double(self, v: float) -> None:
        out = self.out
        if not math.isnan(v) and not math.isinf(v):
            whole = int(v)
            if whole == v:
                if whole == 0:
                    out.append(0x5B)
                    return
                if whole == 1:
                    out.append(0x5C)
                    return
                if -128 <= whole <= 127:
                    out += bytes((0x5D, whole & 0xFF))
                    return
                if -32768 <= whole <= 32767:
                    out.append(0x5E)
                    out += struct.pack(">h", whole)
                    return
            scaled = v * 1000
            # Java's (int) cast saturates; beyond int32 no value can pass the check anyway.
            mills = int(scaled) if abs(scaled) < 2**31 else 0
            if mills and 0.001 * mills == v:
                out.append(0x5F)
                out += struct.pack(">i", mills)
                return
        out.append(0x44)
        out += struct.pack(">d", v)

    def write_string(self, text: str) -> None:
        units = _utf16_units(text)
        out = self.out
        n = len(units)
        while n > STRING_CHUNK:
            size = STRING_CHUNK
            if 0xD800 <= ord(units[size - 1]) <= 0xDBFF:
                size -= 1  # never split a surrogate pair across chunks
            out.append(0x52)
            out += struct.pack(">H", size)
            out += units[:size].encode("utf-8", "surrogatepass")
            units, n = units[size:], n - size
        data = units.encode("utf-8", "surrogatepass")
        if n <= 31:
            out.append(n)
        elif n <= 1023:
            out += bytes((0x30 + (n >> 8), n & 0xFF))
        else:
            out.append(0x53)
            out += struct.pack(">H", n)
        out += data

    def write_binary(self, data: bytes) -> None:
        out = self.out
        while len(data) > BINARY_CHUNK:
            out.append(0x41)
            out += struct.pack(">H", BINARY_CHUNK)
            out += data[:BINARY_CHUNK]
            data = data[BINARY_CHUNK:]
        n = len(data)
        if n <= 15:
            out.append(0x20 + n)
        elif n <= 1023:
            out += bytes((0x34 + (n >> 8), n & 0xFF))
        else:
            out.append(0x42)
            out += struct.pack(">H", n)
        out += data

    def write_date(self, when: dt.datetime) -> None:
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        millis = (when - EPOCH) // dt.timedelta(milliseconds=1)
        if millis % 60000 == 0 and INT32_MIN <= millis // 60000 <= INT32_MAX:
            self.out.append(0x4B)
            self.out += struct.pack(">i", millis // 60000)
        else:
            self.out.append(0x4A)
            self.out += struct.pack(">q", millis)

    def write_type(self, name: str) -> None:
        if name in self._types:
            self.write_int(self._types[name])
        else:
            self._types[name] = len(self._types)
            self.write_string(name)

    # -- compound ------------------------------------------------------------------
    def _ref(self, obj: Any) -> bool:
        """Write a back-reference if ``obj`` was written before in this stream."""
        number = self._refs.get(id(obj))
        if number is not None:
            self.out.append(0x51)
            self.write_int(number)
            return True
        self._refs[id(obj)] = len(self._refs)
        self._alive.append(obj)
        return False

    def write(self, value: Any, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise HessianError(f"nested deeper than {MAX_DEPTH}")
        if value is None:
            self.out.append(0x4E)
        elif value is True:
            self.out.append(0x54)
        elif value is False:
            self.out.append(0x46)
        elif isinstance(value, int):
            if INT32_MIN <= value <= INT32_MAX:
                self.write_int(value)
            else:
                self.write_long(value)
        elif isinstance(value, Long):
            self.write_long(value.value)
        elif isinstance(value, float):
            self.write_double(value)
        elif isinstance(value, str):
            self.write_string(value)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            self.write_binary(bytes(value))
        elif isinstance(value, dt.datetime):
            self.write_date(value)
        elif isinstance(value, (list, tuple)):
            if not self._ref(value):
                self._write_list(None, value, depth)
        elif isinstance(value, TypedList):
            if not self._ref(value):
                self._write_list(value.type, value.items, depth)
        elif isinstance(value, dict):
            if not self._ref(value):
                self.out.append(0x48)
                for key, item in value.items():
                    self.write(key, depth + 1)
                    self.write(item, depth + 1)
                self.out.append(0x5A)
        elif isinstance(value, JavaObject):
            if not self._ref(value):
                self._write_object(value, depth)
        else:
            raise HessianError(f"cannot encode {type(value).__name__}")

    def _write_list(self, type_name: str | None, items: Any, depth: int) -> None:
        n = len(items)
        if type_name is None:
            if n <= 7:
                self.out.append(0x78 + n)
            else:
                self.out.append(0x58)
                self.write_int(n)
        else:
            if n <= 7:
                self.out.append(0x70 + n)
                self.write_type(type_name)
            else:
                self.out.append(0x56)
                self.write_type(type_name)
                self.write_int(n)
        for item in items:
            self.write(item, depth + 1)

    def _write_object(self, obj: JavaObject, depth: int) -> None:
        key = (obj.type, tuple(obj.fields))
        index = self._classes.get(key)
        if index is None:
            index = self._classes[key] = len(self._classes)
            self.out.append(0x43)
            self.write_string(obj.type)
            self.write_int(len(obj.fields))
            for name in obj.fields:
                self.write_string(name)
        if index <= 15:
            self.out.append(0x60 + index)
        else:
            self.out.append(0x4F)
            self.write_int(index)
        for value in obj.fields.values():
            self.write(value, depth + 1)


class Decoder:
    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = bytes(data)
        self.pos = 0
        self._classes: list[tuple[str, list[str]]] = []
        self._types: list[str] = []
        self._refs: list[Any] = []

    @property
    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise HessianError(f"truncated: wanted {n} bytes at offset {self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def _byte(self) -> int:
        if self.pos >= len(self.data):
            raise HessianError(f"truncated at offset {self.pos}")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def read_int(self, depth: int = 0) -> int:
        value = self.read(depth)
        if type(value) is not int:
            raise HessianError(f"expected an int, got {type(value).__name__}")
        return value

    def read_string(self, depth: int = 0) -> str:
        value = self.read(depth)
        if not isinstance(value, str):
            raise HessianError(f"expected a string, got {type(value).__name__}")
        return value

    def _utf8_units(self, count: int) -> str:
        """Read ``count`` UTF-16 code units, each as 1-3 bytes of UTF-8."""
        data, start, pos = self.data, self.pos, self.pos
        for _ in range(count):
            if pos >= len(data):
                raise HessianError("truncated string")
            lead = data[pos]
            if lead < 0x80:
                pos += 1
            elif 0xC0 <= lead < 0xE0:
                pos += 2
            elif 0xE0 <= lead < 0xF0:
                pos += 3
            else:
                raise HessianError(f"bad UTF-8 lead byte {lead:#x} in a string")
        if pos > len(data):
            raise HessianError("truncated string")
        self.pos = pos
        try:
            return data[start:pos].decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise HessianError(f"bad UTF-8 in a string: {exc.reason}") from None

    def _string_body(self, tag: int) -> str:
        parts = []
        while True:
            if tag <= 0x1F:
                parts.append(self._utf8_units(tag))
                break
            if 0x30 <= tag <= 0x33:
                parts.append(self._utf8_units(((tag - 0x30) << 8) + self._byte()))
                break
            (n,) = struct.unpack(">H", self._take(2))
            parts.append(self._utf8_units(n))
            if tag == 0x53:
                break
            tag = self._byte()  # after an R chunk comes another string chunk
            if not (tag <= 0x1F or 0x30 <= tag <= 0x33 or tag in (0x52, 0x53)):
                raise HessianError(f"expected a string chunk, got {tag:#x}")
        return _join_surrogates("".join(parts))

    def _binary_body(self, tag: int) -> bytes:
        parts = []
        while True:
            if 0x20 <= tag <= 0x2F:
                parts.append(self._take(tag - 0x20))
                break
            if 0x34 <= tag <= 0x37:
                parts.append(self._take(((tag - 0x34) << 8) + self._byte()))
                break
            (n,) = struct.unpack(">H", self._take(2))
            parts.append(self._take(n))
            if tag == 0x42:
                break
            tag = self._byte()
            if not (0x20 <= tag <= 0x2F or 0x34 <= tag <= 0x37 or tag in (0x41, 0x42)):
                raise HessianError(f"expected a binary chunk, got {tag:#x}")
        return b"".join(parts)

    def _type(self, depth: int = 0) -> str:
        value = self.read(depth)
        if isinstance(value, str):
            self._types.append(value)
            return value
        if type(value) is int and 0 <= value < len(self._types):
            return self._types[value]
        raise HessianError(f"bad type reference {value!r}")

    def _length(self, depth: int = 0) -> int:
        n = self.read_int(depth)
        if n < 0 or n > len(self.data) - self.pos:
            raise HessianError(f"list length {n} is more than the data left")
        return n

    def read(self, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise HessianError(f"nested deeper than {MAX_DEPTH}")
        tag = self._byte()
        # int
        if 0x80 <= tag <= 0xBF:
            return tag - 0x90
        if 0xC0 <= tag <= 0xCF:
            return ((tag - 0xC8) << 8) + self._byte()
        if 0xD0 <= tag <= 0xD7:
            b1, b0 = self._take(2)
            return ((tag - 0xD4) << 16) + (b1 << 8) + b0
        if tag == 0x49:
            return struct.unpack(">i", self._take(4))[0]
        # long
        if 0xD8 <= tag <= 0xEF:
            return tag - 0xE0
        if 0xF0 <= tag <= 0xFF:
            return ((tag - 0xF8) << 8) + self._byte()
        if 0x38 <= tag <= 0x3F:
            b1, b0 = self._take(2)
            return ((tag - 0x3C) << 16) + (b1 << 8) + b0
        if tag == 0x59:
            return struct.unpack(">i", self._take(4))[0]
        if tag == 0x4C:
            return struct.unpack(">q", self._take(8))[0]
        # double
        if tag == 0x5B:
            return 0.0
        if tag == 0x5C:
            return 1.0
        if tag == 0x5D:
            return float(struct.unpack(">b", self._take(1))[0])
        if tag == 0x5E:
            return float(struct.unpack(">h", self._take(2))[0])
        if tag == 0x5F:
            return 0.001 * struct.unpack(">i", self._take(4))[0]
        if tag == 0x44:
            return struct.unpack(">d", self._take(8))[0]
        # null, boolean
        if tag == 0x4E:
            return None
        if tag == 0x54:
            return True
        if tag == 0x46:
            return False
        # string, binary
        if tag <= 0x1F or 0x30 <= tag <= 0x33 or tag in (0x52, 0x53):
            return self._string_body(tag)
        if 0x20 <= tag <= 0x2F or 0x34 <= tag <= 0x37 or tag in (0x41, 0x42):
            return self._binary_body(tag)
        # date
        if tag in (0x4A, 0x4B):
            if tag == 0x4A:
                delta = {"milliseconds": struct.unpack(">q", self._take(8))[0]}
            else:
                delta = {"minutes": struct.unpack(">i", self._take(4))[0]}
            try:
                return EPOCH + dt.timedelta(**delta)
            except OverflowError:
                raise HessianError(f"date out of range: {delta}") from None
        # lists
        if 0x78 <= tag <= 0x7F or tag == 0x58:
            n = tag - 0x78 if tag >= 0x78 else self._length(depth + 1)
            return self._list_items(n, depth)
        if 0x70 <= tag <= 0x77 or tag == 0x56:
            self._type(depth + 1)
            n = tag - 0x70 if tag <= 0x77 else self._length(depth + 1)
            return self._list_items(n, depth)
        if tag in (0x55, 0x57):
            if tag == 0x55:
                self._type(depth + 1)
            items: list[Any] = []
            self._refs.append(items)
            while self._peek() != 0x5A:
                items.append(self.read(depth + 1))
            self.pos += 1
            return items
        # maps
        if tag in (0x48, 0x4D):
            if tag == 0x4D:
                self._type(depth + 1)
            mapping: dict[Any, Any] = {}
            self._refs.append(mapping)
            while self._peek() != 0x5A:
                key = self.read(depth + 1)
                try:
                    mapping[key] = self.read(depth + 1)
                except TypeError:
                    raise HessianError(f"unhashable map key {type(key).__name__}") from None
            self.pos += 1
            return mapping
        # objects
        if tag == 0x43:
            name = self.read_string(depth + 1)
            count = self.read_int(depth + 1)
            if not 0 <= count <= len(self.data) - self.pos:
                raise HessianError(f"class {name} claims {count} fields")
            self._classes.append((name, [self.read_string(depth + 1) for _ in range(count)]))
            return self.read(depth + 1)  # a definition, then its instance
        if 0x60 <= tag <= 0x6F or tag == 0x4F:
            index = tag - 0x60 if tag != 0x4F else self.read_int(depth + 1)
            if not 0 <= index < len(self._classes):
                raise HessianError(f"undefined class reference {index}")
            name, names = self._classes[index]
            obj = JavaObject(name)
            self._refs.append(obj)
            for field_name in names:
                obj.fields[field_name] = self.read(depth + 1)
            return obj
        if tag == 0x51:
            number = self.read_int(depth + 1)
            if not 0 <= number < len(self._refs):
                raise HessianError(f"bad back-reference {number}")
            return self._refs[number]
        raise HessianError(f"unknown tag {tag:#04x} at offset {self.pos - 1}")

    def _list_items(self, n: int, depth: int) -> list[Any]:
        items: list[Any] = []
        self._refs.append(items)
        for _ in range(n):
            items.append(self.read(depth + 1))
        return items

    def _peek(self) -> int:
        if self.pos >= len(self.data):
            raise HessianError("truncated: a list or map has no end")
        return self.data[self.pos]


def dumps(value: Any) -> bytes:
    encoder = Encoder()
    encoder.write(value)
    return encoder.getvalue()


def loads(data: bytes) -> Any:
    decoder = Decoder(data)
    value = decoder.read()
    if not decoder.at_end:
        raise HessianError(f"{len(decoder.data) - decoder.pos} bytes after the value")
    return value
