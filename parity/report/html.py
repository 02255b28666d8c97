"""The report directory: index.html (jinja2, autoescape on, CSS/JS inline, data as an embedded JSON blob),
results.json, junit.xml, summary.md, thumbs/ and images/. Self-contained by default: the images it shows are
copied into images/ (`link_images=True` keeps referencing the originals, by absolute path, for huge runs), no
network, links relative to the report folder, so it works from file://, from a web server and from an unzipped CI
artifact wherever it is moved. Files are written world-readable (0644).

Safety: everything is written under `out_dir` by fixed names (thumbnails are named by a hash, never by a user
file name), via tmp file + os.replace; a symlinked thumbs/ is refused. User text reaches the page only through
autoescaped jinja or JS textContent; the JSON blob has `<`, `>`, `&` escaped so `</script>` cannot end it;
image links are percent-encoded paths, relative or starting with one `/` (so `javascript:` cannot become a scheme).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from parity import fileio, limits
from parity.compare.heatmap import css_gradient, diff_legend, ssim_legend
from parity.errors import ParityError
from parity.jsonio import parse_json
from parity.record import VIEW_FIELDS
from parity.report.junit import junit_xml
from parity.report.markdown import markdown_summary
from parity.report.store import SNAPSHOT_NAME, Results, dumps, dumps_results, write_text_atomic
from parity.report.summary import Summary, item_score, summarize
from parity import knobs as registry
from parity.report.texts import item_texts
from parity.tier import DRIFT, NEAR, all_tiers, tier_names

log = logging.getLogger("parity")

THUMB_DIR = "thumbs"
# external: the file the user's stack wrote; reproduction: the engine's best reproduction of it (parity.external)
IMAGE_KEYS: tuple[str, ...] = ("preview", "render", "heatmap_diff", "heatmap_ssim", "external", "reproduction")


@dataclass
class ReportPaths:
    dir: Path
    index: Path
    results: Path
    junit: Path
    markdown: Path
    thumbs: Path

    @property
    def html(self) -> Path:  # alias of `index`
        return self.index


# ----------------------------------------------------------------------------------------------- paths
def safe_out_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ParityError("the report output is not a directory", out)
    out.mkdir(parents=True, exist_ok=True)
    return out.resolve()


def safe_target(out: Path, name: str) -> Path:
    """`out/name`, refusing anything that would land outside `out` (a `..` name, a symlinked parent)."""
    target = out / name
    parent = target.parent.resolve()
    if parent != out and out not in parent.parents:
        raise ParityError(f"refusing to write {name!r} outside the report directory", out)
    if target.is_dir() and not target.is_symlink():
        raise ParityError(f"{name!r} is a directory", out)
    return target


def url_for(abs_path: str | None, out: Path) -> str | None:
    """A percent-encoded URL for `abs_path` from the report directory (None stays None): relative inside it,
    the absolute path outside it (a `../..` link breaks as soon as the folder moves; an absolute one only when
    the originals do)."""
    if not abs_path:
        return None
    path = os.path.normpath(os.path.abspath(abs_path))
    base = str(out)
    if path == base or path.startswith(base.rstrip(os.sep) + os.sep):
        return quote(os.path.relpath(path, base).replace(os.sep, "/"), safe="/")
    return "/" + quote(path.replace(os.sep, "/").lstrip("/"), safe="/")  # one leading / : never `//host`


def report_href(report_url: str | None) -> str:
    """Where summary.md and junit.xml link the report: `index.html` beside them, or the hosted report's address
    under `report_url` (`--report-url`; absolute, so the links also work in a CI job summary)."""
    from urllib.parse import urlsplit

    if report_url is None:
        return "index.html"
    parts = urlsplit(report_url)
    if parts.scheme not in ("http", "https", "file") or not (parts.netloc or parts.scheme == "file"):
        raise ParityError(f"--report-url must be an http(s):// or file:// address of the report folder, "
                          f"got {report_url!r}")
    url = report_url if parts.path.endswith(".html") else report_url.rstrip("/") + "/index.html"
    return quote(url, safe=":/?#[]@!$&'()*+,;=%~")  # a space or a markdown ( ) must not end the link


# ----------------------------------------------------------------------------------------------- thumbnails
# A thumbnail is thumbs/<key>_<W>x<H>.jpg: key = hash of (source path, mtime, size, thumbnail size), W x H = the
# source's size (so a rebuild needs no image decoding at all for cached thumbnails).
def _thumb_key(src: str, size: int) -> str:
    try:
        st = os.stat(src)
        stamp = f"{st.st_mtime_ns}:{st.st_size}"
    except OSError:
        stamp = "missing"
    return hashlib.sha1(f"{os.path.abspath(src)}|{stamp}|{size}".encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _save_thumb(im: Any, tdir: Path, key: str, size: int) -> str:
    from PIL import Image

    full = im.size
    if im.format == "JPEG":
        im.draft("RGB", (size, size))  # decode at 1/2..1/8 scale: most of the time saved
    im = im.convert("RGB")
    im.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    name = f"{key}_{full[0]}x{full[1]}.jpg"
    fileio.save_image(tdir / name, im, "JPEG", quality=82)
    return name


def ensure_thumbnail(src: str | Path, report_dir: str | Path, size: int = 176, image: Any = None) -> str | None:
    """Make (or find) the thumbnail of image file `src` in `report_dir`/thumbs and return its name. A runner
    that has just written `src` can pass the PIL `image` it holds, so no decoding is needed and a later
    `parity report` finds every thumbnail cached. Returns None for an unreadable image."""
    from PIL import Image

    tdir = Path(report_dir) / THUMB_DIR
    if tdir.is_symlink():
        raise ParityError("refusing to write thumbnails through a symlink", tdir)
    tdir.mkdir(parents=True, exist_ok=True)
    key = _thumb_key(str(src), size)
    for name in os.listdir(tdir):
        if name.startswith(key + "_"):
            return name
    try:
        if image is not None:
            return _save_thumb(image.copy(), tdir, key, size)
        with Image.open(src) as im:
            return _save_thumb(im, tdir, key, size)
    except Exception:  # missing, truncated or not an image: the card says so
        return None


def _parse_thumb(name: str) -> tuple[str, tuple[int, int]] | None:
    stem, _, ext = name.rpartition(".")
    key, _, dims = stem.partition("_")
    w, _, h = dims.partition("x")
    if ext != "jpg" or not (w.isdigit() and h.isdigit()):
        return None
    return key, (int(w), int(h))


def _cached_thumbnails(tdir: Path) -> dict[str, tuple[str, tuple[int, int]]]:
    cached: dict[str, tuple[str, tuple[int, int]]] = {}
    for name in os.listdir(tdir):
        parsed = _parse_thumb(name)
        if parsed:
            cached[parsed[0]] = (name, parsed[1])
    return cached


class Thumbnails:
    """The thumbnails of a report's images, made on worker threads (Pillow releases the GIL while it decodes,
    resizes and encodes) while the caller goes on copying images and writing the report's other files; `result()`
    waits for them.
    Items come worst first; cached thumbnails are reused; with `budget_s` no new thumbnail is started after that
    many seconds from `started` (a time.monotonic(); default now) (the remaining cards lazy-load the full image, and the next rebuild continues). `origin` maps an
    image copied into the report to its original: the thumbnail is keyed by (and made from) the original while it
    exists, so one made by the runner or an earlier report is shared, and a copy not yet written is never read."""

    def __init__(self, items: list[dict[str, Any]], out: Path, size: int, *, budget_s: float | None = None,
                 workers: int | None = None, origin: dict[str, str] | None = None, started: float | None = None):
        self.tdir = out / THUMB_DIR
        if self.tdir.is_symlink():
            raise ParityError("refusing to write thumbnails through a symlink", self.tdir)
        self.tdir.mkdir(exist_ok=True)
        self.size, self.origin = size, origin or {}
        cached = _cached_thumbnails(self.tdir)
        self.sources = list(dict.fromkeys(p for it in items for k, p in it["paths"].items()
                                          if k in IMAGE_KEYS and isinstance(p, str)))
        self.done: dict[str, tuple[str | None, tuple[int, int] | None]] = {}
        todo: list[tuple[str, str]] = []
        for src in self.sources:
            key = _thumb_key(self._original(src), size)
            if key in cached:
                name, dims = cached[key]
                self.done[src] = (f"{THUMB_DIR}/{name}", dims)
            else:
                todo.append((src, key))
        self.deadline = None if budget_s is None else (started or time.monotonic()) + budget_s
        self.todo, self.lock = iter(todo), threading.Lock()
        self.threads = [threading.Thread(target=self._work, daemon=True)
                        for _ in range(min(len(todo), workers or min(4, (os.cpu_count() or 2))))]
        for t in self.threads:
            t.start()

    def _work(self) -> None:
        """Take the next image (worst item first) until none is left or the budget is spent."""
        while self.deadline is None or time.monotonic() <= self.deadline:
            with self.lock:
                job = next(self.todo, None)
            if job is None:
                return
            src, val = self._make(*job)
            self.done[src] = val  # one key per thread at a time: dict assignment is atomic

    def _original(self, src: str) -> str:
        orig = self.origin.get(src)
        return orig if orig is not None and os.path.isfile(orig) else src

    def _make(self, src: str, key: str) -> tuple[str, tuple[str | None, tuple[int, int] | None]]:
        from PIL import Image

        try:
            with Image.open(self._original(src)) as im:
                name = _save_thumb(im, self.tdir, key, self.size)
            parsed = _parse_thumb(name)
            return src, (f"{THUMB_DIR}/{name}", parsed[1] if parsed else None)
        except Exception:  # missing or unreadable: the card says so
            return src, (None, None)

    def cancel(self) -> None:
        """Start no more thumbnails; wait for those being written."""
        self.deadline = 0.0
        self.result()

    def result(self) -> dict[str, tuple[str | None, tuple[int, int] | None]]:
        """abs source path -> (thumbnail URL or None, source size or None), once every started one is written; an
        image without a thumbnail (budget spent, unreadable) maps to (None, None)."""
        for t in self.threads:
            t.join()
        for src in self.sources:
            self.done.setdefault(src, (None, None))
        return self.done


def build_thumbnails(items: list[dict[str, Any]], out: Path, size: int, *, budget_s: float | None = None,
                     workers: int | None = None, origin: dict[str, str] | None = None,
                     ) -> dict[str, tuple[str | None, tuple[int, int] | None]]:
    """abs source path -> (thumbnail URL or None, source size or None), for the images of `items` in their
    order (pass them worst first): `Thumbnails(...).result()`."""
    return Thumbnails(items, out, size, budget_s=budget_s, workers=workers, origin=origin).result()


# ----------------------------------------------------------------------------------------------- plots
@dataclass
class Plot:
    width: int
    height: int
    series: list[dict[str, Any]]     # {"label", "cls", "path", "dots": [(x, y)]}
    yticks: list[tuple[float, str]]  # (y, label)
    xticks: list[tuple[float, str]]
    ylabel: str
    left: float = 36                                               # x where the plotting area starts
    bands: list[tuple[float, float]] = field(default_factory=list)  # (top, bottom) of each lane (steps_plot)
    lane_labels: list[tuple[float, str]] = field(default_factory=list)  # (y, label) left of each lane


def _yscale(lo: float, h: int, pad: int) -> Any:
    return lambda v: pad + (1.0 - (v - lo) / (1.0 - lo if lo < 1 else 1.0)) * (h - 2 * pad)


def _lo(values: list[float]) -> float:
    lo = min(values) if values else 0.0
    return max(0.0, min(0.9, (int(lo * 20) / 20.0)))


def score_plot(s: Summary, width: int = 520, height: int = 170, pad: int = 18) -> Plot | None:
    """Score per item, worst first: one dot per item coloured by tier (one <path> per tier keeps the DOM small)."""
    pts = [(it, item_score(it, s.metric)) for it in s.worst]
    vals = [v for _, v in pts if v is not None]
    if not vals:
        return None
    lo = _lo(vals)
    y = _yscale(lo, height, pad)
    n = max(1, len(pts) - 1)
    by_tier: dict[str, list[str]] = {}
    for i, (it, v) in enumerate(pts):
        if v is None:
            continue
        x = 40 + i / n * (width - 50)
        by_tier.setdefault(it["tier"], []).append(f"M{x:.1f} {y(v):.1f}h0")
    series = [{"label": t, "cls": f"t-{t}", "path": "".join(by_tier[t])} for t in tier_names() if t in by_tier]
    ticks = [(y(v), f"{v:.2f}") for v in (lo, (lo + 1) / 2, 1.0)]
    return Plot(width, height, series, ticks, [(40, "worst"), (width - 10, "best")], s.metric)


def _step_ticks(steps: list[float], x_of: dict[float, float], min_gap: float = 44) -> list[tuple[float, str]]:
    """At most ~8 step labels, never closer than `min_gap` px (the last step is kept, the one before it dropped)."""
    every = max(1, len(steps) // 8)
    picked = [st for i, st in enumerate(steps) if i % every == 0]
    if picked[-1] != steps[-1]:
        if x_of[steps[-1]] - x_of[picked[-1]] < min_gap:
            picked.pop()
        picked.append(steps[-1])
    return [(x_of[st], f"{st:g}") for st in picked]


# The widest character of the lane labels' 10 px sans-serif (digits: 6.4 px in DejaVu Sans, what headless
# Chromium draws here); an estimate per character, so a label never runs off the chart's left edge.
LANE_LABEL_CHAR_PX = 6.4


def _lane_name(case: str | None) -> str:
    name = case or "(no case)"
    return name if len(name) <= 16 else name[:15] + "…"


def steps_plot(s: Summary, width: int = 520, lane_h: int = 30, max_series: int = 8) -> Plot | None:
    """Mean score per training step as small multiples: one lane per case (the worst `max_series`), all on one
    score scale and one step axis, so five or fifty cases and any number of steps stay readable (overlaid lines
    of many cases were a tangle)."""
    series_src = {c: v for c, v in s.steps.items() if v}
    steps = sorted({st for v in series_src.values() for st, _, _ in v})
    if len(steps) < 2:
        return None
    cases = sorted(series_src, key=lambda c: min(m for _, m, _ in series_src[c]))[:max_series]
    lo = _lo([m for c in cases for _, m, _ in series_src[c]])
    texts = [f"{_lane_name(c)} min {min(m for _, m, _ in series_src[c]):.2f}" for c in cases]
    # left: room for the longest lane label, drawn right-aligned 6 px before the axis (a long case name was clipped)
    left = max(128, math.ceil(LANE_LABEL_CHAR_PX * max(map(len, texts))) + 8)
    right, top = width - 24, 4  # right: room for the last step label, centred on its x
    x_of = {st: left + i / (len(steps) - 1) * (right - left) for i, st in enumerate(steps)}
    series, bands, labels = [], [], []
    for k, c in enumerate(cases):
        y0 = top + k * lane_h
        y = lambda v, y0=y0: y0 + 3 + (1.0 - (v - lo) / (1.0 - lo if lo < 1 else 1.0)) * (lane_h - 8)  # noqa: E731
        pts = [(x_of[st], y(m)) for st, m, _ in series_src[c]]
        path = "M" + "L".join(f"{x:.1f} {yy:.1f}" for x, yy in pts)
        series.append({"label": c or "(no case)", "cls": f"s-{k}", "path": path,
                       "dots": pts if len(steps) <= 40 else []})  # dots only while they do not merge
        bands.append((y0, y0 + lane_h - 2))
        labels.append((y0 + lane_h / 2 + 3, texts[k]))
    height = top + len(cases) * lane_h + 14
    return Plot(width, height, series, [], _step_ticks(steps, x_of), f"mean {s.metric}", left=left, bands=bands,
                lane_labels=labels)


# ----------------------------------------------------------------------------------------------- view model
def script_json(obj: Any) -> str:
    """JSON safe inside <script type="application/json">: `<`, `>`, `&` and the JS line separators escaped,
    so no string in it can close the element or open a comment."""
    if isinstance(obj, dict) and isinstance(obj.get("items"), list):  # per item: one inf stays a local fallback
        head = dumps({k: v for k, v in obj.items() if k != "items"}, separators=(",", ":"))
        text = head[:-1] + ("," if head != "{}" else "") + '"items":[' + ",".join(dumps(it, separators=(",", ":")) for it in obj["items"]) + "]}"
    else:
        text = dumps(obj, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _view_item(it: dict[str, Any], out: Path, thumbs: dict[str, Any], metric: str,
               copies: dict[str, str] | None = None) -> dict[str, Any]:
    v = {k: it.get(k) for k in VIEW_FIELDS}  # record fields static/report.js reads (parity.record)
    urls: dict[str, str | None] = {}
    th: dict[str, str | None] = {}
    dims: dict[str, list[int]] = {}
    for k in IMAGE_KEYS:
        p = it["paths"].get(k)
        if not isinstance(p, str):
            continue
        urls[k] = url_for(p, out)
        t, size = thumbs.get(p, (None, None))
        th[k] = t
        if size:
            dims[k] = list(size)
    # reference images (FLUX.2 ctrl_img*) the preview was conditioned on: linked next to the preview
    refs = it["paths"].get("reference_images")
    ref_urls = [url_for(p, out) for p in (refs if isinstance(refs, list) else
                                          [(copies or {}).get(p, p) for p in _reference_images(it)])]
    if ref_urls:
        urls["refs"] = ref_urls
    v["u"], v["t"], v["dims"] = urls, th, dims
    v["score"] = item_score(it, metric)
    v["texts"] = item_texts(it, metric)  # the words the page shows, formatted once (parity.report.texts)
    return {k: x for k, x in v.items() if x is not None and x != {} and x != []} | {"id": it["id"], "tier": it["tier"]}


def script_hash(js: str) -> str:
    """CSP source for our one inline script: only it runs; inline event handlers (onerror=...) never do,
    a second line of defence behind the escaping."""
    return "sha256-" + base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode("ascii")


def _static(name: str) -> str:
    return resources.files("parity.report").joinpath("static", name).read_text(encoding="utf-8")


def render_html(results: Results, items: list[dict[str, Any]], out: Path, thumbs: dict[str, Any],
                summary: Summary, *, title: str | None = None, copies: dict[str, str] | None = None) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("parity.report", "templates"),
        autoescape=True,  # every {{ }} is HTML-escaped; the only |safe values are our own CSS/JS and script_json
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    js = _static("report.js")
    view_items = [_view_item(it, out, thumbs, summary.metric, copies or {}) for it in items]
    tiers = [t.view() for t in all_tiers()]  # order, names and colours: the page's style and script take them
    legends = {"heatmap_diff": diff_legend(), "heatmap_ssim": ssim_legend(), "gradient": css_gradient()}
    blob = {"run": results.run, "items": view_items, "tiers": tiers, "knobs": list(registry.knob_names()),
            "legends": legends, "irreducible": list(registry.irreducible_names()), "metric": summary.metric,
            "worst": [it["id"] for it in summary.worst]}
    worst_bad = [it for it in summary.worst if not it.get("passed")][:12] or summary.worst[:12]
    return env.get_template("index.html.j2").render(
        title=title or f"parity report {results.run.get('id', '')}".strip(),
        run=results.run, complete=results.complete, warnings=results.warnings, s=summary, tiers=tiers,
        drift=DRIFT.name, near=NEAR.name,
        worst=[(it, item_score(it, summary.metric)) for it in worst_bad],
        score_plot=score_plot(summary), steps_plot=steps_plot(summary),
        css=_static("report.css"), js=js, script_hash=script_hash(js), data=script_json(blob),
        quote=lambda x: quote(str(x), safe=""),
    )


# ----------------------------------------------------------------------------------------------- entry point
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF")


def _reference_images(it: dict[str, Any]) -> list[str]:
    """The FLUX.2 reference images (ctrl_img*) an item's preview was conditioned on (absolute paths)."""
    refs = (((it.get("params") or {}).get("preview") or {}).get("reference_images") or {}).get("value") or []
    return [p for p in refs if isinstance(p, str)]


