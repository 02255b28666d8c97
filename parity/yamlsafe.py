"""YAML from users, at a bounded cost: every case file and job config goes through here.

PyYAML's SafeLoader never runs code, but it trusts the document's shape: a few hundred bytes of nested aliases
(a "billion laughs") expand to billions of nodes as soon as anything walks the result, a recursive alias makes
every walker recurse forever, and a duplicated key silently keeps the last value. So the document is composed to
its node graph first (aliases are shared nodes there, so this is cheap), measured, and only then constructed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from parity.errors import ConfigError

log = logging.getLogger("parity")

MAX_BYTES = 8 * 1024 * 1024     # a real AI Toolkit config or case file is a few KB
MAX_NODES = 100_000             # nodes after alias expansion (a large config has a few hundred)
MAX_DEPTH = 200                 # nesting depth after alias expansion


def _where(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}"


def _measure(root: yaml.Node, path: Path | None) -> int:
    """Expanded node count, with recursion and depth caught. Iterative, memoised per node object: an alias is
    the anchored node itself, so a bomb costs its real (small) size to measure."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 0, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ConfigError(f"recursive YAML alias ({_where(node)}): a value that contains itself", path)
        if depth > MAX_DEPTH:
            raise ConfigError(f"YAML nested deeper than {MAX_DEPTH} levels ({_where(node)})", path)
        on_path.add(key)
        stack.append((node, depth, True))
        for child in _children(node):
            if id(child) in on_path:
                raise ConfigError(f"recursive YAML alias ({_where(child)}): a value that contains itself", path)
            stack.append((child, depth + 1, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _duplicate_keys(root: yaml.Node) -> list[tuple[str, yaml.Node]]:
    """(key, its repeated node) for every mapping key that occurs twice in one mapping."""
    found, seen_nodes, todo = [], set(), [root]
    while todo:
        node = todo.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for k, _ in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if k.value in keys:
                        found.append((k.value, k))
                    keys.add(k.value)
        todo.extend(_children(node))
    return found


def check_size(text: str, path: Path | None) -> None:
    if len(text) > MAX_BYTES:
        raise ConfigError(f"file is {len(text)} bytes; parity reads YAML/JSON configs of at most {MAX_BYTES}", path)


def load(text: str, path: Path | None, *, loader: type = yaml.SafeLoader, duplicates: str = "error") -> Any:
    """Parse `text` (from `path`, named in every error) with `loader` (a SafeLoader subclass), refusing documents
    over MAX_BYTES, MAX_NODES after alias expansion, MAX_DEPTH, or with recursive aliases. Duplicate keys:
    "error" raises ConfigError naming key and line; "warn" logs and keeps the last value (what PyYAML, and so AI
    Toolkit, does). yaml.YAMLError propagates for the caller's own malformed-YAML message."""
    node = compose(text, path, loader=loader, duplicates=duplicates)
    return construct(node, loader)


def compose(text: str, path: Path | None, *, loader: type = yaml.SafeLoader, duplicates: str = "error"):
    """The checked node graph (None for an empty document); see `load`."""
    check_size(text, path)
    ldr = loader(text)
    try:
        node = ldr.get_single_node()
    except RecursionError:  # PyYAML's parser recurses once per nesting level
        raise ConfigError(f"YAML nested deeper than {MAX_DEPTH} levels", path) from None
    finally:
        ldr.dispose()
    if node is None:
        return None
    size = _measure(node, path)
    if size > MAX_NODES:
        raise ConfigError(f"YAML expands to {size} values through aliases (more than {MAX_NODES}); refused "
                          "(an alias bomb?)", path)
    for key, knode in _duplicate_keys(node):
        message = f"duplicate key {key!r} ({_where(knode)})"
        if duplicates == "error":
            raise ConfigError(f"{message}: each key may appear once", path)
        log.warning("%s: %s; AI Toolkit uses the last value, and so does parity", path, message)
    return node


def construct(node, loader: type = yaml.SafeLoader) -> Any:
    if node is None:
        return None
    ldr = loader("")
    try:
        return ldr.construct_document(node)
    finally:
        ldr.dispose()
