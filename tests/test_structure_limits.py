"""Size limits on parity/'s code: no function over 60 lines, no class over 200, unless a `# long: <reason>`
comment on the def line or the line above says why (issue #19). Lengths are the ast's (end_lineno - lineno + 1),
so a docstring and comments count, decorators do not."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "parity"
FUNCTION_LIMIT, CLASS_LIMIT = 60, 200
RUNNER_LIMIT = 150  # the runner is a short pipeline; its policies and files live in their own modules


def _excused(lines: list[str], node: ast.AST) -> bool:
    """A `# long:` comment with a reason on the def/class line, the line above it, or above its decorators."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    for n in {node.lineno, node.lineno - 1, first - 1}:
        if 1 <= n <= len(lines):
            _, sep, reason = lines[n - 1].partition("# long:")
            if sep and reason.strip():
                return True
    return False


def oversized(source: str, name: str = "<source>") -> list[str]:
    """'name:line qualname N lines (limit L)' for every function or class over its limit and not excused."""
    lines = source.splitlines()
    out: list[str] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                limit = CLASS_LIMIT if isinstance(child, ast.ClassDef) else FUNCTION_LIMIT
                length = child.end_lineno - child.lineno + 1
                if length > limit and not _excused(lines, child):
                    out.append(f"{name}:{child.lineno} {prefix}{child.name} {length} lines (limit {limit})")
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return out


def _body(n: int) -> str:
    return "".join(f"    x{i} = {i}\n" for i in range(n))


def test_the_checker_finds_long_functions_and_classes_and_honours_a_reasoned_comment():
    long_fn = "def f():\n" + _body(60)  # 61 lines
    assert oversized("def f():\n" + _body(59)) == []
    assert oversized(long_fn) == ["<source>:1 f 61 lines (limit 60)"]
    assert oversized("# long: one table, splitting it hides the mapping\n" + long_fn) == []
    assert oversized(long_fn.replace("def f():", "def f():  # long: a generated table")) == []
    assert oversized("# long:\n" + long_fn) != []  # a comment without a reason does not excuse
    decorated = "import functools\n# long: cached lookup table\n@functools.cache\n" + long_fn
    assert oversized(decorated) == []
    nested = "class C:\n" + textwrap.indent(long_fn, "    ")
    assert oversized(nested) == ["<source>:2 C.f 61 lines (limit 60)"]
    big_class = "class C:\n" + "".join(f"    def m{i}(self):\n        return {i}\n" for i in range(100))
    assert oversized(big_class) == ["<source>:1 C 201 lines (limit 200)"]


def test_no_function_or_class_in_parity_over_its_limit_without_a_reason():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += oversized(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))
    assert not found, "over the size limits (split them, or say why with `# long: <reason>`):\n" + "\n".join(found)


def test_the_runner_stays_a_short_pipeline():
    tree = ast.parse((PACKAGE / "runner" / "pipeline.py").read_text(encoding="utf-8"))
    runner = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Runner")
    assert runner.end_lineno - runner.lineno + 1 < RUNNER_LIMIT
