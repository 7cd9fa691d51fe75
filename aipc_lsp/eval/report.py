"""Summaries, the table `aipc-lsp eval` prints, and its --plot chart."""

from __future__ import annotations

import math
from pathlib import Path

from aipc_lsp.bench.stats import percentile

METRICS = (("exact", "exact"), ("edit_sim", "edit sim"), ("pass_at_1", "pass@1"), ("empty", "empty"))


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(results: list[dict]) -> dict:
    checked = [r["passed"] for r in results if r["passed"] is not None]
    times = [r["ms"] for r in results if r["ms"] is not None]
    return {"n": len(results), "exact": _mean([float(r["exact"]) for r in results]),
            "edit_sim": _mean([r["edit_sim"] for r in results]),
            "pass_at_1": _mean([float(p) for p in checked]), "n_checked": len(checked),
            "empty": _mean([float(r["empty"]) for r in results]),
            "ms_p50": percentile(times, 50), "ms_p95": percentile(times, 95),
            "errors": sum(1 for r in results if r.get("error"))}


def breakdown(results: list[dict], key: str) -> dict:
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r[key], []).append(r)
    return {name: summarize(group) for name, group in groups.items()}


def check_targets(report: dict) -> list[dict]:
    """Issue 19's quality targets: exact match and pass@1 of this server ahead of llama.cpp's
    (asked as llama.vim asks it) and at least twice the prefix-only baseline's, where measured.
    Each row also counts the tasks only one side got right (`paired`), and for "ahead" the
    chance of a split that uneven if the two were equally good (two-sided sign test)."""
    rows_by_kind = {c["kind"]: c for c in report["contenders"]}
    by_kind = {kind: c.get("summary") for kind, c in rows_by_kind.items()}
    ours = by_kind.get("server")
    rows = []
    for key, name in (("exact", "exact match"), ("pass_at_1", "pass@1")):
        for kind, goal, met in (("remote", "ahead of llama.cpp (llama.vim's prompt)", lambda a, b: a > b),
                                ("baseline", ">= 2x the prefix-only baseline", lambda a, b: a >= 2 * b)):
            if kind not in by_kind:
                continue
            value, other = (ours or {}).get(key), (by_kind[kind] or {}).get(key)
            # Failed requests are scored as no suggestion; a verdict on them would be about the connection.
            failed = sum((summary or {}).get("errors") or 0 for summary in (ours, by_kind[kind]))
            row = {"target": f"{name} {goal}", "value": value, "other": other,
                   "met": None if value is None or other is None or failed else met(value, other)}
            if failed:
                row["failed"] = failed
            paired = paired_counts(rows_by_kind.get("server", {}).get("results"), rows_by_kind[kind].get("results"),
                                   "passed" if key == "pass_at_1" else key)
            if paired is not None:
                if kind == "remote":
                    paired["p"] = sign_test(paired["ours_only"], paired["theirs_only"])
                row["paired"] = paired
            rows.append(row)
    return rows