def _real_path(src: str, real_dir: Any) -> str:
    """`src` with every symlink resolved; `real_dir` resolves (and may cache) its folder: thousands of images
    share a few folders, and resolving each path whole costs one lstat per component."""
    if os.path.islink(src):
        return os.path.realpath(src)
    return os.path.join(real_dir(os.path.dirname(os.path.abspath(src))), os.path.basename(src))


def _is_inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def copyable_image(key: str, src: str, run_dir: Path | list[Path] | None, real_dir: Any = os.path.realpath) -> str | None:
    """Why `src` must not be copied into a report, or None when it may. results.json is input like any other: a
    path in it is copied only when it is what this run could have produced there, a regular image file (by its
    first bytes, not its name), inside the run's own folder(s) (`run_dir`: one, or a merge's shard folders) or,
    for a preview, an AI Toolkit preview file (`samples/{ms}__{step:09d}_{i}.ext`), or for a reference image
    (`reference_image`: a ctrl_img the job names, anywhere) an image. So `"preview": "/etc/passwd"` copies nothing.
    `real_dir` resolves a folder's symlinks (a caching one when many images are checked)."""
    from parity.job.previews import parse_preview_filename

    if not os.path.isfile(src):
        return "not a regular file"
    if os.stat(src).st_size > limits.MAX_IMAGE_BYTES:   # the one budget for a copied image (parity.limits)
        return f"larger than parity's limit of {limits.MAX_IMAGE_BYTES} bytes for an image it copies"
    real = _real_path(src, real_dir)
    dirs = [run_dir] if isinstance(run_dir, Path) else list(run_dir or [])
    in_run = any(_is_inside(real, real_dir(os.path.abspath(d))) for d in dirs)
    is_preview = os.path.basename(os.path.dirname(real)) == "samples" and \
        parse_preview_filename(os.path.basename(real)) is not None
    if not in_run and not (key == "preview" and is_preview) and key != "reference_image":
        return ("neither an AI Toolkit preview file (samples/{ms}__{step:09d}_{i}.ext) nor inside the run's folder"
                if key == "preview" else "not inside the run's folder")
    try:
        with open(real, "rb") as f:
            head = f.read(12)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if not head.startswith(_IMAGE_MAGIC) or (head.startswith(b"RIFF") and head[8:12] != b"WEBP"):
        return "not a PNG, JPEG or WebP image"
    return None


