"""Tables, target checks and the chart for `aipc-lsp bench`."""

from __future__ import annotations

import statistics
from pathlib import Path

TARGET_CONTEXT = 1536


def _f(value, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


# Issue 19's speed targets, as ratios to the --remote peer (llama.cpp's server on the same model)
# measured in the same run: (key, name, unit, limit, "<=" or ">=").
RATIO_TARGETS = (
    ("incremental", "incremental typing 1.5k (FIM): first token p50", "ms", 0.6, "<="),
    ("cold", "cold 1.5k prompt: first token p50", "ms", 0.5, "<="),
    ("decode", "decode", "tok/s", 1.5, ">="),
)
RSS_LIMIT = 1.0
CANCEL_MARGIN_MS = 5.0


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def decode_step_ms(report: dict) -> float | None:
    """One decode step of the server's configuration (with prompt lookup a step yields several
    tokens): the bare reference's, measured beside the server, else the engine table's."""
    server = report.get("server") or {}
    step = _median(r.get("bare_step_ms") for r in server.get("decode_rounds") or ())
    if step is None:
        bare = next((e for e in report.get("engines", []) if "error" not in e), {})
        step = bare.get("step_ms") or (1000 / bare["long_tokens_per_s"] if bare.get("long_tokens_per_s") else None)
    return step


def check_targets(report: dict) -> list[dict]:
    """Issue 19's targets: each with our figure, the peer's from the same run, their ratio and
    whether it is met (None: not measured, `note` says why)."""
    server = report.get("server") or {}
    contexts = server.get("contexts") or {}
    ctx = contexts.get(TARGET_CONTEXT) or contexts.get(str(TARGET_CONTEXT)) or {}
    remote = report.get("remote") or {}

    def alone(key):
        # The same figure from the engine alone (our engine API, no server), measured beside the
        # server's run: where the server's is above the target and this is too, the engine is why.
        return _median(r.get(key) for r in server.get("reference_typing") or ())

    ours = {"incremental": (ctx.get("incremental_first_ms") or {}).get("p50"),
            "cold": (ctx.get("cold_first_ms") or {}).get("p50"), "decode": server.get("server_tokens_per_s"),
            "rss": server.get("peak_rss_mb")}
    peers = {"incremental": remote.get("incremental_first_ms"), "cold": remote.get("cold_first_ms"),
             "decode": remote.get("tokens_per_s"), "rss": remote.get("peak_rss_mb")}
    engine_alone = {"incremental": alone("api_typing_first_ms"), "cold": alone("api_cold_first_ms")}
    # What token healing's grammar adds to the engine alone's keystroke for a word not typed
    # before (the peer compiles none).
    grammar = {"incremental": alone("healing_grammar_ms")}
    rows = []

    def ratio_row(key, name, unit, limit, compare, missing_peer):
        value, peer = ours[key], peers[key]
        ratio = value / peer if value is not None and peer else None
        met = None if ratio is None else (ratio <= limit if compare == "<=" else ratio >= limit)
        note = None
        if value is None:
            note = "not measured"
        elif not remote:
            note = "needs --remote URL (the peer's figure in the same run)"
        elif peer is None:
            note = f"the peer failed: {remote['error']}" if remote.get("error") else missing_peer
        rows.append({"target": name, "unit": unit, "ours": value, "peer": peer, "ratio": ratio, "limit": limit,
                     "compare": compare, "relative": True, "met": met, "note": note,
                     "engine_alone": engine_alone.get(key), "healing_grammar": grammar.get(key)})

    for key, name, unit, limit, compare in RATIO_TARGETS:
        ratio_row(key, name, unit, limit, compare, "the peer's figure was not measured")
    if ctx.get("sources"):
        # Ours counts the keystrokes that started a generation (the same work as the peer's, every
        # one of which does); answers reused from a prediction the user typed into cost ~nothing.
        keystrokes = sum(ctx["sources"].values())
        rows[0]["detail"] = (f"{ctx['sources'].get('generated', 0)} of {keystrokes} keystrokes generated; every "
                             f"keystroke: {_num((ctx.get('keystroke_first_ms') or {}).get('p50'))} ms")
    step = decode_step_ms(report)
    cancel = (server.get("cancel_ms") or {}).get("p50")
    limit = step + CANCEL_MARGIN_MS if step else None
    rows.append({"target": "cancel -> slot free p50", "unit": "ms", "ours": cancel, "peer": None, "ratio": None,
                 "limit": limit, "compare": "<=", "relative": False,
                 "met": None if cancel is None or limit is None else cancel <= limit,
                 "note": f"one decode step ({step:.1f} ms) + {CANCEL_MARGIN_MS:.0f} ms" if step else "not measured",
                 "engine_alone": None})
    ratio_row("rss", "peak RSS (the peer's prompt cache off)", "MB", RSS_LIMIT, "<=",
              "the peer's memory is not readable here (a local peer: --remote-pid PID)")
    return rows


def render_table(report: dict) -> str:
    out = [f"aipc-lsp bench{' --quick' if report.get('quick') else ''}: {report.get('model')} on "
           f"{report.get('machine', {}).get('processor')} ({report.get('machine', {}).get('cpus')} CPUs)", ""]
    out.append("Engine (bare; as the AI-PC guides print):")
    out.append(f"{'configuration':34} {'load s':>7} {'first ms':>9} {'other ms/tok':>13} {'tok/s':>7} "
               f"{'1.5k cold ms':>13} {'1.5k +chars ms':>15} {'ours tok/s':>11} {'max RSS MB':>11}")
    for e in report.get("engines", []):
        if "error" in e:
            out.append(f"{e.get('label', '?'):34} error: {e['error']}")
            continue
        out.append(f"{e['label'][:34]:34} {_f(e['load_s'], '{:.1f}'):>7} {_f(e['first_ms']):>9} "
                   f"{_f(e['other_ms_per_token'], '{:.1f}'):>13} {_f(e['tokens_per_s'], '{:.1f}'):>7} "
                   f"{_f(e['cold_first_ms']):>13} {_f(e['incremental_first_ms']):>15} "
                   f"{_f(e.get('engine_api_tokens_per_s'), '{:.1f}'):>11} {_f(e['peak_rss_mb']):>11}")
    server = report.get("server")
    if server:
        out += ["", "Server over stdio (ms, p50/p95; first token = round trip - server time after the first token):"]
        if "error" in server:
            out.append(f"  error: {server['error']}")
        else:
            out.append(f"{'context tokens':>14} {'cold first':>13} {'cold full':>13} {'opened first':>13} "
                       f"{'cursor first':>13} "
                       f"{'incr. first':>13} {'incr. full':>13} {'keystroke first':>16} {'keystroke full':>15}  answers")
            for n, c in server["contexts"].items():
                def pp(key):
                    s = c.get(key) or {"p50": None, "p95": None}
                    return f"{_f(s['p50'])}/{_f(s['p95'])}"
                sources = ", ".join(f"{k} {v}" for k, v in sorted(c["sources"].items(), key=lambda kv: str(kv[0])))
                out.append(f"{n:>14} {pp('cold_first_ms'):>13} {pp('cold_full_ms'):>13} {pp('opened_first_ms'):>13} "
                           f"{pp('cursor_first_ms'):>13} "
                           f"{pp('incremental_first_ms'):>13} {pp('incremental_full_ms'):>13} "
                           f"{pp('keystroke_first_ms'):>16} {pp('keystroke_full_ms'):>15}  {sources}")
            if prompt_line(report):
                out.append(prompt_line(report))
            out.append("(opened first: the first suggestion in a document opened a moment before, its window "
                       "computed while the server was idle, unless the FIM order puts the code after the cursor "
                       "first (spm); cursor first: the same where the client said the cursor rests (aipc/warm); "
                       "cold: asked at once)")
            accepted = next((c["accepted"] for c in server["contexts"].values() if c.get("accepted")), None)
            if accepted:
                def accept_part(key):
                    a = accepted.get(key) or {}
                    s = a.get("full_ms") or {"p50": None, "p95": None}
                    sources = ", ".join(f"{k} {v}" for k, v in sorted((a.get("sources") or {}).items()))
                    return f"{_f(s['p50'])}/{_f(s['p95'])} ms ({sources or 'no answer'})"
                out.append(f"after an accept (a suggestion read for 1 s, accepted, asked at its end), the next "
                           f"suggestion: {accept_part('ahead')} computed ahead (completion.suggest_ahead), "
                           f"{accept_part('asked')} without")
            rounds = [r for r in server.get("decode_rounds") or () if r.get("bare_tokens_per_s")]
            if rounds:
                out.append("decode on the same prompts, taking turns, server / bare engine: " + ", ".join(
                    f"{_f(r['server_tokens_per_s'], '{:.1f}')} / {r['bare_tokens_per_s']:.1f}" for r in rounds)
                    + f" tok/s (server/bare: {_f(decode_vs_bare(server), '{:.0f}')}%, the median round)")
            failed = next((r["bare_error"] for r in server.get("decode_rounds") or () if r.get("bare_error")), None)
            if failed:
                out.append(f"bare engine beside the server: {failed}")
            out.append(f"model ready in {_f(server.get('ready_s'), '{:.1f}')} s; decode {_f(server.get('server_tokens_per_s'), '{:.1f}')} tok/s; "
                       f"cancel -> slot free {_f(server['cancel_ms']['p50'], '{:.1f}')}/{_f(server['cancel_ms']['p95'], '{:.1f}')} ms "
                       f"(seen by polling aipc/status: {_f((server.get('cancel_polled_ms') or {}).get('p50'), '{:.1f}')}/"
                       f"{_f((server.get('cancel_polled_ms') or {}).get('p95'), '{:.1f}')} ms; "
                       f"server's own clock: {_f((server.get('cancel_server_ms') or {}).get('p50'), '{:.1f}')}/"
                       f"{_f((server.get('cancel_server_ms') or {}).get('p95'), '{:.1f}')} ms); "
                       f"peak RSS {_f(server.get('peak_rss_mb'))} MB"
                       + (f" ({' + '.join(_f(v) for v in server['peak_rss_parts_mb'])}: the server, its worker)"
                          if len(server.get("peak_rss_parts_mb") or ()) > 1 else ""))
    remote = report.get("remote")
    if remote:
        out += ["", f"Remote {remote.get('url')} (the same prompts, typed and decoded between the server's phases):"]
        if remote.get("error"):
            out.append(f"  error: {remote['error']}")
        if "cold_ms" in remote:
            cold, incremental = remote["cold_ms"], remote["incremental_ms"]
            out.append(f"  1.5k cold first {_f(cold['p50'])}/{_f(cold['p95'])} ms, incremental first "
                       f"{_f(incremental['p50'])}/{_f(incremental['p95'])} ms (p50/p95), decode "
                       f"{_f(remote['tokens_per_s'], '{:.1f}')} tok/s (rounds: "
                       f"{', '.join(_f(r, '{:.1f}') for r in remote.get('decode_rounds') or ())}), peak RSS "
                       + (f"{_f(remote['peak_rss_mb'])} MB (pid {remote['pid']})" if remote.get("peak_rss_mb")
                          else "not readable (not a local process; --remote-pid PID)"))
            out.append(f"  prompt at the cursor {_f(remote.get('prompt_tokens'))} tokens, counted by "
                       f"{remote.get('counted_by')}")
    out += ["", render_targets(report)]
    return "\n".join(out)


def prompt_line(report: dict) -> str:
    """What the server's prompts were: FIM or not, the suffix budget, their size at 1.5k."""
    settings = report.get("settings") or {}
    if not settings:
        return ""
    if settings.get("fim"):
        order = f"{settings['fim_order']}, " if settings.get("fim_order") else ""
        what = (f"fill-in-the-middle ({settings['fim']}, {order}completion.fim = {settings.get('fim_setting')}), "
                f"the code after the cursor up to completion.suffix_tokens = {settings.get('suffix_tokens')}")
    else:
        what = f"the code before the cursor only (completion.fim = {settings.get('fim_setting')})"
    sizes = settings.get("prompt_tokens") or {}
    size = sizes.get(TARGET_CONTEXT) or sizes.get(str(TARGET_CONTEXT))
    said = (report.get("server") or {}).get("completion_prompt")
    return (f"prompts: {what}; other files {'on' if settings.get('other_files') else 'off'}"
            + ("; suggestions computed ahead for an accept" if settings.get("suggest_ahead") else "")
            + (f"; {size} tokens at the cursor of the 1.5k document" if size else "")
            + (f"; BUT the server says its prompt is {said!r}: the documents' sizes and the peer's prompts "
               f"are not the server's" if said and said != (settings.get("fim") or "prefix") else ""))


def decode_vs_bare(server: dict) -> float | None:
    """The server's decode against the bare engine's in the same round (they take turns seconds
    apart: on a shared machine the load drifts within minutes, so only pairs compare), in %."""
    return _median(r["server_tokens_per_s"] / r["bare_tokens_per_s"] * 100 for r in server.get("decode_rounds") or ()
                   if r.get("server_tokens_per_s") and r.get("bare_tokens_per_s"))


def _num(value) -> str:
    return _f(value, "{:.1f}" if value is not None and abs(value) < 100 else "{:.0f}")


def render_targets(report: dict) -> str:
    remote = report.get("remote") or {}
    peer = (f"ours against {remote['url']}, same run" if remote.get("url")
            else "ratios to a --remote peer (llama.cpp's server, the same model) in the same run")
    out = [f"Targets (issue 19; {peer}):",
           f"  {'target':47} {'ours':>14} {'peer':>14} {'ours/peer':>9}  {'target':>12}  verdict"]
    for t in report.get("targets", []):
        unit = t["unit"]
        limit = f"{t['compare']} {t['limit']:.1f}{'x' if t['relative'] else ' ' + unit}" if t["limit"] else "-"
        verdict = {True: "MET", False: "MISSED", None: "not measured"}[t["met"]]
        if t["met"] is None and (t.get("note") or "").startswith("needs --remote"):
            verdict = "needs --remote"
        line = (f"  {t['target']:47} {_num(t['ours']) + ' ' + unit:>14} "
                f"{(_num(t['peer']) + ' ' + unit) if t['peer'] is not None else '-':>14} "
                f"{_f(t['ratio'], '{:.2f}'):>9}  {limit:>12}  {verdict}")
        extras = [t["note"]] if t.get("note") and verdict not in ("needs --remote", t["note"]) else []
        extras += [t["detail"]] if t.get("detail") else []
        if t.get("engine_alone") is not None:
            extras.append(f"engine alone, same run: {t['engine_alone']:.1f} {unit}"
                          + (f"; token healing's grammar, a word not typed before: +{t['healing_grammar']:.1f} {unit}"
                             if t.get("healing_grammar") is not None else ""))
        out.append(line + (f"  ({'; '.join(extras)})" if extras else ""))
    return "\n".join(out)


def plot(report: dict, path: Path) -> None:
    figure(report).savefig(path, dpi=110)


def figure(report: dict):
    """The chart --plot writes: latencies through the server by context size, and decode rates
    (every bare engine, the server, and the --remote peer where it was measured)."""
    try:
        # A Figure of its own, not pyplot's: no global state to select a backend for or to close.
        from matplotlib.figure import Figure
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'aipc-lsp[plot]'") from None
    server = report.get("server") or {}
    contexts = server.get("contexts") or {}
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    keys = [("cold_first_ms", "cold first token"), ("incremental_first_ms", "incremental first token"),
            ("keystroke_full_ms", "keystroke -> full suggestion")]
    labels = [str(n) for n in contexts]
    width = 0.8 / len(keys)
    for i, (key, name) in enumerate(keys):
        values = [(c[key]["p50"] or 0) for c in contexts.values()]
        axes[0].bar([x + i * width for x in range(len(labels))], values, width, label=name)
    remote = report.get("remote") or {}
    if str(TARGET_CONTEXT) in labels:
        # The peer's figures are for the engine table's ~1.5k-token prompt: marked at that context.
        at = labels.index(str(TARGET_CONTEXT))
        marks = [(at + i * width, remote[key])
                 for i, key in enumerate(("cold_first_ms", "incremental_first_ms")) if remote.get(key)]
        if marks:
            axes[0].plot(*zip(*marks), "kx", markersize=9, label="--remote (1.5k prompt)")
    axes[0].set_xticks([x + width for x in range(len(labels))], labels)
    axes[0].set_xlabel("context tokens")
    axes[0].set_ylabel("ms (p50)")
    axes[0].set_yscale("log")
    axes[0].set_title("Through the server over stdio")
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize="small")
    engines = [e for e in report.get("engines", []) if "error" not in e and e.get("tokens_per_s")]
    axes[1].barh([e["label"] for e in engines], [e["tokens_per_s"] for e in engines], label="bare engine")
    if remote.get("tokens_per_s"):
        axes[1].barh([f"remote {remote.get('url')}"], [remote["tokens_per_s"]], color="tab:gray", label="--remote")
    if server.get("server_tokens_per_s"):
        axes[1].axvline(server["server_tokens_per_s"], color="k", linestyle="--", label="through the server")
    axes[1].set_xlabel("decode tokens/s")
    axes[1].set_title("Decode rate")
    axes[1].legend()
    fig.suptitle(f"aipc-lsp bench: {report.get('model')}")
    fig.tight_layout()
    return fig