def paired_counts(ours: list[dict] | None, theirs: list[dict] | None, key: str) -> dict | None:
    """Tasks right for one contender and not the other (`key` true), over the tasks both scored."""
    if not ours or not theirs:
        return None
    other = {r["id"]: r.get(key) for r in theirs}
    pairs = [(bool(r.get(key)), bool(other[r["id"]])) for r in ours
             if r.get(key) is not None and other.get(r["id"]) is not None]
    return {"ours_only": sum(1 for a, b in pairs if a and not b),
            "theirs_only": sum(1 for a, b in pairs if b and not a), "tasks": len(pairs)}


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test (McNemar's exact test on the discordant pairs): the chance of a
    split at least this uneven between two equally good contenders."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _summary_row(label: str, s: dict) -> str:
    """One contender's line of the table: a summary's figures under the header's columns."""
    return (f"{label[:48]:48} {pct(s['exact']):>7} {_num(s['edit_sim'], '{:.3f}'):>9} "
            f"{pct(s['pass_at_1']):>7} {pct(s['empty']):>7} {_num(s['ms_p50']):>7} {_num(s['ms_p95']):>7}")


def _other_files(report: dict) -> str:
    if not report["other_files"]:
        return "not opened"
    unrelated = report.get("unrelated", 0)
    return f"opened, and {unrelated} unrelated per task" if unrelated else "opened"


def render_table(report: dict) -> str:
    counts = ", ".join(f"{source} {n}" for source, n in report["task_counts"].items())
    out = [f"aipc-lsp eval{' --quick' if report['quick'] else ''}: {report['tasks']} tasks ({counts}; "
           f"stdlib of Python {report['python']}); other files {_other_files(report)}", ""]
    out.append(f"{'contender':48} {'exact':>7} {'edit sim':>9} {'pass@1':>7} {'empty':>7} {'p50 ms':>7} {'p95 ms':>7}")
    for c in report["contenders"]:
        if "error" in c and not c.get("summary"):
            out.append(f"{c['label'][:48]:48} error: {c['error']}")
            continue
        s = c["summary"]
        out.append(_summary_row(c['label'], s))
        if c.get("error"):
            out.append(f"{'':48} (stopped early: {c['error']})")
        if s.get("errors"):
            out.append(f"{'':48} ({s['errors']} requests failed; scored as no suggestion)")
        if s["empty"] == 1.0:
            out.append(f"{'':48} (every answer was empty: is the model working? try `aipc-lsp complete FILE:LINE:COL`)")
        for slot in c.get("slots") or ():
            if slot.get("error"):
                out.append(f"{'':48} (slot {slot.get('slot')} ended the run {slot.get('state')}: {slot['error']})")
        if c.get("other_files_kept"):
            out.append(f"{'':48} (the server kept other files after {c['other_files_kept']} tasks: "
                       "later answers may depend on the order of the tasks)")
    originals = [c for c in report["contenders"] if c.get("original")]
    if originals:
        out += ["", f"the original {originals[0]['original']['n']} tasks alone (the set until the sixteenth session):"]
        for c in originals:
            s = c["original"]
            out.append(_summary_row(c['label'], s))
    if report.get("targets"):
        out += ["", "Targets (issue 19):"]
        for t in report["targets"]:
            verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
            if t.get("failed"):
                verdict += f" ({t['failed']} requests failed)"
            line = f"  {t['target']:52} {pct(t['value']):>7} vs {pct(t['other']):>7}  {verdict}"
            paired = t.get("paired")
            if paired:
                line += f"  (right only here {paired['ours_only']}, only there {paired['theirs_only']}"
                line += f", sign test p={paired['p']:.2f})" if "p" in paired else ")"
            out.append(line)
    out += ["", "exact / pass@1 by source and kind:"]
    groups = [("source", g) for g in report["task_counts"]] + [("kind", k) for k in report["kinds"]]
    out.append(f"{'contender':48} " + " ".join(f"{name:>15}" for _, name in groups))
    for c in report["contenders"]:
        if not c.get("summary"):
            continue
        cells = []
        for key, name in groups:
            s = c[f"by_{key}"].get(name)
            cells.append("-" if s is None else f"{pct(s['exact'])}/{pct(s['pass_at_1'])}")
        out.append(f"{c['label'][:48]:48} " + " ".join(f"{cell:>15}" for cell in cells))
    return "\n".join(out)


def plot(report: dict, path: Path) -> None:
    figure(report).savefig(path, dpi=110)


def figure(report: dict):
    """Bars per metric per contender, and their latencies."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'aipc-lsp[plot]'") from None
    contenders = [c for c in report["contenders"] if c.get("summary")]
    fig = Figure(figsize=(11, 4.5))
    quality, latency = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1.3]})
    width = 0.8 / max(1, len(contenders))
    for i, c in enumerate(contenders):
        values = [c["summary"][key] or 0 for key, _ in METRICS]
        bars = quality.bar([x + i * width for x in range(len(METRICS))], values, width, label=c["label"])
        quality.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize="x-small")
    quality.set_xticks([x + width * (len(contenders) - 1) / 2 for x in range(len(METRICS))], [n for _, n in METRICS])
    quality.set_ylim(0, 1.05)
    quality.set_title(f"{report['tasks']} tasks: higher is better (empty: lower)")
    quality.legend(fontsize="small")
    labels = [c["label"] for c in contenders]
    latency.bar(range(len(contenders)), [c["summary"]["ms_p50"] or 0 for c in contenders],
                color=[f"C{i}" for i in range(len(contenders))])
    latency.scatter(range(len(contenders)), [c["summary"]["ms_p95"] or 0 for c in contenders], color="k",
                    marker="_", s=200, label="p95", zorder=3)
    latency.set_xticks(range(len(contenders)), [f"#{i + 1}" for i in range(len(labels))])
    latency.set_ylabel("request -> answer, ms (p50 bar)")
    latency.set_title("Latency")
    latency.legend(fontsize="small")
    fig.suptitle(f"aipc-lsp eval: {', '.join(f'#{i + 1} {label}' for i, label in enumerate(labels))}", fontsize="small")
    fig.tight_layout()
    return fig
