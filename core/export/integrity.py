"""File-level checks of an export, before anything is loaded: a truncated or corrupted file is named.

- safetensors: the 8-byte header length, the JSON header, and the data section ending exactly at the file end;
- GGUF: the header and tensor table parse, and every tensor's data lies inside the file;
- every artifact's sha256 is recorded in export.json at write time, so a later change is detected.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from core.export.gguf_header import GGUFHeaderError, read_header


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def safetensors_problems(path: str | Path) -> list[str]:
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len <= 0 or 8 + header_len > size:
                return [f"{path.name}: header length {header_len} does not fit in the file ({size} bytes): truncated or not safetensors"]
            header = json.loads(handle.read(header_len))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return [f"{path.name}: unreadable safetensors header ({exc})"]
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    expected = 8 + header_len + (max(ends) if ends else 0)
    if expected != size:
        return [f"{path.name}: the tensors need {expected} bytes but the file has {size}: truncated or padded"]
    return []


def gguf_problems(path: str | Path) -> list[str]:
    path = Path(path)
    size = path.stat().st_size
    try:
        header = read_header(path, arrays=False)
    except (GGUFHeaderError, OSError, UnicodeDecodeError) as exc:
        return [f"{path.name}: not a readable GGUF file, truncated or corrupted ({exc})"]
    problems = []
    for tensor in header.tensors:
        end = tensor.offset + tensor.nbytes
        if end > size:
            problems.append(f"{path.name}: tensor {tensor.name} ends at byte {end} but the file has {size}: truncated")
            break
    if not header.tensors:
        problems.append(f"{path.name}: the GGUF file holds no tensors")
    return problems


def file_problems(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.exists():
        return [f"{path.name}: missing"]
    if path.is_dir():
        return [p for f in sorted(path.glob("*.safetensors")) for p in safetensors_problems(f)]
    if path.suffix == ".gguf":
        return gguf_problems(path)
    if path.suffix == ".safetensors":
        return safetensors_problems(path)
    return []


def folder_digest(path: Path) -> dict[str, str]:
    """sha256 of every file in an artifact folder (or of the one file)."""
    if path.is_file():
        return {path.name: sha256_file(path)}
    return {str(f.relative_to(path)): sha256_file(f) for f in sorted(path.rglob("*")) if f.is_file()}


def digest_problems(path: Path, recorded: dict[str, str]) -> list[str]:
    """Files changed, missing or added since export.json recorded their hashes."""
    if not path.exists():
        return [f"{path.name}: missing"]
    current = folder_digest(path)
    problems = [f"{name}: changed since the export (sha256 differs)" for name, h in recorded.items()
                if name in current and current[name] != h]
    problems += [f"{name}: missing since the export" for name in recorded if name not in current]
    return problems
