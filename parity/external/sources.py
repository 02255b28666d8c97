"""Render sources: where the image compared with a preview comes from.

The runner (parity.runner.pipeline.Runner) takes one `RenderSources` and calls `prepare(items)` once, then
`render(item)` per item; everything after that (save, compare, record, follow-ups) is the same pipeline for every
source. Per item the source is

- parity's reference engine (`engine`, the default),
- a folder of images the user's stack rendered (`folder`: `parity diff --renders DIR` or a case's `renders:`),
  named by item id (`<id>.png|jpg|jpeg|webp`, the stems `parity plan --export-requests` writes) or listed in a
  manifest (`--renders manifest.json`: {id: file}, paths relative to the manifest),
- a running reference inference server (`endpoint`: `parity diff --endpoint URL`, parity.external.endpoint).

An item without an external render fails alone as an ERROR whose message starts with "missing render:"; files
that match no item are listed in the run block (`run.renders.extra`) and the report. Torch-free.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from parity.errors import ConfigError, InputFileError, ParityError
from parity.items import PlannedItem
from parity.jsonio import short_text
from parity.record import RenderSource

if TYPE_CHECKING:
    from parity.compare.load import LoadedImage
    from parity.engine.render import RenderResult

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
KEPT_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}   # Pillow's format -> the kept file's suffix
MAX_MANIFEST_BYTES = 64 * 2**20


@dataclass
class ExternalRender:
    """An image an external stack rendered for one item, in the place of parity.engine.RenderResult."""

    image: np.ndarray                  # (H, W, 3) uint8, as a viewer shows the file
    source: RenderSource               # kind, location, file (+ request_id for an endpoint)
    kept: Path | None = None           # the file as the stack wrote it, copied into the run folder
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    def facts(self) -> dict[str, Any]:
        """The record's `render` object: only what is known of an external render (no sigmas, no hashes)."""
        return {"width": self.width, "height": self.height, "external": True}


# ---------------------------------------------------------------------------------------------------- folders
@dataclass
class FolderIndex:
    """Which file renders which item id in one folder (or manifest), and what matched nothing."""

    location: Path                     # the folder, or the manifest file
    kind: str                          # "folder" | "manifest"
    files: dict[str, Path]             # item id -> render file (existing or not: a manifest may name a lost file)
    ambiguous: dict[str, list[Path]]   # item id -> several candidate files
    extra: list[str]                   # files / manifest ids that belong to no planned item

    def missing_message(self, item_id: str) -> str:
        from parity.external.export import render_stem

        if item_id in self.ambiguous:
            names = ", ".join(p.name for p in self.ambiguous[item_id])
            return f"missing render: several files for {short_text(item_id)} in {self.location} ({names}); keep one"
        if self.kind == "manifest":
            return f"missing render: the manifest {self.location} lists no file for {short_text(item_id)}"
        return (f"missing render: no {short_text(render_stem(item_id))}.png/.jpg/.webp in {self.location} "
                f"(name renders by item id: parity plan --export-requests)")

    def summary(self, ids: list[str]) -> dict[str, Any]:
        """The run block's `renders` entry for this folder."""
        return {"kind": self.kind, "location": str(self.location), "extra": list(self.extra),
                "missing": [i for i in ids if i not in self.files]}


def index_folder(location: Path, ids: list[str]) -> FolderIndex:
    """Match the planned item ids against a folder of images or a manifest file. Raises ConfigError (exit 2)
    when the location itself is unusable; per-item problems are left to each item."""
    location = Path(location)
    if location.is_file():
        return _index_manifest(location, ids)
    if not location.is_dir():
        raise ConfigError("renders: no such folder or manifest file", location)
    from parity.external.export import render_stem
    from parity.ids import safe_name

    by_stem: dict[str, list[Path]] = {}
    for p in sorted(location.iterdir()):
        # not only regular files: a folder or FIFO named <id>.png is that item's error ("not a regular file")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            by_stem.setdefault(p.stem, []).append(p)
    files, ambiguous, used = {}, {}, set()
    for i in ids:
        found = [p for stem in dict.fromkeys((i, render_stem(i), safe_name(i))) for p in by_stem.get(stem, [])]
        used.update(found)
        if len(found) == 1:
            files[i] = found[0]
        elif found:
            ambiguous[i] = found
    extra = [p.name for ps in by_stem.values() for p in ps if p not in used]
    return FolderIndex(location.resolve(), "folder", files, ambiguous, extra)


def _index_manifest(path: Path, ids: list[str]) -> FolderIndex:
    from parity.jsonio import read_json

    try:
        doc = read_json(path, max_bytes=MAX_MANIFEST_BYTES, unique_keys=True)  # an id twice: which file is it?
    except OSError as e:
        raise ConfigError(f"renders: not a readable JSON manifest ({e.strerror})", path) from None
    except ConfigError as e:
        raise ConfigError(f"renders: {e.message}", path) from None
    if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
        raise ConfigError("renders: a manifest must be a JSON object {item id: image file}", path)
    base = path.resolve().parent
    files = {i: (Path(f) if Path(f).is_absolute() else base / f) for i, f in doc.items() if i in ids}
    extra = [short_text(i) for i in doc if i not in ids]
    return FolderIndex(path.resolve(), "manifest", files, {}, extra)