def _copy_name(src: str) -> str:
    """The file name of `src`'s copy in images/: a hash of its path (never a user file name) and its extension."""
    ext = os.path.splitext(src)[1].lower()
    ext = ext if ext in (".jpg", ".jpeg", ".png", ".webp") else ".img"
    return hashlib.sha1(src.encode("utf-8", "surrogatepass")).hexdigest()[:24] + ext


def _same_stamp(src: str, dst: str) -> bool:
    """`dst` is a current copy of `src`: the same size and modification time (a link shares them; a copy is
    given the original's)."""
    try:
        a, b = os.stat(src), os.stat(dst)
    except OSError:
        return False
    return (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)


class _Copies:
    """Which images of a report are copied into its images/ folder, and where (see copy_images_into)."""

    def __init__(self, out: Path, run_dir: Path | list[Path] | None, refused: list[str] | None,
                 done: dict[str, str]):
        import functools

        self.out, self.idir, self.run_dir, self.refused, self.done = str(out), out / "images", run_dir, refused, done
        self.present = set(os.listdir(self.idir))  # copies made by an earlier build
        self.todo: list[tuple[str, str]] = []
        self.made_from: dict[str, str] = {}  # copy -> the file it is made from (thumbnails read that one)
        self.real_dir = functools.lru_cache(maxsize=None)(os.path.realpath)

    def take(self, it: dict[str, Any], key: str, src: str) -> str:
        """The path the item links `src` by: its copy (made later by `copy_all`), or `src` itself."""
        if src in self.done:
            return self.done[src]
        if _is_inside(_real_path(src, self.real_dir), self.out):  # inside the report already
            return src
        name = _copy_name(src)
        dst = str(self.idir / name)
        source = src
        if not os.path.isfile(src):  # gone (the job folder deleted): a copy an earlier build made, if any
            if name in self.present and not os.path.islink(dst):
                self.done[src] = dst
                return dst
            source = self._earlier_copy(name)  # made by the report these results were read from
            if source is None:
                return src
        why = copyable_image(key, source, self.run_dir, self.real_dir)
        if why is not None:
            if self.refused is not None:
                self.refused.append(f"{it.get('id', '?')}: {key} {src}: not copied: {why}")
            return src
        if name not in self.present or not _same_stamp(source, dst):  # new, or the original was replaced since
            self.todo.append((source, dst))
        self.done[src], self.made_from[dst] = dst, source
        return dst

    def _earlier_copy(self, name: str) -> str | None:
        """The copy named `name` in the images/ folder of a report whose results are being read (written
        elsewhere with --out), or None."""
        dirs = [self.run_dir] if isinstance(self.run_dir, Path) else list(self.run_dir or [])
        for d in dirs:
            p = Path(d) / "images" / name
            if p.is_file() and not p.is_symlink():
                return str(p)
        return None

    def copy_all(self) -> None:
        """Make the planned copies, on a few threads (a copy is system calls: they overlap), each taking a slice."""
        from concurrent.futures import ThreadPoolExecutor

        slices = [self.todo[i::4] for i in range(4)]
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda jobs: [fileio.link_or_copy(Path(s), Path(d)) for s, d in jobs], slices))


