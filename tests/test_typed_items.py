"""The runner and external/ name their types: a planned item is a PlannedItem, a spec a RenderSpec, a record an
ItemRecord (issue 30). `Any` stays only where a value really is arbitrary JSON; an item typed `Any` (or not typed
at all) lets a wrong argument pass until it breaks deep inside a run."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "parity"
PACKAGES = ("runner", "external")

# parameter (or dataclass field) name -> the type its annotation must name
TYPED = {"item": "PlannedItem", "items": "PlannedItem", "spec": "RenderSpec", "best": "RenderSpec",
         "rec": "ItemRecord", "record": "ItemRecord", "err": "CaseError"}
# names that must be annotated, with anything but Any (images, results, comparisons, engines, sources)
ANNOTATED = {"image", "result", "comparison", "pool", "endpoint", "sources", "engine", "cache", "comparer",
             "follow_ups", "entries", "entry", "render", "score", "without_lora", "thresholds", "loaded"}
# (file, name) whose value is arbitrary JSON, typed as such: the server's answer for one result image
JSON = {("endpoint.py", "image")}


def _names(annotation: ast.expr | None) -> set[str]:
    if annotation is None:
        return set()
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        annotation = ast.parse(annotation.value, mode="eval").body
    return {n.id for n in ast.walk(annotation) if isinstance(n, ast.Name)} | \
           {n.attr for n in ast.walk(annotation) if isinstance(n, ast.Attribute)}


def _typed_names(tree: ast.AST) -> list[tuple[str, ast.expr | None, int]]:
    """(name, annotation, line) of every function parameter and class-level annotated field."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs]:
                if arg.arg not in ("self", "cls"):
                    out.append((arg.arg, arg.annotation, arg.lineno))
        elif isinstance(node, ast.ClassDef):
            out += [(s.target.id, s.annotation, s.lineno) for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
    return out


def problems(root: Path = PACKAGE) -> list[str]:
    found = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).glob("*.py")):
            for name, annotation, line in _typed_names(ast.parse(path.read_text(encoding="utf-8"))):
                names = _names(annotation)
                where = f"{path.relative_to(root.parent)}:{line} {name}"
                if name in TYPED and TYPED[name] not in names:
                    found.append(f"{where}: typed {ast.unparse(annotation) if annotation else 'not at all'}, "
                                 f"not {TYPED[name]}")
                elif name in ANNOTATED and (path.name, name) not in JSON and (annotation is None or "Any" in names or "object" in names):
                    found.append(f"{where}: typed {ast.unparse(annotation) if annotation else 'not at all'}")
    return found


def test_items_specs_and_records_are_typed_in_runner_and_external():
    assert problems() == []


def test_the_check_sees_an_item_typed_any(tmp_path):
    for pkg in PACKAGES:
        (tmp_path / "parity" / pkg).mkdir(parents=True)
    (tmp_path / "parity" / "runner" / "x.py").write_text(
        "from typing import Any\n"
        "def f(item: Any, rec: 'ItemRecord', image): ...\n"
        "class C:\n    spec: object\n", encoding="utf-8")
    found = problems(tmp_path / "parity")
    assert len(found) == 3 and all("runner/x.py" in f for f in found), found
    assert any(" item: typed Any" in f for f in found) and any(" image: typed not at all" in f for f in found)
    assert any(" spec: typed object, not RenderSpec" in f for f in found)
