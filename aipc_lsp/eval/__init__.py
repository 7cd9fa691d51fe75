"""`aipc-lsp eval`: completion quality through the real server over stdio, and the same tasks
against a remote llama.cpp server asked as llama.vim asks it, compared in one run.

tasks.py builds the tasks, runner.py drives the server, remote.py (with llama_vim.py) the peer,
scoring.py scores each answer, report.py prints, writes and draws. See docs/QUALITY.md.
"""

from __future__ import annotations

import asyncio
import json
import platform
import sys
from pathlib import Path

from aipc_lsp import setting_pairs
from aipc_lsp.config import CompletionSettings
from aipc_lsp.eval import remote as remote_peer
from aipc_lsp.eval import runner
from aipc_lsp.eval.report import breakdown, check_targets, render_table, summarize
from aipc_lsp.eval.scoring import evaluate
from aipc_lsp.eval.tasks import DEV_SOURCE, KINDS, PROJECT_SOURCE, SOURCES, Task, build_tasks, with_unrelated


class EvalError(Exception):
    """Bad input to `aipc-lsp eval`, with what to change."""


def parse_sets(pairs: list[str]) -> dict:
    """`--set key=value` (repeatable) as initializationOptions, checked as the server checks them."""
    try:
        return setting_pairs.parse_sets(pairs)
    except ValueError as exc:
        raise EvalError(str(exc)) from None


def _choice(value: str | None, allowed: tuple[str, ...], flag: str,
            default: tuple[str, ...] | None = None) -> tuple[str, ...]:
    if value is None:
        return allowed if default is None else default
    chosen = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        raise EvalError(f"{flag}: {', '.join(unknown) or 'nothing'} is not one of {', '.join(allowed)}")
    return chosen


def contender(label: str, kind: str, tasks: list[Task], outcome: dict) -> dict:
    """One row of the report: every task scored (one the run never reached counts as no suggestion)."""
    answers = outcome.get("answers") or {}
    if not answers:
        return {"label": label, "kind": kind, "error": outcome.get("error", "no answers")}
    missing = {"suggestion": "", "ms": None, "error": "not reached"}
    results = [evaluate(t, answers.get(t.id) or {**missing, "accepted": t.text}) for t in tasks]
    row = {"label": label, "kind": kind, "summary": summarize(results), "by_source": breakdown(results, "source"),
           "by_kind": breakdown(results, "kind"), "results": results}
    original = [r for r, t in zip(results, tasks) if t.original]
    if original and len(original) < len(results):
        row["original"] = summarize(original)  # the sessions before the sixteenth measured these alone
    row.update({k: v for k, v in outcome.items() if k not in ("answers",)})
    return row


def run_eval(*, model: str | None = None, quick: bool = False, limit: int | None = None, kinds: str | None = None,
             sources: str | None = None, sets: list[str] = (), remote: str | None = None, label: str | None = None,
             baseline: str | None = None, other_files: bool = True, unrelated: int = 0, config: str | None = None,
             progress=lambda msg: None, saved=lambda report: None) -> dict:
    """`baseline`: a model also run through the server with the code before the cursor only
    (fim=off, other settings at their defaults): the issue's "today's default" to beat 2x.
    `saved(report)` is called after each contender (a long run keeps what it measured).
    `config`: the settings.toml the server reads (`--config`; settings only a file may set, such as
    `remote.url`, come from there)."""
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be at least 1, got {limit}")
    options = parse_sets(list(sets))
    if model:
        options["model"] = model
    chosen_kinds = _choice(kinds, KINDS, "--kinds")
    tasks = build_tasks(sources=_choice(sources, SOURCES + (DEV_SOURCE, PROJECT_SOURCE), "--sources", default=SOURCES), kinds=chosen_kinds, quick=quick, limit=limit)
    if not tasks:
        raise EvalError("no tasks match --sources/--kinds/--limit")
    if unrelated < 0:
        raise EvalError(f"--unrelated must be 0 or more, got {unrelated}")
    unrelated = unrelated if other_files else 0  # they are other files
    tasks = with_unrelated(tasks, unrelated)
    counts: dict[str, int] = {}
    for task in tasks:
        counts[task.source] = counts.get(task.source, 0) + 1
    report: dict = {"python": platform.python_version(), "quick": quick, "tasks": len(tasks), "task_counts": counts,
                    "kinds": list(chosen_kinds), "options": options, "other_files": other_files,
                    "unrelated": unrelated, "contenders": []}
    command = runner.SERVE + (("--config", str(Path(config).expanduser())) if config else ())
    progress(f"server: aipc-lsp serve over stdio, {len(tasks)} tasks ...")
    ours = asyncio.run(runner.run(tasks, options=options, open_other_files=other_files, progress=progress,
                                  command=command))
    report["contenders"].append(contender(label or f"aipc-lsp ({model or 'default model'})", "server", tasks, ours))
    saved(report)
    if baseline:
        progress(f"baseline: aipc-lsp serve with {baseline}, prefix only ...")
        base = asyncio.run(runner.run(tasks, options={"model": baseline, "completion": {"fim": "off"}},
                                      open_other_files=other_files, progress=progress, command=command))
        report["contenders"].append(contender(f"aipc-lsp ({baseline}, prefix only)", "baseline", tasks, base))
        saved(report)
    if remote:
        progress(f"remote: {remote} as llama.vim asks it ...")
        max_tokens = options.get("completion", {}).get("max_tokens", CompletionSettings().max_tokens)
        theirs = remote_peer.run(remote, tasks, max_tokens=max_tokens, open_other_files=other_files, progress=progress)
        row = contender(f"llama.cpp, as llama.vim asks ({theirs.get('model') or remote})", "remote", tasks, theirs)
        report["contenders"].append({**row, "url": remote})
    report["targets"] = check_targets(report)
    saved(report)
    return report


def main(args) -> int:
    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def save(report: dict) -> None:
        if args.json and args.json != "-":
            Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")

    if args.compare:
        from aipc_lsp.eval.compare import CompareError, main as compare_main

        try:
            print(compare_main(*args.compare))
        except CompareError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        report = run_eval(model=args.model, quick=args.quick, limit=args.limit, kinds=args.kinds, sources=args.sources,
                          sets=args.set or [], remote=args.remote, label=args.label, baseline=args.baseline,
                          other_files=not args.no_other_files, unrelated=args.unrelated, config=args.config,
                          progress=progress, saved=save)
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render_table(report))
    if args.json == "-":
        print(json.dumps(report, indent=2, default=str))
    if args.plot:
        from aipc_lsp.eval.report import plot

        plot(report, Path(args.plot))
    ours = report["contenders"][0]
    return 1 if "error" in ours and not ours.get("summary") else 0
