"""Tests for `aipc-lsp bench` pieces that need no model: the remote client against a tiny
OpenAI-compatible stub server, the target checks, the table and the JSON-able report."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aipc_lsp.bench import remote
from aipc_lsp.bench.report import check_targets, render_table
from aipc_lsp.bench.server import percentile, summary

TOKEN_DELAY = 0.01


class Stub(BaseHTTPRequestHandler):
    """/v1/completions with stream=true: one SSE chunk per "token", TOKEN_DELAY apart."""
    prompts: list[str] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/completions" and body["stream"] is True
        Stub.prompts.append(body["prompt"])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i in range(body["max_tokens"]):
            time.sleep(TOKEN_DELAY)
            chunk = {"choices": [{"text": f" t{i}", "index": 0}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_remote_measures_an_openai_compatible_stream(stub_url):
    Stub.prompts = []
    result = remote.run(stub_url, long_prompt="x = 1\n" * 100, quick=True)
    assert result["first_ms"] >= TOKEN_DELAY * 1000 * 0.9
    # One chunk per TOKEN_DELAY: the rate is measured from the stream, not made up.
    assert 0.8 * TOKEN_DELAY * 1000 <= result["other_ms_per_token"] <= 5 * TOKEN_DELAY * 1000
    assert result["tokens_per_s"] == pytest.approx(1000 / result["other_ms_per_token"])
    assert result["cold_first_ms"] is not None and result["incremental_first_ms"] is not None
    # Cold prompts are unique; incremental ones extend the cold one by a few characters.
    long_prompts = [p for p in Stub.prompts if p.startswith("# run ")]
    cold = long_prompts[0]
    assert any(p != cold and p.startswith(cold) for p in long_prompts)


def test_remote_failure_is_an_error_not_a_number():
    with pytest.raises(OSError):
        remote.run("http://127.0.0.1:9", long_prompt="x", quick=True)


def test_percentiles():
    assert percentile([], 50) is None
    assert percentile([3, 1, 2], 50) == 2
    assert percentile(list(range(1, 101)), 95) == 95
    assert summary([5.0]) == {"p50": 5.0, "p95": 5.0, "n": 1}


def report(**server) -> dict:
    ctx = {"incremental_first_ms": {"p50": 25.0, "p95": 40.0, "n": 5}, "cold_first_ms": {"p50": 1200.0, "p95": 1300.0, "n": 5},
           "cold_full_ms": summary([1500.0]), "incremental_full_ms": summary([300.0]),
           "keystroke_first_ms": summary([3.0]), "keystroke_full_ms": summary([5.0]), "sources": {"generated": 5}}
    base = {"contexts": {1536: ctx}, "server_tokens_per_s": 58.0, "cancel_ms": summary([19.0]),
            "peak_rss_mb": 380.0, "ready_s": 3.0}
    base.update(server)
    return {"quick": True, "model": "m.gguf", "machine": {"processor": "cpu", "cpus": 2},
            "engines": [{"label": "openvino gguf CPU", "load_s": 2.0, "first_ms": 40.0, "other_ms_per_token": 16.0,
                         "tokens_per_s": 62.5, "cold_first_ms": 1100.0, "incremental_first_ms": 50.0,
                         "engine_api_tokens_per_s": 60.0, "peak_rss_mb": 420.0, "long_tokens_per_s": 60.0}],
            "server": base}


def test_targets_are_judged_against_the_issue_limits():
    rows = {r["target"].split(":")[0].split(" (")[0]: r for r in check_targets(report())}
    assert rows["incremental typing ~1.5k ctx"]["met"] is True
    assert rows["cold 1.5k prompt"]["met"] is False
    assert rows["decode through the server"]["met"] is False  # 58 < 60
    ratio = rows["server decode vs bare engine"]
    assert ratio["value"] == pytest.approx(58 / 60 * 100) and ratio["met"] is True
    cancel = rows["cancel -> slot free p50"]
    assert cancel["limit"] == pytest.approx(1000 / 60 + 5) and cancel["met"] is True  # 19 <= 21.7
    assert rows["server peak RSS"]["met"] is True


def test_unmeasured_targets_say_so_and_the_table_renders():
    data = report(cancel_ms=summary([]), peak_rss_mb=None)
    rows = check_targets(data)
    assert [r["met"] for r in rows if r["target"].startswith(("cancel", "server peak"))] == [None, None]
    table = render_table({**data, "targets": rows})
    assert "MISSED" in table and "not measured" in table and "openvino gguf CPU" in table
    json.dumps(data)  # the report is JSON-able as is


def test_the_server_decode_is_compared_with_the_bare_one_round_by_round():
    # The host halves its speed between the rounds: each round's pair still compares like with like.
    data = report()
    data["server"]["decode_rounds"] = [
        {"server_tokens_per_s": 80.0, "bare_tokens_per_s": 82.0, "bare_step_ms": 30.0},
        {"server_tokens_per_s": 40.0, "bare_tokens_per_s": 41.0, "bare_step_ms": 60.0},
        {"server_tokens_per_s": 39.0, "bare_tokens_per_s": 42.0, "bare_step_ms": 34.0},
    ]
    rows = check_targets(data)
    ratio = next(r for r in rows if r["target"].startswith("server decode"))
    assert ratio["value"] == pytest.approx(40 / 41 * 100) and ratio["met"] is True  # the median round
    assert next(r for r in rows if r["target"].startswith("cancel"))["limit"] == pytest.approx(34.0 + 5)
    table = render_table({**data, "targets": rows})
    assert "taking turns, server / bare engine: 80.0 / 82.0, 40.0 / 41.0, 39.0 / 42.0 tok/s" in table
    # A reference that failed says so instead of a ratio.
    data["server"]["decode_rounds"] = [{"server_tokens_per_s": 80.0, "bare_tokens_per_s": None,
                                        "bare_error": "the reference engine process ended: boom"}]
    rows = check_targets(data)
    assert next(r for r in rows if r["target"].startswith("server decode"))["value"] == pytest.approx(58 / 60 * 100)
    assert "bare engine beside the server: the reference engine process ended: boom" in render_table(
        {**data, "targets": rows})


def test_the_engine_alone_beside_the_server_shows_why_a_latency_target_is_missed():
    data = report()
    assert all(r["engine_alone"] is None for r in check_targets(data))  # not measured: nothing shown
    data["server"]["reference_typing"] = [{"api_typing_first_ms": 40.0, "api_cold_first_ms": 1100.0},
                                          {"api_typing_first_ms": 44.0, "api_cold_first_ms": 1300.0}]
    rows = {r["target"].split(":")[0]: r for r in check_targets(data)}
    assert rows["incremental typing ~1.5k ctx"]["engine_alone"] == pytest.approx(42.0)
    assert rows["cold 1.5k prompt"]["engine_alone"] == pytest.approx(1200.0)
    table = render_table({**data, "targets": list(rows.values())})
    assert "(engine alone, same run: 42.0 ms)" in table and "(engine alone, same run: 1200.0 ms)" in table


REMOTE = {"url": "http://127.0.0.1:8089", "first_ms": 16.0, "other_ms_per_token": 16.6, "tokens_per_s": 60.2,
          "cold_first_ms": 7286.0, "incremental_first_ms": 31.0}


def test_the_remote_peer_is_shown_beside_the_targets_it_measured():
    data = report()
    assert all(r["remote"] is None for r in check_targets(data))  # no --remote: nothing shown
    data["remote"] = dict(REMOTE)
    rows = {r["target"].split(":")[0]: r for r in check_targets(data)}
    assert rows["incremental typing ~1.5k ctx"]["remote"] == 31.0
    assert rows["cold 1.5k prompt"]["remote"] == 7286.0
    assert rows["decode through the server"]["remote"] == 60.2
    assert rows["server peak RSS"]["remote"] is None  # another process: not measured
    table = render_table({**data, "targets": list(rows.values())})
    assert "(remote, same run: 7286.0 ms)" in table and "(remote, same run: 60.2 tok/s)" in table
    # A remote that failed is an error line, not figures beside the targets.
    data["remote"] = {"url": REMOTE["url"], "error": "URLError: refused"}
    assert all(r["remote"] is None for r in check_targets(data))
    assert "error: URLError: refused" in render_table({**data, "targets": check_targets(data)})


def test_the_chart_draws_the_server_the_engines_and_the_remote(tmp_path):
    pytest.importorskip("matplotlib")  # the [plot] extra; the dev extra installs it
    from aipc_lsp.bench.report import figure, plot

    data = report()
    data["remote"] = dict(REMOTE)
    fig = figure(data)
    latency, decode = fig.axes
    assert [t.get_text() for t in decode.get_yticklabels()] == ["openvino gguf CPU", "remote http://127.0.0.1:8089"]
    assert [bar.get_width() for bar in decode.patches] == [62.5, 60.2]
    marks = [line for line in latency.get_lines() if line.get_marker() == "x"]
    assert sorted(y for line in marks for y in line.get_ydata()) == [31.0, 7286.0]
    out = tmp_path / "bench.png"
    plot(data, out)
    assert out.read_bytes().startswith(b"\x89PNG")


def test_one_decode_step_of_the_servers_configuration_sizes_the_cancel_target():
    # With prompt lookup a step yields several tokens: 1000 / rate would be a fraction of a step.
    data = report()
    data["server"]["decode_rounds"] = [{"server_tokens_per_s": 88.0, "bare_tokens_per_s": 90.0, "bare_step_ms": 27.0}]
    cancel = next(r for r in check_targets(data) if r["target"].startswith("cancel"))
    assert cancel["limit"] == pytest.approx(27.0 + 5)


def test_the_default_models_prepared_folders_are_benched_for_engines_that_import(tmp_path, monkeypatch):
    import aipc_lsp.bench as bench

    name = bench.DEFAULT_MODEL.name
    for folder, files in {f"{name}-onnxruntime-int4": ["genai_config.json"],
                          f"{name}-openvino-int8": ["openvino_model.xml"],
                          f"{name}-openvino-int4": ["openvino_model.xml"],  # the --ir one: measured already
                          f"{name}-transformers-fp32": ["config.json", "model.safetensors"],
                          f"{name}-onnxruntime-fp16": [],  # not a model (an interrupted prepare)
                          "other-model-openvino-int4": ["openvino_model.xml"]}.items():
        (tmp_path / folder).mkdir()
        for file in files:
            (tmp_path / folder / file).write_text("{}")
    monkeypatch.setattr(bench, "_importable", lambda engine: engine != "transformers")
    configs = bench.prepared_configs(tmp_path, exclude=tmp_path / f"{name}-openvino-int4")
    assert [(c["label"], c["engine"], Path(c["model"]).name, c["precision"]) for c in configs] == [
        ("onnxruntime int4 CPU", "onnxruntime", f"{name}-onnxruntime-int4", "int4"),
        ("openvino ir int8 CPU", "openvino", f"{name}-openvino-int8", "int8"),
    ]  # transformers does not import here (faked): left out
