"""`aipc-lsp complete` goes through the server's own pipeline, here from an OpenVINO IR folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def ir_folder(tmp_path_factory) -> Path:
    """An OpenVINO IR folder made from SmolLM2's GGUF by OpenVINO GenAI itself."""
    import openvino_genai as og

    from aipc_lsp.models.catalogue import SMOLLM2_135M

    from aipc_lsp.models.fetch import fetch

    folder = tmp_path_factory.mktemp("ir")
    gguf = folder / "model.gguf"
    shutil.copyfile(fetch(SMOLLM2_135M), gguf)
    og.LLMPipeline(str(gguf), "CPU", enable_save_ov_model=True)
    gguf.unlink()
    assert (folder / "openvino_model.xml").is_file()
    return folder


def test_complete_command_serves_from_an_openvino_ir_folder(ir_folder: Path, tmp_path: Path):
    settings = tmp_path / "settings.toml"
    settings.write_text(f"model = {str(ir_folder)!r}\n", encoding="utf-8")
    source = tmp_path / "stack.py"
    source.write_text("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        \n",
                      encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "aipc_lsp", "complete", "--config", str(settings), f"{source}:6:9"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "openvino_model.xml" not in done.stdout  # stdout carries only the suggestion
    assert done.stdout.strip(), done.stderr
    assert str(ir_folder) in done.stderr or ir_folder.name in done.stderr
