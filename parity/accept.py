"""`parity accept`: turn the failing items of a run into known differences of their cases.

For each case with failing items it widens the case's `expect:` block: every knob those items mismatch joins
`expect.mismatches`, and `expect.tier` becomes the worst tier seen (of the accepted items and of the items the case
already expected), so a rerun of the same inputs passes while a new mismatching knob or a worse tier still fails
(parity.cases.Expectation). The YAML is edited round-trip (ruamel.yaml): comments, key order and quoting stay.

Results are trusted only for the case file they judged: each item records `case_sha256`, the SHA-256 of its case
file when it was planned. A case file that is gone, or whose bytes differ, makes the whole command refuse
(exit 2) before anything is written. ERROR items are never accepted; DIFFERENT only with `allow_different`."""

from __future__ import annotations

import copy
import difflib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.cases import Expectation, case_file_sha256, load_case
from parity.errors import ConfigError, ParityError
from parity import knobs
from parity.tier import DIFFERENT, ERROR, worst_tier


@dataclass
class CaseEdit:
    """One case file's accepted items and its new text."""

    case: str
    path: Path
    accepted: list[dict[str, Any]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (item id, why)
    widened: list[str] = field(default_factory=list)               # what the edit widens, in words
    old_text: str = ""
    new_text: str = ""

    @property
    def changed(self) -> bool:
        return self.new_text != self.old_text

    def diff(self) -> str:
        return "".join(difflib.unified_diff(self.old_text.splitlines(keepends=True),
                                            self.new_text.splitlines(keepends=True),
                                            fromfile=f"{self.path}", tofile=f"{self.path} (accepted)"))


def failing_by_case(items: list[dict[str, Any]], case: str | None) -> dict[str, list[dict[str, Any]]]:
    """The items below their gate, grouped by case name (only `case` when given; an unknown name is an error)."""
    if case is not None and not any(it.get("case") == case for it in items):
        known = sorted({str(it.get("case")) for it in items if it.get("case")})
        raise ParityError(f"--case {case!r}: no item of that case in these results (cases: {', '.join(known)})")
    groups: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        if not it.get("passed") and (case is None or it.get("case") == case):
            groups.setdefault(str(it.get("case") or ""), []).append(it)
    return groups


def locate_case(name: str, items: list[dict[str, Any]], search: list[Path]) -> tuple[Path | None, str | None]:
    """(the case file these results judged, None) or (None, why not: one line naming the case). The file is the
    one recorded (`case_file`) if its bytes still hash to `case_sha256`, else a file in `search` that does (results
    made on another machine, e.g. a CI runner, name that machine's path)."""
    files = {it.get("case_file") for it in items}
    if len(files) != 1 or None in files:
        return None, f"case {name!r}: the results do not record its case file (a `parity diff` run has none)"
    recorded = Path(str(files.pop()))
    hashes = {it.get("case_sha256") for it in items}
    if None in hashes or len(hashes) != 1:
        return None, (f"case {name!r}: the results do not record which version of {recorded} they judged "
                      "(no case_sha256): re-run the case, then accept")
    digest = hashes.pop()
    candidates = [recorded] + [f for d in search if d.is_dir() for f in sorted([*d.glob("*.yaml"), *d.glob("*.yml")])]
    edited = None
    for f in candidates:
        if not f.is_file():
            continue
        if case_file_sha256(f) == digest:
            return f.resolve(), None
        if f.name == recorded.name and edited is None:
            edited = f
    if edited is not None:
        return None, (f"case {name!r}: {edited} changed since the run (its SHA-256 differs): re-run the case, "
                      "then accept")
    where = f" (nor is it in {', '.join(map(str, search))})" if search else ""
    return None, f"case {name!r}: its case file {recorded} is gone since the run{where}"


def refusal(item: dict[str, Any], allow_different: bool) -> str | None:
    """Why this failing item cannot become a known difference, or None."""
    if item.get("tier") == ERROR.name:
        return "an ERROR is never accepted: fix what failed (" + str(item.get("error") or "error").splitlines()[0] + ")"
    if item.get("tier") == DIFFERENT.name and not allow_different:
        return f"tier {DIFFERENT.name}: a different picture is accepted only with --allow-different"
    return None


def widened_expectation(old: Expectation, accepted: list[dict[str, Any]], already: list[dict[str, Any]]
                        ) -> tuple[list[str], str | None, list[str]]:
    """(expect.mismatches, expect.tier, what widened in words) covering `accepted` and the items the case
    already expects (`already`), so none of them fails after the edit."""
    listed = list(old.mismatches or ())
    new_knobs = [k for k in knobs.knob_names() if any(k in it.get("mismatches", []) for it in accepted) and k not in listed]
    mismatches = listed + new_knobs
    widened = [f"expect.mismatches + {k} ({', '.join(it['id'] for it in accepted if k in it.get('mismatches', []))})"
               for k in new_knobs]
    if old.tier is None and old.mismatches is not None and all(it.get("mismatches") for it in accepted):
        return mismatches, None, widened  # no ceiling was set: any tier of a listed difference already passes
    tiers = [it["tier"] for it in accepted + already] + ([old.tier] if old.tier else [])
    tier = worst_tier(tiers)
    if tier != old.tier:
        widened.append(f"expect.tier: {old.tier or 'none'} -> {tier}")
    if old.mismatches is None:
        widened.append(f"expect.mismatches: none -> [{', '.join(mismatches)}] (a knob not listed now fails)")
    return mismatches, tier, widened


def plan_case(name: str, path: Path, items: list[dict[str, Any]], all_items: list[dict[str, Any]],
              allow_different: bool) -> CaseEdit:
    """The edit of the case file `path` (located and checked: `locate_case`) for its failing `items`."""
    case = load_case(path)
    edit = CaseEdit(case=name, path=path, old_text=path.read_text(encoding="utf-8"))
    for it in items:
        why = refusal(it, allow_different)
        (edit.refused.append((it["id"], why)) if why else edit.accepted.append(it))
    edit.new_text = edit.old_text
    if not edit.accepted:
        return edit
    already = [it for it in all_items if it.get("case") == name and it.get("passed") and it.get("expected")]
    mismatches, tier, edit.widened = widened_expectation(case.expect, edit.accepted, already)
    edit.new_text = edit_expect(edit.old_text, mismatches, tier, path)
    after = Expectation(case.expect.min_tier, case.expect.thresholds, tuple(mismatches), tier)
    for it in edit.accepted:  # the edit must make every accepted item pass, judged as the runner judges it
        gate = Expectation(it.get("gate") or after.min_tier, after.thresholds, after.mismatches, after.tier)
        if not gate.judge(it["tier"], it.get("metrics") or {}, list(it.get("mismatches") or []))[0]:
            raise ParityError(f"case {name!r}: accepting {it['id']} would not make it pass (a bug in parity)")
    return edit


# ------------------------------------------------------------------------------------------- round-trip YAML
def _yaml_indent(text: str) -> tuple[int, int, int]:
    """(mapping, sequence, offset) indentation the file already uses, so the rewrite leaves other lines as they
    were: a nested key's indent, and how far a block list's dash sits inside its key."""
    mapping, offset = 2, 0
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for prev, line in zip(lines, lines[1:]):
        key = re.match(r"^(\s*)[^\s#-][^:]*:\s*(#.*)?$", prev)
        if not key:
            continue
        indent = len(line) - len(line.lstrip())
        if line.lstrip().startswith("- "):
            offset = max(indent - len(key.group(1)), 0)
        elif indent > len(key.group(1)):
            mapping = indent - len(key.group(1))
    return mapping, offset + 2, offset


def edit_expect(text: str, mismatches: list[str], tier: str | None, path: Path) -> str:
    """`text` with expect.mismatches (a flow list, or the file's own list extended) and expect.tier set."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.error import YAMLError

    yaml = YAML()  # round-trip: comments, key order, quotes and flow styles kept
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long line
    mapping, sequence, offset = _yaml_indent(text)
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    try:
        data = yaml.load(text)
    except YAMLError as e:
        raise ConfigError(f"cannot edit the case file: {e}", path) from None
    holder = _last_key(data)  # ruamel hangs the comments that follow a block on its last key
    if not isinstance(data.get("expect"), CommentedMap):
        data["expect"] = CommentedMap()
    expect = data["expect"]
    listed = expect.get("mismatches")
    if isinstance(listed, CommentedSeq):
        listed.extend(k for k in mismatches if k not in listed)
    else:
        seq = CommentedSeq(mismatches)
        seq.fa.set_flow_style()
        expect["mismatches"] = seq
    if tier is not None:
        expect["tier"] = tier
    _move_trailing_comment(holder, _last_key(data))
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def _last_key(node: Any) -> tuple[Any, Any] | None:
    """(mapping, key) of the last key in document order: the last key of the last nested mapping."""
    from ruamel.yaml.comments import CommentedMap

    found = None
    while isinstance(node, CommentedMap) and node:
        key = list(node.keys())[-1]
        found, node = (node, key), node[key]
    return found


def _move_trailing_comment(old: tuple[Any, Any] | None, new: tuple[Any, Any] | None) -> None:
    """The full-line comments after the old last key move below the new last key (its end-of-line comment stays),
    so a file's closing comment stays at the end instead of landing above the added keys."""
    if old is None or new is None or old == new:
        return
    entry = old[0].ca.items.get(old[1])
    token = entry[2] if entry and len(entry) > 2 else None
    if token is None or "\n" not in token.value:
        return
    eol, rest = token.value.split("\n", 1)
    if not rest.strip():
        return
    moved = copy.deepcopy(token)
    token.value, moved.value = eol + "\n", "\n" + rest
    new[0].ca.items.setdefault(new[1], [None, None, None, None])[2] = moved
