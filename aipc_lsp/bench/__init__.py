"""`aipc-lsp bench`: engine-level figures per engine x device x precision (each in its own
process), the same model through the real server over stdio, an optional remote
OpenAI-compatible peer, and the issue's targets checked against one run."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from aipc_lsp import setting_pairs
from aipc_lsp.bench.corpus import DECODE_ROUNDS, DECODE_RUNS, corpus_text, typing_document
from aipc_lsp.bench.prompts import PromptSettings, template_named
from aipc_lsp.bench.reference import ReferenceEngine
from aipc_lsp.bench.report import check_targets, render_table
from aipc_lsp.config import (PRECISIONS, CompletionSettings, OpenVINOSettings, SettingsLayers, default_config_path,
                             load_file, merge, validate)
from aipc_lsp.models.compat import ACCEPTS, openvino_reads_gguf
from aipc_lsp.models.registry import DEFAULT_MODEL, KIND_GGUF, detect_kind, models_dir

QUICK_CONTEXTS = (1536,)
FULL_CONTEXTS = (512, 1024, 1536, 2048)
# What the server runs with by default, for the bare reference of its decode rate.
SERVER_PROMPT_LOOKUP = OpenVINOSettings().prompt_lookup_tokens


def engine_configs(model: Path, quick: bool, ir: Path | None = None) -> list[dict]:
    """What this machine can run: the model as given, its OpenVINO IR when there is one
    next to it, inference/KV-cache precisions, every OpenVINO device present, and for the
    default model the other engines and precisions `aipc-lsp prepare` left in the cache."""
    configs = [{"label": f"openvino {model.suffix.lstrip('.') or 'ir'} CPU", "model": str(model), "device": "CPU"}]
    if quick:
        return configs
    ir = ir or (model.parent if (model.parent / "openvino_model.xml").exists() else None)
    if ir is not None and model.suffix == ".gguf":
        configs.append({"label": "openvino ir CPU", "model": str(ir), "device": "CPU"})
    configs.append({"label": f"openvino {model.suffix.lstrip('.')} CPU f32 inference", "model": str(model),
                    "device": "CPU", "ov_config": {"INFERENCE_PRECISION_HINT": "f32"}})
    configs.append({"label": f"openvino {model.suffix.lstrip('.')} CPU u8 KV cache", "model": str(model),
                    "device": "CPU", "ov_config": {"KV_CACHE_PRECISION": "u8"}})
    configs.append({"label": f"openvino {model.suffix.lstrip('.')} CPU prompt lookup", "model": str(model),
                    "device": "CPU", "prompt_lookup_tokens": SERVER_PROMPT_LOOKUP})
    try:
        import openvino

        devices = [d for d in openvino.Core().available_devices if not d.startswith("CPU")]
    except Exception:
        devices = []
    for device in devices:
        configs.append({"label": f"openvino {model.suffix.lstrip('.')} {device}", "model": str(model), "device": device})
    if model.name == DEFAULT_MODEL.filename:
        configs += prepared_configs(models_dir(), exclude=ir)
    return configs


def prepared_configs(root: Path, exclude: Path | None = None) -> list[dict]:
    """The default model as `aipc-lsp prepare` made it for each engine and precision
    (`<model>-<engine>-<precision>` folders), for the engines that import here."""
    configs = []
    for folder in sorted(root.glob(f"{DEFAULT_MODEL.name}-*-*")):
        engine, _, precision = folder.name[len(DEFAULT_MODEL.name) + 1:].partition("-")
        kind = detect_kind(folder)
        if not folder.is_dir() or (exclude is not None and folder.resolve() == exclude.resolve()):
            continue
        if kind not in ACCEPTS.get(engine, ()) or kind == KIND_GGUF or not _importable(engine):
            continue
        configs.append({"label": f"{engine} {'ir ' if engine == 'openvino' else ''}{precision} CPU", "engine": engine, "model": str(folder), "device": "CPU",
                        "precision": precision if precision in PRECISIONS else ""})
    return configs


def _importable(engine: str) -> bool:
    module = {"openvino": "openvino_genai", "onnxruntime": "onnxruntime_genai", "transformers": "torch"}.get(engine)
    return module is not None and importlib.util.find_spec(module) is not None


def run_engine_config(spec: dict, timeout: float = 600) -> dict:
    """One configuration in a child process (its own peak RSS and load time)."""
    try:
        proc = subprocess.run([sys.executable, "-m", "aipc_lsp.bench.engine", json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"label": spec["label"], "error": f"timed out after {timeout:.0f}s"}
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT "):])
    return {"label": spec["label"], "error": (proc.stderr.strip().splitlines() or ["no result"])[-1]}


def server_documents(sizes: dict) -> dict[int, tuple[str, str, str]]:
    """Per context size, a cursor in the middle of real code (sized by the engine worker with the
    model's tokenizer, so the server's prompt there has about that many tokens): the code before
    it, what the bench types there, the code after it."""
    text = corpus_text()
    return {int(n): typing_document(text, *place) for n, place in sizes.items()}


def bench_options(contexts: tuple[int, ...], model: str | None, sets: dict) -> dict:
    """initializationOptions of the server under test: the bench's completion settings, then --set."""
    # Room for every document whole, so its unique first line stays in the prompt. Other files off:
    # the bench's documents would be each other's, and the peer is not sent them. No suggestion
    # computed ahead for an accept (the bench accepts none): it would run while the bench times the
    # bare engine or the peer, which are measured while the server idles.
    completion = {"context_tokens": 2 * max(contexts), "max_tokens": 48, "other_files": False,
                  "suggest_ahead": False}
    options = merge({"completion": completion}, sets)
    if model:
        options["model"] = model
    return options