def copy_images_into(items: list[dict[str, Any]], out: Path, run_dir: Path | list[Path] | None = None,
                     refused: list[str] | None = None,
                     copies: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Copy the images of `items` (absolute paths) into out/images/ under hashed names (never a user file name)
    and return the items pointing at the copies, the original paths kept in `original_paths` (provenance): a
    report directory that can be zipped and moved as a whole. An image that is gone but was copied by an earlier
    build of this report is found there. Only what `copyable_image` allows is copied (`run_dir`: the folder(s) of
    the results); each refusal is appended to `refused` as one line and the item keeps its original path.
    Reference images (which live in the item's params, not its paths) are copied too, listed as
    `paths.reference_images`; `copies` receives every source -> copy."""
    plan = _plan_copies(out, run_dir, copies if copies is not None else {}, refused)
    result = [_with_copies(it, plan.take) for it in items]
    plan.copy_all()
    return result


def _plan_copies(out: Path, run_dir: Path | list[Path] | None,
                 copies: dict[str, str], refused: list[str] | None = None) -> _Copies:
    idir = out / "images"
    if idir.is_symlink():
        raise ParityError("refusing to copy images through a symlink", idir)
    idir.mkdir(exist_ok=True)
    return _Copies(out, run_dir, [] if refused is None else refused, copies)


def _with_copies(it: dict[str, Any], take: Any) -> dict[str, Any]:
    """`it` with its images (and reference images) replaced by what `take` returns, originals in original_paths."""
    paths, origins = dict(it["paths"]), dict(it.get("original_paths") or {})
    for k in IMAGE_KEYS:
        src = paths.get(k)
        if isinstance(src, str):
            paths[k] = take(it, k, src)
            if paths[k] != src:
                origins.setdefault(k, src)
    listed = paths.get("reference_images")  # copies made by an earlier build (results.json written by a report)
    refs = [take(it, "reference_image", ref) for ref in (listed if isinstance(listed, list) else
                                                           _reference_images(it)) if isinstance(ref, str)]
    if refs:
        paths["reference_images"] = refs
    return dict(it, paths=paths, **({"original_paths": origins} if origins else {}))


def write_report(results: Results, out_dir: str | Path, *, thumbnails: bool = True, thumb_size: int = 176,
                 thumb_budget_s: float | None = 1.5, title: str | None = None,
                 copy_images: bool = True, report_url: str | None = None) -> ReportPaths:
    """Write index.html, junit.xml, summary.md, thumbs/ and (unless it is the run's own file) results.json into
    `out_dir`. Item paths are rebased so links work from `out_dir`. New thumbnails are made worst item first
    until `thumb_budget_s` seconds after the start (None: no limit), on worker threads while the images are copied
    and the other files written; cards without one lazy-load the full image.
    `copy_images` (default) copies images from outside `out_dir` into it (a report that can be zipped and moved);
    False links the originals by absolute path. `report_url`: where the report will be hosted (absolute links in
    summary.md and junit.xml)."""
    started = time.monotonic()
    href = report_href(report_url)  # checked before anything is written
    out = safe_out_dir(out_dir)
    paths = ReportPaths(dir=out, index=safe_target(out, "index.html"), results=safe_target(out, SNAPSHOT_NAME),
                        junit=safe_target(out, "junit.xml"), markdown=safe_target(out, "summary.md"),
                        thumbs=out / THUMB_DIR)
    items = list(results.items)
    copies: dict[str, str] = {}
    plan = _plan_copies(out, results.own_dirs, copies) if copy_images else None
    if plan is not None:
        items = [_with_copies(it, plan.take) for it in items]
        for line in plan.refused or []:
            log.warning("%s", line)
    summary = summarize(items, results.run)
    # Thumbnails are made on worker threads while the images are copied and the other files are written.
    thumbs = (Thumbnails(summary.worst, out, thumb_size, budget_s=thumb_budget_s, started=started,
                         origin=plan.made_from if plan is not None else None) if thumbnails else None)
    try:
        if plan is not None:
            plan.copy_all()
        _write_data_files(results, items, paths, summary, href, rewrite_own=bool(copies))
    except BaseException:
        if thumbs is not None:
            thumbs.cancel()
        raise
    thumb_urls = thumbs.result() if thumbs is not None else {}
    write_text_atomic(paths.index, render_html(results, items, out, thumb_urls, summary, title=title, copies=copies))
    return paths


def _write_data_files(results: Results, items: list[dict[str, Any]], paths: ReportPaths, summary: Summary,
                      href: str, *, rewrite_own: bool) -> None:
    """results.json (items relative to the report folder), junit.xml and summary.md. The run's own results.json
    (the runner's snapshot, when the report is written into the run folder) is rewritten only to point at new
    copies (`rewrite_own`)."""
    own = results.source is not None and paths.results.exists() and _same_file(paths.results, results.source)
    if not own or rewrite_own:
        doc = {"schema": results.schema, "run": results.run, "items": items}
        write_text_atomic(paths.results, dumps_results(doc, paths.dir))
    rel_results = Results(run=results.run, items=items, base_dir=None, source=results.source,
                          warnings=results.warnings)
    write_text_atomic(paths.junit, junit_xml(rel_results, report_href=href))
    write_text_atomic(paths.markdown, markdown_summary(rel_results, summary=summary, report_href=href))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def report_json_blob(html_text: str) -> dict[str, Any]:
    """The data blob embedded in an index.html (for tests and tools)."""
    start = html_text.index('<script type="application/json" id="parity-data">') + len(
        '<script type="application/json" id="parity-data">')
    end = html_text.index("</script>", start)
    return parse_json(html_text[start:end], "the report's data")
