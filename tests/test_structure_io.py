"""Three facts about parity's code, checked on its syntax tree (issue 35), so a new module cannot quietly
bypass them:

1. parity/http.py is the only module that imports an HTTP client library (urllib.request, http.client,
   requests, httpx, urllib3, aiohttp, socket-level HTTP): one place owns credentials, redirects, deadlines, caps.
2. parity/jsonio.py is the only module that calls json.load / json.loads: every JSON document from outside goes
   through its size- and depth-limited reader (parse_json / read_json).
3. parity/fileio.py is the only module that writes a file itself (open for writing, write_text/write_bytes,
   an image's save(path), shutil copies, os.replace of a temporary): every file parity writes into a user's folder
   is written whole (temporary + rename; a symlink at the destination is replaced, never followed).
   The exceptions are listed with their reason.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PARITY = Path(__file__).resolve().parents[1] / "parity"
HTTP_MODULES = ("urllib.request", "urllib.error", "http.client", "http.server", "requests", "httpx", "urllib3",
                "aiohttp")
# module -> why it may write by itself
WRITE_EXCEPTIONS = {
    "parity/fileio.py": "the atomic writer itself",
    "parity/report/journal.py": "results.jsonl is an append-only journal: each line is appended and fsynced "
                                "(a crash loses at most the line being written, never an earlier one)",
    "parity/report/lock.py": "the run folder's lock file is created with O_EXCL: creating it is the lock",
    "parity/engine/text.py": "the embedding cache (parity's own cache folder) is written by safetensors' save_file "
                             "to a temporary and renamed: already whole-or-nothing, and not a user's folder",
}


def _modules() -> list[tuple[str, ast.Module]]:
    root = PARITY.parent
    return [(str(p.relative_to(root)), ast.parse(p.read_text(encoding="utf-8"), str(p)))
            for p in sorted(PARITY.rglob("*.py"))]


def _imports(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _calls(tree: ast.Module):
    """(call, owner name or "" for an expression, method or function name); owner None for a plain function."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute):
                yield node, (f.value.id if isinstance(f.value, ast.Name) else ""), f.attr
            elif isinstance(f, ast.Name):
                yield node, None, f.id


def _mode(call: ast.Call, position: int) -> str:
    """The mode argument of an open() call, "" when absent or not a literal."""
    arg = call.args[position] if len(call.args) > position else next(
        (k.value for k in call.keywords if k.arg == "mode"), None)
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else ""


def http_importers() -> list[str]:
    return sorted(name for name, tree in _modules()
                  if any(m == h or m.startswith(h + ".") for m in _imports(tree) for h in HTTP_MODULES))


def json_parsers() -> list[str]:
    return sorted({f"{name}:{call.lineno}" for name, tree in _modules() for call, owner, attr in _calls(tree)
                   if owner == "json" and attr in ("load", "loads")})


def _writes(call: ast.Call, owner: str | None, attr: str) -> bool:
    first = call.args[0] if call.args else None
    in_memory = isinstance(first, ast.Name) and first.id == "buf"    # an image encoded into an io.BytesIO
    return ((attr in ("write_text", "write_bytes") and owner not in (None, "fileio"))
            or (attr == "save" and owner is not None and not in_memory)
            or (owner == "shutil" and attr in ("copyfile", "copy", "copy2", "copytree", "move", "copyfileobj"))
            or (owner == "os" and attr in ("replace", "rename"))
            or (attr == "open" and owner is None and any(c in _mode(call, 1) for c in "wax+"))
            or (attr == "open" and owner not in (None, "os", "Image") and any(c in _mode(call, 0) for c in "wax+"))
            or (attr == "fdopen" and any(c in _mode(call, 1) for c in "wax+"))
            or (owner == "os" and attr == "open" and len(call.args) > 1 and "O_CREAT" in ast.dump(call.args[1])))


def file_writers() -> list[str]:
    return sorted({f"{name}:{call.lineno} {owner or ''}.{attr}" for name, tree in _modules()
                   if name not in WRITE_EXCEPTIONS for call, owner, attr in _calls(tree) if _writes(call, owner, attr)})


def test_one_module_speaks_http():
    assert http_importers() == ["parity/http.py"]


def test_one_module_parses_json():
    assert [p for p in json_parsers() if not p.startswith("parity/jsonio.py:")] == []


def test_one_module_writes_files():
    assert file_writers() == []


@pytest.mark.parametrize("source, finds", [
    ("import urllib.request\n", "http"), ("from http.client import HTTPConnection\n", "http"),
    ("import json\njson.loads(x)\n", "json"), ("from pathlib import Path\nPath('a').write_text('x')\n", "write"),
    ("open(p, 'w')\n", "write"), ("im.save(p)\n", "write"), ("import shutil\nshutil.copyfile(a, b)\n", "write"),
    ("p.open('wb')\n", "write"), ("import os\nos.replace(a, b)\n", "write"),
])
def test_the_scanner_sees_each_kind(tmp_path, monkeypatch, source, finds):
    """The checks above would fail for a module written the forbidden way (so their silence means something)."""
    pkg = tmp_path / "parity"
    pkg.mkdir()
    (pkg / "bad.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "PARITY", pkg)
    got = {"http": http_importers(), "json": json_parsers(), "write": file_writers()}
    assert got[finds] and all(not v for k, v in got.items() if k != finds), got
