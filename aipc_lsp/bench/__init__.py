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

from aipc_lsp.bench.corpus import corpus_text
from aipc_lsp.bench.reference import ReferenceEngine
from aipc_lsp.bench.report import check_targets, render_table
from aipc_lsp.config import PRECISIONS, OpenVINOSettings
from aipc_lsp.models.compat import ACCEPTS
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


def server_documents(sizes: dict) -> tuple[dict, dict]:
    """Corpus beginnings of each token size (sized by the engine worker with the model's
    tokenizer) and the code that follows each (what the bench types)."""
    text = corpus_text()
    docs = {int(n): text[:size] for n, size in sizes.items()}
    following = {int(n): text[size:size + 64] for n, size in sizes.items()}
    return docs, following


def run_bench(*, quick: bool, model: str | None, remote: str | None, skip_server: bool = False,
              ir: str | None = None, progress=print) -> dict:
    from aipc_lsp.models.fetch import resolve_model

    path = Path(resolve_model(model or "default"))
    contexts = QUICK_CONTEXTS if quick else FULL_CONTEXTS
    report: dict = {"quick": quick, "model": path.name, "machine": machine()}
    report["engines"] = []
    for index, spec in enumerate(engine_configs(path, quick, Path(ir) if ir else None)):
        progress(f"engine: {spec['label']} ...")
        spec.update(quick=quick, context_tokens=1536, doc_tokens=list(contexts) if index == 0 else [])
        report["engines"].append(run_engine_config(spec))
    sizes = report["engines"][0].get("doc_sizes")
    docs = server_documents(sizes)[0] if sizes else {}
    if not skip_server and sizes:
        docs, following = server_documents(sizes)
        progress(f"server: aipc-lsp serve over stdio, contexts {', '.join(map(str, contexts))} tokens ...")
        from aipc_lsp.bench import server

        first = report["engines"][0]
        reference = None
        if not quick:
            # The server's own engine configuration (prompt lookup as it serves), bare, in a child
            # process that idles while the server runs: its decode takes turns with the server's.
            progress("engine: the bare reference beside the server (its configuration) ...")
            reference = ReferenceEngine({"label": first["label"], "model": first["model"], "device": first["device"],
                                         "prompt_lookup_tokens": SERVER_PROMPT_LOOKUP, "context_tokens": 1536})
        try:
            report["server"] = asyncio.run(server.run(
                docs=docs, continuations=following, quick=quick, model=str(path) if model else None,
                # Room for every document whole, so its unique first line stays in the prompt.
                context_tokens=2 * max(contexts), reference=reference))
        finally:
            if reference is not None:
                reference.close()
    elif not skip_server:
        report["server"] = {"error": "the engine benchmark failed, so the server was not measured"}
    if remote:
        progress(f"remote: {remote} ...")
        from aipc_lsp.bench import remote as remote_bench

        long_prompt = docs.get(1536) or corpus_text()[:5000]
        try:
            report["remote"] = remote_bench.run(remote, long_prompt=long_prompt, quick=quick)
        except Exception as exc:
            report["remote"] = {"url": remote, "error": f"{type(exc).__name__}: {exc}"}
    report["targets"] = check_targets(report)
    return report


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


def main(args) -> int:
    report = run_bench(quick=args.quick, model=args.model, remote=args.remote, skip_server=args.skip_server, ir=args.ir,
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
