"""`aipc-lsp eval --compare BEFORE.json AFTER.json`: two runs' answers task by task.

A change to the prompt or to post-processing is tried on the development tasks first (`--sources
dev`), once without it and once with it (`--json`); this says, over the tasks both runs answered,
how the figures moved, how many tasks only one run got right (with the sign test the eval's
targets use) and which tasks changed, with both answers and the expected text.
"""

from __future__ import annotations

import json
from pathlib import Path

from aipc_lsp.eval.report import paired_counts, pct, sign_test, summarize


class CompareError(Exception):
    """A file that is not an `aipc-lsp eval --json` report, or two without a task in common."""


def load_run(path: str | Path) -> tuple[str, list[dict]]:
    """The label and per-task results of a report's first contender (this server's row)."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        row = report["contenders"][0]
    except OSError as exc:
        raise CompareError(f"{path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise CompareError(f"{path}: not a report of `aipc-lsp eval --json`") from None
    if not isinstance(row, dict):
        raise CompareError(f"{path}: not a report of `aipc-lsp eval --json`")
    if not isinstance(row.get("results"), list):
        raise CompareError(f"{path}: its first contender has no answers ({row.get('error', 'none')})")
    return str(row.get("label", path)), row["results"]


def compare(before: list[dict], after: list[dict]) -> dict:
    """Both runs summed over the tasks both answered; tasks right in one only; the changed tasks."""
    theirs = {r["id"]: r for r in after}
    common = [r["id"] for r in before if r["id"] in theirs]
    if not common:
        raise CompareError("the two runs have no task in common")
    mine = {r["id"]: r for r in before}
    a, b = [mine[i] for i in common], [theirs[i] for i in common]
    out = {"tasks": len(common), "before": summarize(a), "after": summarize(b),
           "differ": sum(x.get("suggestion") != y.get("suggestion") for x, y in zip(a, b)), "changed": []}
    for key in ("exact", "passed"):
        paired = paired_counts(b, a, key)  # "ours" is the run after the change
        paired["p"] = sign_test(paired["ours_only"], paired["theirs_only"])
        out[key] = paired
    for x, y in zip(a, b):
        moved = [k for k in ("exact", "passed") if bool(x.get(k)) != bool(y.get(k))]
        if moved:
            won = any(y.get(k) and not x.get(k) for k in moved)
            out["changed"].append({"id": x["id"], "won": won, "before": x.get("suggestion", ""),
                                   "after": y.get("suggestion", ""), "expected": x.get("expected", "")})
    return out


def render(result: dict, before_label: str, after_label: str) -> str:
    b, a = result["before"], result["after"]
    out = [f"over the {result['tasks']} tasks both runs answered ({result['differ']} answers differ):",
           f"{'':12} {'before':>9} {'after':>9}"]
    for key, name in (("exact", "exact"), ("edit_sim", "edit sim"), ("pass_at_1", "pass@1"), ("empty", "empty")):
        show = (lambda v: "-" if v is None else f"{v:.3f}") if key == "edit_sim" else pct
        out.append(f"{name:12} {show(b[key]):>9} {show(a[key]):>9}")
    for key, name in (("exact", "first lines right"), ("passed", "checks passed")):
        p = result[key]
        if p["tasks"]:
            out.append(f"{name}: only after {p['ours_only']}, only before {p['theirs_only']} "
                       f"(sign test p={p['p']:.2f})")
    if result["changed"]:
        out += ["", "tasks that changed (exact match or pass@1):"]
        for c in result["changed"]:
            out.append(f"  {'won ' if c['won'] else 'lost'} {c['id']}: {_short(c['before'])} -> {_short(c['after'])}"
                       f"  (expected {_short(c['expected'])})")
    return "\n".join([f"before: {before_label}", f"after:  {after_label}"] + out)


def _short(text: str, width: int = 48) -> str:
    shown = repr(text)
    return shown if len(shown) <= width else shown[: width - 3] + "..."


def main(before_path: str, after_path: str) -> str:
    before_label, before = load_run(before_path)
    after_label, after = load_run(after_path)
    try:
        result = compare(before, after)
    except (KeyError, TypeError, AttributeError):
        raise CompareError(f"{before_path} or {after_path}: a task's result lacks what "
                           "`aipc-lsp eval --json` writes") from None
    return render(result, f"{before_label} ({before_path})", f"{after_label} ({after_path})")
