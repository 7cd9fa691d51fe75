"""Command line: `aipc-lsp serve | status | models | prepare | devices | complete | bench | eval | demo`.

stdout belongs to the protocol when serving; everything else goes to stderr or --log-file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from aipc_lsp import __version__
from aipc_lsp.engines import PREPARE_PRECISIONS  # the engines table: what prepare makes for which engine

GIL_SWITCH_INTERVAL_S = 0.001


def _setup_logging(verbose: int, log_file: str | None) -> None:
    level = logging.WARNING - 10 * verbose if verbose else logging.INFO
    handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8") if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.DEBUG, level))
    # pygls logs every message body at INFO; keep it for -vv.
    logging.getLogger("pygls").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    # The user's code reaches the log only when -vv asks for the message bodies too.
    from aipc_lsp.log_privacy import allow_document_text

    allow_document_text(verbose >= 2)
    # httpx logs every request at INFO (the remote engine's token counts: one a keystroke); -vv keeps them.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


def _config_path(arg: str | None) -> Path:
    from aipc_lsp.config import default_config_path

    return Path(arg).expanduser() if arg else default_config_path()


def cmd_serve(args: argparse.Namespace) -> int:
    from aipc_lsp.server import create_server

    if args.tcp is not None or args.status_port is not None:
        _warn_unless_loopback(args.host)
    server = create_server(config_path=_config_path(args.config), status_port=args.status_port,
                           status_host=args.host)
    # The protocol loop, the slot threads and the engine-reply readers hand Python's lock to
    # each other for every piece and cancel: 1 ms turns instead of the default 5 ms.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    if args.tcp is not None:
        server.start_tcp(args.host, args.tcp)
    else:
        server.start_io()
    return 0


def _warn_unless_loopback(host: str) -> None:
    """Whoever can connect to the server reads the documents it is sent and runs the model: listening
    beyond this machine is the user's explicit choice (--host), and said out loud."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        loopback = False
    if not loopback:
        logging.getLogger("aipc_lsp").warning(
            "listening on %s, not only on this machine (127.0.0.1): anyone who can reach that address can "
            "send documents to the server and read its answers and status; there is no authentication", host)