def read_render(path: Path) -> np.ndarray:
    """An external render as (H, W, 3) uint8, through parity's one image loader (errors name the file)."""
    return load_render(path).rgb


def load_render(path: Path) -> LoadedImage:
    """An external render as parity.compare.load.LoadedImage (pixels and the file's real format)."""
    from parity.compare.load import load_image

    return load_image(path)


def keep_render(src: Path, item_id: str, out_dir: Path, loaded: LoadedImage | None = None) -> Path:
    """A copy of an external render in the run folder (the report and a resumed run read it there), named
    `<item id's file name><suffix of its real format>`: nothing the stack or a server chose is in the name. A PNG,
    JPEG or WebP within limits.MAX_IMAGE_BYTES is copied byte for byte; anything else (a TIFF named .png, a PNG
    with gigabytes after its end) is kept as the decoded image that was compared, as PNG."""
    from parity import fileio, limits
    from parity.ids import item_file_name

    loaded = loaded if loaded is not None else load_render(src)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = KEPT_SUFFIX.get(loaded.format)
    if suffix is not None and Path(src).stat().st_size <= limits.MAX_IMAGE_BYTES:
        return fileio.copy_file(src, out_dir / f"{item_file_name(item_id)}{suffix}", limits.MAX_IMAGE_BYTES)
    return fileio.save_image(out_dir / f"{item_file_name(item_id)}.png", loaded.rgb)


# ----------------------------------------------------------------------------------------------- the router
class EngineRenders(Protocol):
    """What the router asks of parity's engines (parity.runner.engines.EnginePool, which imports this module)."""

    def render(self, item: PlannedItem) -> RenderResult: ...

    def prepare_embeddings(self, items: list[PlannedItem]) -> None: ...


class EndpointRenders(Protocol):
    """What the router asks of a reference inference server (parity.external.endpoint.EndpointClient, which
    imports this module)."""

    public_url: str

    def fetch_all(self, items: list[PlannedItem], out_dir: Path) -> None: ...

    def result(self, item: PlannedItem) -> tuple[Path, RenderSource]: ...


class RenderSources:
    """Per item: the endpoint when one is given, else the item's case `renders` folder, else parity's engine."""

    def __init__(self, pool: EngineRenders, out_dir: Path, endpoint: EndpointRenders | None = None):
        self.pool, self.out_dir, self.endpoint = pool, Path(out_dir), endpoint
        self.folders: dict[Path, FolderIndex] = {}

    def kind(self, item: PlannedItem) -> str:
        if self.endpoint is not None:
            return "endpoint"
        return "folder" if getattr(item.case, "renders", None) is not None else "engine"

    def describe(self, item: PlannedItem) -> RenderSource:
        """The record's `source` before anything was fetched (error records get it too)."""
        kind = self.kind(item)
        if kind == "engine":
            return RenderSource()
        if self.endpoint is not None:
            return RenderSource(kind="endpoint", location=self.endpoint.public_url)
        return RenderSource(kind=self._folder(item).kind, location=str(self._folder(item).location))

    def prepare(self, items: list[PlannedItem]) -> None:
        """Before the first render: index the folders, fetch every endpoint render, encode engine prompts."""
        engine_items = [it for it in items if self.kind(it) == "engine"]
        if engine_items:
            self.pool.prepare_embeddings(engine_items)
        if self.endpoint is not None:
            self.endpoint.fetch_all([it for it in items if not it.problem], self.out_dir / "external")

    def render(self, item: PlannedItem) -> RenderResult | ExternalRender:
        kind = self.kind(item)
        if kind == "engine":
            return self.pool.render(item)
        started = time.perf_counter()
        if kind == "endpoint":
            path, source = self.endpoint.result(item)   # already kept in the run folder
            image = read_render(path)
        else:
            original, source = self._folder_file(item)
            loaded = load_render(original)   # an image (checked) before anything is copied
            image, path = loaded.rgb, keep_render(original, item.id, self.out_dir / "external", loaded)
        return ExternalRender(image, source, path, {"load_s": time.perf_counter() - started})

    def _folder(self, item: PlannedItem) -> FolderIndex:
        location = Path(item.case.renders)
        if location not in self.folders:  # one item on its own (the pytest plugin): matched alone
            return index_folder(location, [item.id])
        return self.folders[location]

    def index(self, location: Path, ids: list[str]) -> FolderIndex:
        self.folders[Path(location)] = idx = index_folder(location, ids)
        return idx

    def _folder_file(self, item: PlannedItem) -> tuple[Path, RenderSource]:
        idx = self._folder(item)
        path = idx.files.get(item.id)
        if path is None:
            raise ParityError(idx.missing_message(item.id))
        try:
            there = path.exists() or path.is_symlink()
        except (OSError, ValueError):   # a NUL byte or an over-long name in a manifest entry
            raise InputFileError("missing render: the manifest names a file that cannot exist",
                                 short_text(str(path))) from None
        if not there:
            raise InputFileError("missing render: the manifest names a file that is not there", path)
        return path, RenderSource(kind=idx.kind, location=str(idx.location), file=str(path.resolve()))
