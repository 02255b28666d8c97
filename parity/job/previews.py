"""Index AI Toolkit's preview files and checkpoints; detect preview format and JPEG quality. No torch.

Preview names: `{ms}__{step:09d}_{i}.{ext}` (BaseSDTrainProcess.py L304-311; `[count]` is not zero-padded,
config_modules.py L1229-1236). Files are written to `samples/.tmp/` and thumbnails to `samples/.thumbs/`,
then moved (config_modules.py L1254-1304), so both folders are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from parity.errors import InputFileError

PREVIEW_EXTS = ("jpg", "jpeg", "png", "webp")
# ASCII digits only (re.ASCII): `\d` would also accept other scripts' digits. Steps >= 10**9 have more
# than 9 digits (zfill pads, never truncates).
_PREVIEW_RE = re.compile(r"^([0-9]+)__([0-9]{9,})_([0-9]+)\.([A-Za-z]+)$", re.ASCII)


def preview_filename(ms: int, step: int, index: int, ext: str = "jpg") -> str:
    """The name AI Toolkit gives a preview: `[time]_` + `_{step:09d}` + `_[count].ext`."""
    if ms < 0 or step < 0 or index < 0:
        raise ValueError("ms, step and index must be non-negative")
    return f"{ms}__{str(step).zfill(9)}_{index}.{ext}"


def checkpoint_filename(name: str, step: int | None = None, final: bool = False, named_lora: bool = False) -> str:
    """`{name}_{step:09d}.safetensors`, or `{name}.safetensors` when final (BaseSDTrainProcess.py L516-543);
    `_LoRA` is added to the name when the job also trains an embedding/adapter (named_lora, L255-257)."""
    base = name + ("_LoRA" if named_lora else "")
    if final:
        return f"{base}.safetensors"
    if step is None or step < 0:
        raise ValueError("a numbered checkpoint needs a non-negative step")
    return f"{base}_{str(step).zfill(9)}.safetensors"


@dataclass(frozen=True)
class PreviewName:
    ms: int
    step: int
    index: int
    ext: str


def parse_preview_filename(name: str) -> PreviewName | None:
    """(ms, step label, prompt index, ext) of a preview file name, or None for any other name."""
    m = _PREVIEW_RE.match(name)
    if not m or m.group(4).lower() not in PREVIEW_EXTS:
        return None
    return PreviewName(int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4))


@dataclass(frozen=True)
class PreviewFile:
    path: Path
    ms: int
    step: int
    index: int
    ext: str


@dataclass
class PreviewIndex:
    """files[(step, index)] = every file for that slot, oldest first. `ignored`: (path, reason)."""

    samples_dir: Path
    files: dict[tuple[int, int], list[PreviewFile]] = field(default_factory=dict)
    ignored: list[tuple[Path, str]] = field(default_factory=list)

    def steps(self) -> list[int]:
        return sorted({s for s, _ in self.files})

    def newest(self, step: int, index: int) -> PreviewFile | None:
        f = self.files.get((step, index))
        return f[-1] if f else None

    def superseded(self, step: int, index: int) -> list[PreviewFile]:
        return list(self.files.get((step, index), [])[:-1])


def index_previews(samples_dir: Path) -> PreviewIndex:
    idx = PreviewIndex(samples_dir=samples_dir)
    if not samples_dir.is_dir():
        return idx
    for p in sorted(samples_dir.iterdir()):
        if p.is_dir():
            reason = {".tmp": "AI Toolkit's temporary write folder", ".thumbs": "UI thumbnails"}.get(
                p.name, "sub-folder")
            idx.ignored.append((p, reason))
            continue
        if not p.is_file():  # a FIFO, socket or device named like a preview: opening it could block forever
            idx.ignored.append((p, "not a regular file"))
            continue
        parsed = parse_preview_filename(p.name)
        if parsed is None:
            idx.ignored.append((p, "name is not {ms}__{step:09d}_{i}.{jpg|jpeg|png|webp}"))
            continue
        idx.files.setdefault((parsed.step, parsed.index), []).append(
            PreviewFile(p, parsed.ms, parsed.step, parsed.index, parsed.ext))
    for files in idx.files.values():
        files.sort(key=lambda f: (f.ms, f.path.name))
    return idx


# ---- checkpoints -----------------------------------------------------------------------------------------

@dataclass
class CheckpointIndex:
    folder: Path
    numbered: dict[int, Path] = field(default_factory=dict)
    final: Path | None = None

    def listing(self) -> str:
        names = [p.name for _, p in sorted(self.numbered.items())] + ([self.final.name] if self.final else [])
        return ", ".join(names) if names else "none"


def index_checkpoints(folder: Path, name: str) -> CheckpointIndex:
    """LoRA files of job `name` in its output folder; the plain name is preferred over `_LoRA`."""
    idx = CheckpointIndex(folder=folder)
    if not folder.is_dir():
        return idx
    pat = re.compile(r"^" + re.escape(name) + r"(_LoRA)?(?:_([0-9]{9,}))?\.safetensors$", re.ASCII)
    for p in sorted(folder.iterdir(), key=lambda q: (("_LoRA" in q.name), q.name), reverse=True):
        m = pat.match(p.name)
        if not m or not p.is_file():
            continue
        if m.group(2) is None:
            idx.final = p
        else:
            idx.numbered[int(m.group(2))] = p
    return idx


# ---- format detection ------------------------------------------------------------------------------------


def estimate_jpeg_quality(tables: dict[int, list[int]]) -> tuple[int | None, bool]:
    """(quality, exact) of a JPEG's quantization tables: the libjpeg quality Pillow was given (`exact` when the
    tables are libjpeg's scaled standard tables for it). One implementation, the comparison's (imported lazily:
    it pulls numpy, which `parity plan` needs only when it reads previews)."""
    from parity.compare.jpeg import detect_quality

    return detect_quality(tables or {})


@dataclass(frozen=True)
class PreviewFormat:
    format: str                      # "JPEG" | "PNG" | "WEBP"
    width: int
    height: int
    quality: int | None = None       # JPEG only
    quality_exact: bool = False      # tables are exactly libjpeg's for `quality`
    subsampling: str | None = None   # JPEG only: "4:4:4" | "4:2:2" | "4:2:0"
    lossless: bool | None = None     # True for PNG; WebP lossless when detectable

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def detect_format(path: Path) -> PreviewFormat:
    """Read the header only (no decoding). Not an image / truncated header -> InputFileError."""
    from PIL import Image, JpegImagePlugin, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            fmt = im.format or "?"
            w, h = im.size
            if fmt == "JPEG":
                q, exact = estimate_jpeg_quality(getattr(im, "quantization", {}) or {})
                samp = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}.get(JpegImagePlugin.get_sampling(im))
                return PreviewFormat(fmt, w, h, quality=q, quality_exact=exact, subsampling=samp, lossless=False)
            if fmt == "PNG":
                return PreviewFormat(fmt, w, h, lossless=True)
            if fmt == "WEBP":
                with open(path, "rb") as f:
                    head = f.read(16)
                lossless = head[12:16] == b"VP8L" if len(head) >= 16 else None
                return PreviewFormat(fmt, w, h, lossless=lossless)
            raise InputFileError(f"preview is a {fmt} image; AI Toolkit writes JPEG, PNG or WebP", path)
    except FileNotFoundError:
        raise InputFileError("preview file not found", path) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise InputFileError(f"not a readable image: {e}", path) from None
    except Image.DecompressionBombError as e:
        raise InputFileError(f"preview is too large to open safely ({e})", path) from None