def effective_completion(options: dict) -> CompletionSettings:
    """The completion settings the server will run with: its settings file, then `options`."""
    file_layer, _ = load_file(default_config_path())
    init_layer, _ = validate(options, "initializationOptions")
    return SettingsLayers(file=file_layer, init_options=init_layer).settings().completion


def run_bench(*, quick: bool, model: str | None, remote: str | None, skip_server: bool = False,
              ir: str | None = None, sets: dict | None = None, remote_pid: int | None = None,
              config: str | None = None, progress=print) -> dict:
    from aipc_lsp.models.fetch import resolve_model

    path = Path(resolve_model(model or "default"))
    if detect_kind(path) == KIND_GGUF and not openvino_reads_gguf(path):
        # OpenVINO GenAI's GGUF reader cannot read it as it is (the default's Q5_0): the IR the server loads.
        from aipc_lsp.models.gguf_ir import ir_for

        path = ir_for(path, lambda message, percent: progress(message))
    contexts = QUICK_CONTEXTS if quick else FULL_CONTEXTS
    options = bench_options(contexts, str(path) if model else None, sets or {})
    completion = effective_completion(options)
    prompts = PromptSettings.of(completion)
    report: dict = {"quick": quick, "model": path.name, "machine": machine()}
    report["engines"] = []
    for index, spec in enumerate(engine_configs(path, quick, Path(ir) if ir else None)):
        progress(f"engine: {spec['label']} ...")
        spec.update(quick=quick, context_tokens=1536, doc_tokens=list(contexts) if index == 0 else [],
                    prompts=prompts.to_json())
        report["engines"].append(run_engine_config(spec))
    first = report["engines"][0]
    sizes = first.get("doc_sizes")
    report["settings"] = {"fim": first.get("fim"), "fim_order": first.get("fim_order"), "fim_setting": completion.fim,
                          "suffix_tokens": completion.suffix_tokens, "context_tokens": completion.context_tokens,
                          "other_files": completion.other_files, "suggest_ahead": completion.suggest_ahead,
                          "prompt_tokens": first.get("prompt_tokens"),
                          "set": sets or {}}
    docs = server_documents(sizes) if sizes else {}
    peer = None
    if remote:
        from aipc_lsp.bench.remote import Peer, PeerError

        peer = Peer(remote, pid=remote_pid)
        try:
            if not docs:
                raise PeerError("the engine benchmark failed, so the prompts for the peer are not known")
            peer.prepare(template_named(first.get("fim")), prompts)
        except PeerError as exc:
            report["remote"], peer = {"url": remote, "error": str(exc)}, None
    if not skip_server and docs:
        progress(f"server: aipc-lsp serve over stdio, contexts {', '.join(map(str, contexts))} tokens"
                 + (f", beside {remote}" if peer else "") + " ...")
        from aipc_lsp.bench import server

        reference = None
        if not quick:
            # The server's own engine configuration (prompt lookup as it serves), bare, in a child
            # process that idles while the server runs: its decode takes turns with the server's.
            progress("engine: the bare reference beside the server (its configuration) ...")
            reference = ReferenceEngine({"label": first["label"], "model": first["model"], "device": first["device"],
                                         "prompt_lookup_tokens": SERVER_PROMPT_LOOKUP, "context_tokens": 1536,
                                         "prompts": prompts.to_json()})
        try:
            report["server"] = asyncio.run(server.run(docs=docs, quick=quick, options=options, reference=reference,
                                                      peer=peer, config=config))
        finally:
            if reference is not None:
                reference.close()
    elif not skip_server:
        report["server"] = {"error": "the engine benchmark failed, so the server was not measured"}
    elif peer is not None:
        progress(f"remote: {remote} ...")
        run_peer_alone(peer, docs, quick)
    if peer is not None:
        report["remote"] = peer.report()
    report["targets"] = check_targets(report)
    return report


def run_peer_alone(peer, docs: dict, quick: bool) -> None:
    """The peer's part of the server bench without the server (--skip-server)."""
    from aipc_lsp.bench.server import PEER_CONTEXT, TYPIST_PAUSE_S

    prefix, typed, suffix = docs.get(PEER_CONTEXT) or next(iter(docs.values()))
    peer.typing(prefix, typed[:5 if quick else 16], suffix, cold_reps=2 if quick else 5, pause_s=TYPIST_PAUSE_S)
    for round_ in range(1 if quick else DECODE_ROUNDS):
        peer.decode(round_, max_tokens=48 if quick else 128, runs=1 if quick else DECODE_RUNS)


def machine() -> dict:
    import os
    import platform

    info = {"os": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["processor"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import openvino

        info["openvino"] = openvino.get_version()
    except Exception:
        pass
    return info


def parse_sets(pairs: list[str]) -> dict:
    """--set key=value (repeatable) as initializationOptions; SystemExit saying what is wrong."""
    try:
        return setting_pairs.parse_sets(pairs)
    except ValueError as exc:
        raise SystemExit(f"aipc-lsp bench: {exc}") from None


def main(args) -> int:
    sets = parse_sets(getattr(args, "set", None) or [])
    report = run_bench(quick=args.quick, model=args.model, remote=args.remote, skip_server=args.skip_server, ir=args.ir,
                       sets=sets, remote_pid=getattr(args, "remote_pid", None),
                       config=str(Path(args.config).expanduser()) if getattr(args, "config", None) else None,
                       progress=lambda msg: print(msg, file=sys.stderr))
    print(render_table(report))
    if args.json:
        data = json.dumps(report, indent=2, default=str)
        if args.json == "-":
            print(data)
        else:
            Path(args.json).write_text(data + "\n", encoding="utf-8")
    if args.plot:
        from aipc_lsp.bench.report import plot

        plot(report, Path(args.plot))
    return 0
