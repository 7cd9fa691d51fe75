"""`aipc-lsp bench --quick` as CI runs it: the real model through a bare engine and through
the real server over stdio. Checks that every figure is measured and consistent, not how
fast this (shared, noisy) machine is."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aipc_lsp.models.catalogue import SMOLLM2_135M

pytestmark = pytest.mark.model


def test_bench_quick_measures_everything(tmp_path):
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    # The small model: this checks that every figure is measured, not the default model's speed.
    proc = subprocess.run([sys.executable, "-m", "aipc_lsp", "bench", "--quick", "--model", SMOLLM2_135M.name,
                           "--json", str(out), "--plot", str(chart)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert chart.read_bytes().startswith(b"\x89PNG")  # the chart of this real run
    assert "Targets (issue 19;" in proc.stdout and "Server over stdio" in proc.stdout
    report = json.loads(out.read_text())
    engine = report["engines"][0]
    assert "error" not in engine, engine
    for key in ("load_s", "first_ms", "other_ms_per_token", "tokens_per_s", "cold_first_ms",
                "incremental_first_ms", "peak_rss_mb", "long_tokens_per_s"):
        assert engine[key] > 0, key
    assert engine["long_prompt_tokens"] >= 1400
    server = report["server"]
    assert "error" not in server, server
    ctx = server["contexts"]["1536"]
    assert ctx["cold_first_ms"]["n"] >= 1 and ctx["cold_first_ms"]["p50"] <= ctx["cold_full_ms"]["p50"]
    assert sum(ctx["sources"].values()) == 5  # one answer per keystroke
    # A document opened before the first keystroke was warmed while the server idled.
    assert ctx["opened_first_ms"]["n"] == 1 and ctx["opened_first_ms"]["p50"] < ctx["cold_first_ms"]["p50"] / 2
    # And one where the client said the cursor rests (aipc/warm), with warming on open off.
    assert ctx["cursor_first_ms"]["n"] == 1 and ctx["cursor_first_ms"]["p50"] < ctx["cold_first_ms"]["p50"] / 2
    # A suggestion accepted after a reader's pause: the next one computed ahead, or asked for.
    accepted = ctx["accepted"]
    assert set(accepted["ahead"]["sources"]) <= {"cache", "ahead", "none"}, accepted
    assert set(accepted["asked"]["sources"]) <= {"generated", "none"}, accepted
    assert server["server_tokens_per_s"] > 0 and server["peak_rss_mb"] > 0
    assert server["cancel_ms"]["n"] == 2
    # Whatever prompt the model's tokenizer makes the server use (SmolLM2 here: the prefix only),
    # the documents are sized so that the prompt at the cursor holds about 1.5k tokens.
    settings = report["settings"]
    assert settings["fim_setting"] == "auto" and settings["suffix_tokens"] == 256
    assert settings["fim_order"] == (settings["fim"] and "psm-line")  # the default order (none without a template)
    assert server["completion_prompt"] == (settings["fim"] or "prefix")  # the bench built what the server did
    assert 1450 <= settings["prompt_tokens"]["1536"] <= 1560, settings
    # Without --remote the rows that compare with the peer say so; cancel is judged on its own.
    assert [t["met"] for t in report["targets"] if t["note"] and t["note"].startswith("needs --remote")] == [None] * 4
    cancel = next(t for t in report["targets"] if t["target"].startswith("cancel"))
    assert cancel["met"] in (True, False) and cancel["limit"] > 5


def test_the_bare_reference_beside_the_server_decodes_in_rounds_and_types_alone():
    # The child process the full bench keeps while the server runs: its decode takes turns with
    # the server's, and it types the server bench's document with our engine API alone.
    from aipc_lsp.bench import SERVER_PROMPT_LOOKUP
    from aipc_lsp.bench.reference import ReferenceEngine
    from aipc_lsp.models.fetch import fetch

    with ReferenceEngine({"label": "reference", "model": str(fetch(SMOLLM2_135M)), "device": "CPU", "quick": True,
                          "prompt_lookup_tokens": SERVER_PROMPT_LOOKUP}) as reference:
        assert reference.error is None
        for round_ in (0, 1):
            decode = reference.decode(round_)
            assert "error" not in decode, decode
            assert decode["long_tokens_per_s"] > 0 and decode["step_ms"] > 0
        typing = reference.typing()
        assert "error" not in typing, typing
        # A keystroke reuses the cold prompt's KV cache: its first token comes well before a cold one.
        assert 0 < typing["api_typing_first_ms"] < typing["api_cold_first_ms"] / 2
        # Typed as the server asks (token healing on by default); what its grammar adds is measured.
        assert typing["healing_grammar_ms"] is not None


def test_a_reference_that_cannot_load_says_why():
    from aipc_lsp.bench.reference import ReferenceEngine

    with ReferenceEngine({"label": "reference", "model": "/nonexistent/model.gguf", "device": "CPU"}) as reference:
        assert "model not found" in reference.error
        assert "model not found" in reference.decode(0)["error"]
