"""safetensors headers read without loading any tensor data, and the comparison of what a folder holds with what
a configuration needs.

A safetensors file is: 8 bytes little-endian header length N, N bytes of JSON {name: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {...}}, then the data. Reading the header costs one small read
however large the file is; a file shorter than its header says (an interrupted download) is reported as truncated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from parity.errors import ConfigError, InputFileError
from parity.jsonio import parse_json, read_json

MAX_HEADER = 100 * 2 ** 20  # the format's own limit (100 MB)


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    file: str


def read_header(path: str | Path) -> dict[str, TensorInfo]:
    """{tensor name: TensorInfo} of one safetensors file; InputFileError naming the file when the header is not
    readable or the data is shorter than the header says."""
    path = Path(path)
    entries, _ = header_entries(path)
    return {name: TensorInfo(str(info["dtype"]), tuple(int(d) for d in info["shape"]), path.name)
            for name, info in entries.items()}


def header_entries(path: str | Path) -> tuple[dict[str, dict], int]:
    """({tensor name: its raw header entry}, offset of the data section), checked as `read_header` describes (so a
    tensor's bytes can be read from `offset + data_offsets`)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise InputFileError("not a safetensors file (shorter than 8 bytes)", path)
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER or 8 + n > size:
                raise InputFileError(f"not a safetensors file (header length {n} does not fit the file)", path)
            header = parse_json(f.read(n), path, max_bytes=MAX_HEADER)
    except OSError as exc:
        raise InputFileError(f"cannot read ({exc.strerror or exc})", path) from None
    except (ValueError, UnicodeDecodeError, ConfigError):
        raise InputFileError("not a safetensors file (header is not JSON)", path) from None
    if not isinstance(header, dict):
        raise InputFileError("not a safetensors file (header is not a JSON object)", path)
    out: dict[str, dict] = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            TensorInfo(str(info["dtype"]), tuple(int(d) for d in info["shape"]), path.name)
            end = max(end, int(info["data_offsets"][1]))
            out[name] = info
        except (KeyError, TypeError, ValueError, IndexError):
            raise InputFileError(f"not a safetensors file (bad entry for tensor {name!r})", path) from None
    if 8 + n + end > size:
        raise InputFileError(f"truncated: the header needs {8 + n + end} bytes, the file has {size} "
                             "(an interrupted download?)", path)
    return out, 8 + n


def folder_tensors(folder: Path) -> dict[str, TensorInfo]:
    """All tensors of the *.safetensors files in a folder. With a `*.safetensors.index.json`, every shard it names
    must exist and hold the tensors it maps to (InputFileError otherwise)."""
    found: dict[str, TensorInfo] = {}
    for f in sorted(folder.glob("*.safetensors")):
        found.update(read_header(f))
    for index in folder.glob("*.safetensors.index.json"):
        try:
            weight_map = read_json(index)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError, ConfigError):
            raise InputFileError("unreadable index (no weight_map)", index) from None
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise InputFileError(f"shard {shard} named by the index is missing", index)
        stray = [k for k, shard in weight_map.items() if k not in found or found[k].file != shard]
        if stray:
            raise InputFileError(f"{len(stray)} tensor(s) of the index are not in their shard, e.g. {stray[0]!r}",
                                 index)
    return found


@dataclass
class Completeness:
    """What a component's files hold against what its configuration needs."""

    expected: int
    missing: list[str] = field(default_factory=list)
    wrong_shape: list[str] = field(default_factory=list)   # "name: file (a, b) vs config (c, d)"
    unexpected: list[str] = field(default_factory=list)
    dtypes: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.wrong_shape

    def summary(self, limit: int = 3) -> str:
        if self.complete:
            dt = ", ".join(f"{k} x{v}" for k, v in sorted(self.dtypes.items()))
            extra = f"; {len(self.unexpected)} extra tensor(s) ignored" if self.unexpected else ""
            return f"all {self.expected} tensors present with the configured shapes ({dt}){extra}"
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} of {self.expected} tensors missing, "
                         f"e.g. {', '.join(self.missing[:limit])}")
        if self.wrong_shape:
            parts.append(f"{len(self.wrong_shape)} with the wrong shape, e.g. {'; '.join(self.wrong_shape[:limit])}")
        return "; ".join(parts)


def compare(expected: dict[str, tuple[int, ...]], found: dict[str, TensorInfo]) -> Completeness:
    """Names and shapes a configuration needs vs the tensors found (extra tensors are reported, not failed)."""
    c = Completeness(expected=len(expected))
    for name, shape in expected.items():
        info = found.get(name)
        if info is None:
            c.missing.append(name)
        elif tuple(info.shape) != tuple(shape):
            c.wrong_shape.append(f"{name}: {info.file} {tuple(info.shape)} vs config {tuple(shape)}")
        else:
            c.dtypes[info.dtype] = c.dtypes.get(info.dtype, 0) + 1
    c.unexpected = sorted(set(found) - set(expected))
    return c