def cmd_status(args: argparse.Namespace) -> int:
    from aipc_lsp.features.status import query_status

    try:
        state = asyncio.run(query_status(args.port))
    except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
        print(f"error: no aipc-lsp status endpoint on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    print(f"aipc-lsp {state['version']}: {'ready' if state['ready'] else state['error'] or 'preparing'}")
    print(f"{'slot':20} {'engine':10} {'device':8} {'state':10} {'busy':5} {'served':>6} {'cancel':>6} "
          f"{'failed':>6} {'ttft ms':>8} {'tok/s':>6}")
    for slot in state["slots"]:
        ttft = f"{slot['ttft_ms']:.0f}" if slot["ttft_ms"] is not None else "-"
        rate = f"{slot['tokens_per_s']:.1f}" if slot["tokens_per_s"] is not None else "-"
        print(f"{slot['slot']:20} {slot['engine']:10} {slot['device']:8} {slot['state']:10} "
              f"{'yes' if slot['busy'] else 'no':5} {slot['served']:>6} {slot['cancelled']:>6} "
              f"{slot['failed']:>6} {ttft:>8} {rate:>6}")
        if slot["error"]:
            print(f"    {slot['error']}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from aipc_lsp.models.registry import list_models

    if args.action == "fetch":
        return _models_fetch(args)
    if args.name:
        print("error: `models list` takes no model name", file=sys.stderr)
        return 2
    models = list_models()
    if args.json:
        print(json.dumps([{**m.__dict__, "path": str(m.path) if m.path else None} for m in models], indent=2))
        return 0
    for m in models:
        mark = "*" if m.default else " "
        state = ("present" if m.present else
                 f"{m.parts_present}/{m.parts} parts" if m.parts_present else "not fetched")
        size = f"{m.size_bytes / 1e6:.0f} MB" if m.size_bytes else ""
        print(f"{mark} {m.name:32} {m.kind:18} {state:12} {size:>8}  {m.path or ''}")
    return 0


def _progress_bar(args: argparse.Namespace):
    """A progress bar on stderr. On a terminal it stands in for the INFO log lines of the same steps,
    which would break it up (-v or --log-file keeps them)."""
    from aipc_lsp.models.progress import TerminalProgress

    bar = TerminalProgress()
    if bar.tty and not args.verbose and not args.log_file:
        logging.getLogger().setLevel(logging.WARNING)
    return bar


def _models_fetch(args: argparse.Namespace) -> int:
    """Fetch a catalogue model, then make what the configured engines load (OpenVINO: the IR)."""
    from aipc_lsp.config import SettingsLayers, load_file
    from aipc_lsp.models.resolve import ready_for_engines
    from aipc_lsp.models.convert import PrepareError
    from aipc_lsp.models.fetch import FetchError, fetch
    from aipc_lsp.models.registry import KNOWN_MODELS, lookup

    spec = lookup(args.name)
    if spec is None:
        print(f"error: no model named {args.name!r}; `aipc-lsp models list` shows them: {', '.join(KNOWN_MODELS)}",
              file=sys.stderr)
        return 2
    try:
        with _progress_bar(args) as bar:
            path = fetch(spec, force=args.force, progress=bar)
        if not args.gguf_only:
            layers = SettingsLayers()
            layers.file, _ = load_file(_config_path(args.config))
            with _progress_bar(args) as bar:
                for line in ready_for_engines(path, layers.settings(), bar):
                    print(line, file=sys.stderr)
    except (FetchError, PrepareError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _parse_location(spec: str) -> tuple[Path, int, int]:
    try:
        path, line, col = spec.rsplit(":", 2)
        return Path(path), int(line), int(col)
    except ValueError:
        raise SystemExit(f"error: expected FILE:LINE:COL (1-based), got {spec!r}") from None


def cmd_complete(args: argparse.Namespace) -> int:
    """One suggestion through the same runtime and pipeline the server uses."""
    from aipc_lsp.config import SettingsLayers, load_file
    from aipc_lsp.runtime import ModelRuntime, ModelUnavailable
    from aipc_lsp.suggest import Suggester

    path, line, col = _parse_location(args.location)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    lines = text.split("\n")
    if not 1 <= line <= len(lines) or not 1 <= col <= len(lines[line - 1]) + 1:
        print(f"error: {path} has no line {line}, column {col}", file=sys.stderr)
        return 1
    offset = sum(len(l) + 1 for l in lines[: line - 1]) + col - 1
    layers = SettingsLayers()
    layers.file, problems = load_file(_config_path(args.config))
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    settings = layers.settings()

    async def run() -> int:
        runtime = ModelRuntime()
        runtime.configure(settings)
        try:
            suggestion = await Suggester(runtime).suggest(
                text=text, offset=offset, settings=settings.completion,
                uri=path.resolve().as_uri(), language_id=_language_of(path))
        except ModelUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            runtime.close()
        if args.json:
            print(json.dumps(suggestion.__dict__ if suggestion else None))
        else:
            print(suggestion.text if suggestion else "")
            if suggestion:
                print(f"(first token {suggestion.first_token_ms or 0:.0f} ms, total {suggestion.total_ms:.0f} ms, "
                      f"{suggestion.tokens} tokens)", file=sys.stderr)
        return 0

    return asyncio.run(run())


def _language_of(path: Path) -> str:
    return {".py": "python", ".js": "javascript", ".ts": "typescript", ".rs": "rust", ".go": "go",
            ".c": "c", ".cpp": "cpp", ".java": "java", ".lua": "lua", ".sh": "shellscript"}.get(path.suffix, "")


def cmd_bench(args: argparse.Namespace) -> int:
    from aipc_lsp.bench import main

    return main(args)


def cmd_eval(args: argparse.Namespace) -> int:
    from aipc_lsp.eval import main

    return main(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from aipc_lsp.demo import run_demo

    return asyncio.run(run_demo(config=args.config))


def cmd_prepare(args: argparse.Namespace) -> int:
    from aipc_lsp.models.convert import PrepareError, PrepareOptions, prepare

    options = PrepareOptions(engine=args.engine, precision=args.precision, provider=args.provider,
                             group_size=args.group_size, ratio=args.ratio, sym=args.sym)
    try:
        # Converters (optimum-intel, NNCF, OpenVINO) print to stdout; stdout is for the path alone.
        with _stdout_to_stderr(), _progress_bar(args) as progress:
            path = prepare(args.source, options, args.output, force=args.force, progress=progress)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send everything written to stdout, by Python or by native code, to stderr for a while."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def cmd_devices(args: argparse.Namespace) -> int:
    from aipc_lsp.config import SettingsLayers, load_file
    from aipc_lsp.engines.detect import detect, format_table
    from aipc_lsp.engines.remote import devices_report

    layers = SettingsLayers()
    layers.file, _ = load_file(_config_path(args.config))
    settings = layers.settings()
    reports = detect(settings.npu_library.python) + [devices_report(settings.remote)]
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        print(format_table(reports))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aipc-lsp", description="Local AI code completion over LSP.")
    parser.add_argument("--version", action="version", version=f"aipc-lsp {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: protocol too)")
    common.add_argument("--log-file", help="write logs here instead of stderr")
    common.add_argument("--config", help="settings.toml to read (default: the user config dir)")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", parents=[common], help="run the language server (stdio by default)")
    serve.add_argument("--stdio", action="store_true", help="talk over stdin/stdout (the default)")
    serve.add_argument("--tcp", type=int, metavar="PORT", help="listen on 127.0.0.1:PORT instead (see --host)")
    serve.add_argument("--status-port", type=int, metavar="PORT",
                       help="also answer aipc/status on 127.0.0.1:PORT (for `aipc-lsp status`; see --host)")
    serve.add_argument("--host", default="127.0.0.1", metavar="ADDRESS",
                       help="the address --tcp and --status-port listen on (default 127.0.0.1, this machine only; "
                            "another address is reachable from the network, with a warning)")
    serve.set_defaults(func=cmd_serve)

    status = sub.add_parser("status", parents=[common], help="show a running server's slots (see serve --status-port)")
    status.add_argument("--port", type=int, required=True, help="the server's --status-port")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    models = sub.add_parser("models", parents=[common], help="fetch or list models")
    models.add_argument("action", choices=["fetch", "list"])
    models.add_argument("name", nargs="?",
                        help="fetch: a model `models list` shows (default: the default model)")
    models.add_argument("--force", action="store_true", help="fetch again even if present")
    models.add_argument("--gguf-only", action="store_true",
                        help="fetch: only the GGUF, not what the configured engine loads (OpenVINO: its IR)")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)

    prep = sub.add_parser("prepare", parents=[common],
                          help="convert a checkpoint (HF folder, hub id, GGUF file or a model name) for an engine")
    prep.add_argument("source", help="Hugging Face folder, hub id (owner/name), .gguf file, or a model `models list` "
                                     "shows (\"default\": the default model)")
    prep.add_argument("--engine", required=True, choices=list(PREPARE_PRECISIONS))
    prep.add_argument("--precision", required=True,
                      choices=list(dict.fromkeys(p for ps in PREPARE_PRECISIONS.values() for p in ps)))
    prep.add_argument("--output", help="output folder (default: the model cache, listed by `models list`)")
    prep.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "dml"],
                      help="onnxruntime execution provider the model is built for (default cpu)")
    prep.add_argument("--group-size", type=int, help="openvino int4: weights per quantisation group, -1 per channel "
                      "(default: the largest of 128/64/32/16 that divides the model's hidden and MLP sizes)")
    prep.add_argument("--ratio", type=float, help="openvino int4: share of the weights in int4, the rest int8 (default 1.0)")
    prep.add_argument("--sym", action="store_true", help="openvino int4: symmetric quantisation")
    prep.add_argument("--force", action="store_true", help="rebuild even if the output exists")
    prep.set_defaults(func=cmd_prepare)

    devices = sub.add_parser("devices", parents=[common], help="engines, versions and the devices they see")
    devices.add_argument("--json", action="store_true")
    devices.set_defaults(func=cmd_devices)

    complete = sub.add_parser("complete", parents=[common], help="print a suggestion for FILE:LINE:COL (1-based)")
    complete.add_argument("location")
    complete.add_argument("--json", action="store_true")
    complete.set_defaults(func=cmd_complete)

    bench = sub.add_parser("bench", parents=[common], help="measure engines and the server: latency, tokens/s, memory")
    bench.add_argument("--quick", action="store_true", help="one configuration, few repeats (a CI smoke test)")
    bench.add_argument("--model", help="a .gguf file or OpenVINO IR folder (default: the default model)")
    bench.add_argument("--ir", metavar="DIR", help="also measure this OpenVINO IR folder (e.g. made from the GGUF)")
    bench.add_argument("--remote", metavar="URL", help="the peer of the targets: an OpenAI-compatible server at URL "
                       "(llama.cpp's, the same model) given the server's prompts in the same run")
    bench.add_argument("--remote-pid", type=int, metavar="PID", help="the peer's process, for its peak RSS "
                       "(default: the process listening on a loopback URL's port, when it can be read)")
    bench.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="a setting for the server, e.g. completion.suffix_tokens=64 or fim=off (repeatable)")
    bench.add_argument("--skip-server", action="store_true", help="engines only (and the --remote peer)")
    bench.add_argument("--json", metavar="FILE", help="write the results as JSON (- for stdout)")
    bench.add_argument("--plot", metavar="PNG", help="draw a chart (needs the [plot] extra)")
    bench.set_defaults(func=cmd_bench)

    ev = sub.add_parser("eval", parents=[common], help="completion quality through the server over stdio "
                        "(exact match, edit similarity, pass@1), optionally beside a remote llama.cpp server")
    ev.add_argument("--model", help="model name or path (default: the default model)")
    ev.add_argument("--quick", action="store_true", help="a small fixed subset (the test suite's)")
    ev.add_argument("--limit", type=int, metavar="N", help="at most N tasks (every source and kind kept)")
    ev.add_argument("--kinds", metavar="LIST", help="comma-separated: line, midline, block, midword (default: all)")
    ev.add_argument("--sources", metavar="LIST", help="comma-separated: stdlib, tests, crossfile (default: all three), or dev: tasks from "
                         "other modules to try a change on before the eval measures it, or project: tasks from this "
                         "server's own modules (code no model can have seen; they follow the code)")
    ev.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="a setting for the server, e.g. fim=off or completion.other_files=false (repeatable)")
    ev.add_argument("--no-other-files", action="store_true",
                    help="do not open the helper files cross-file tasks need (nor send them to --remote)")
    ev.add_argument("--unrelated", type=int, default=0, metavar="N",
                    help="also open N corpus modules each task does not need, as other work open in the editor")
    ev.add_argument("--remote", metavar="URL", help="also ask llama.cpp's OpenAI-compatible server at URL, as llama.vim does")
    ev.add_argument("--baseline", metavar="MODEL", help="also run the server with MODEL and the code before the "
                    "cursor only (fim=off), e.g. smollm2-135m; the targets say if --model does 2x as well")
    ev.add_argument("--label", help="name of this server's row in the table")
    ev.add_argument("--json", metavar="FILE", help="write the results as JSON (- for stdout)")
    ev.add_argument("--plot", metavar="PNG", help="draw a chart (needs the [plot] extra)")
    ev.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"),
                    help="run nothing: compare two --json reports task by task (e.g. without and with a change)")
    ev.set_defaults(func=cmd_eval)

    demo = sub.add_parser("demo", parents=[common], help="start the server as an editor would and show suggestions")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    _setup_logging(args.verbose, args.log_file)
    return args.func(args)
