"""A GGUF file's header (metadata and tensor table), read straight from the format without touching tensor data.

gguf.GGUFReader maps every field and tensor as numpy memmaps: about 8 s for one 150k-token vocabulary on a busy CPU,
which made the export's checks of a Llama-3 / Qwen GGUF take a minute. This reader streams the header (the spec:
magic, version, counts, key / typed value pairs, tensor infos, aligned data start) and summarises or skips arrays.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

# GGUF value types (gguf.GGUFValueType), numbers as struct formats
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFHeaderError(ValueError):
    """The file is not a GGUF file, or its header is truncated / corrupted."""


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (the file stores it reversed)
    ggml_type: int
    offset: int  # absolute byte offset of the data in the file
    nbytes: int


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    data_start: int = 0


_U64 = struct.Struct("<Q")


class _Stream:
    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle, self.size = handle, size

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        raw = self.handle.read(size)
        if len(raw) != size:
            raise GGUFHeaderError("the header ends before its last field: truncated")
        return struct.unpack(fmt, raw)[0]

    def string(self) -> str:
        n = self.take("<Q")
        raw = self.handle.read(n)
        if len(raw) != n:
            raise GGUFHeaderError("a string runs past the end of the file: truncated")
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, n: int) -> None:
        """n strings passed over without reading or decoding them (a 128k-token list: ~0.1 s instead of seconds)."""
        pos, unpack = self.handle.tell(), _U64.unpack_from
        with mmap.mmap(self.handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            for _ in range(n):
                if pos + 8 > self.size:
                    raise GGUFHeaderError("the header ends before its last field: truncated")
                pos += 8 + unpack(view, pos)[0]
        if pos > self.size:
            raise GGUFHeaderError("a string runs past the end of the file: truncated")
        self.handle.seek(pos)

    def value(self, kind: int, arrays: bool) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, n = self.take("<I"), self.take("<Q")
            if item in _SCALARS:
                size = struct.calcsize(_SCALARS[item])
                raw = self.handle.read(n * size)
                if len(raw) != n * size:
                    raise GGUFHeaderError("an array runs past the end of the file: truncated")
                return list(struct.unpack(f"<{n}{_SCALARS[item][1:]}", raw)) if arrays else n
            if item == _STRING and not arrays:
                self.skip_strings(n)
                return n
            values = [self.value(item, arrays) for _ in range(n)]
            return values if arrays else n
        if kind not in _SCALARS:
            raise GGUFHeaderError(f"unknown value type {kind} in the header: corrupted")
        return self.take(_SCALARS[kind])


def read_header(path: str | Path, *, arrays: bool = True) -> GGUFHeader:
    """Metadata and tensor table. arrays=False keeps only the length of every array (token lists, merges, scores)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as handle:
        stream = _Stream(handle, Path(path).stat().st_size)
        if handle.read(4) != b"GGUF":
            raise GGUFHeaderError(f"{Path(path).name} does not start with the GGUF magic bytes")
        header = GGUFHeader(version=stream.take("<I"))
        n_tensors, n_kv = stream.take("<Q"), stream.take("<Q")
        for _ in range(n_kv):
            key = stream.string()
            header.metadata[key] = stream.value(stream.take("<I"), arrays)
        infos = []
        for _ in range(n_tensors):
            name = stream.string()
            dims = tuple(stream.take("<Q") for _ in range(stream.take("<I")))
            infos.append((name, dims, stream.take("<I"), stream.take("<Q")))
        alignment = int(header.metadata.get("general.alignment", 32))
        header.data_start = (handle.tell() + alignment - 1) // alignment * alignment
    for name, dims, kind, offset in infos:
        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError) as exc:
            raise GGUFHeaderError(f"tensor {name} has an unknown type {kind}: corrupted") from exc
        elements = 1
        for d in dims:
            elements *= d
        header.tensors.append(TensorInfo(name, tuple(reversed(dims)), kind, header.data_start + offset, elements // block * size))
    return header
