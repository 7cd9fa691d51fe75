"""The VS Code extension (editor-clients/vscode): npm ci, its node tests (unit tests with a
stubbed `vscode` module, and an end-to-end run of the extension's request code against the
real server and model over vscode-languageserver-protocol), and packaging into a .vsix.

Skipped, with the reason printed, only when node or npm is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

EXTENSION = Path(__file__).resolve().parents[2] / "editor-clients" / "vscode"


def _run(args: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=EXTENSION, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    print(proc.stdout[-6000:], proc.stderr[-6000:], sep="\n")
    return proc


@pytest.fixture(scope="module")
def npm() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        reason = "node and npm are needed for the VS Code extension's tests; not found on PATH"
        print(reason)
        pytest.skip(reason)
    proc = _run([npm, "ci", "--no-audit", "--no-fund"], timeout=600)
    assert proc.returncode == 0, "npm ci failed"
    return npm


@pytest.mark.model
def test_extension_unit_and_end_to_end_tests(npm: str):
    server = json.dumps([sys.executable, "-m", "aipc_lsp", "serve"])
    proc = _run([npm, "test"], timeout=600, env={"AIPC_SERVER_CMD": server})
    assert proc.returncode == 0, "npm test failed"
    passed = re.search(r"^# pass (\d+)$", proc.stdout, flags=re.M)
    assert "# fail 0" in proc.stdout and passed and int(passed.group(1)) > 0, proc.stdout[-2000:]


def test_extension_packages_into_a_vsix_offline(npm: str, tmp_path: Path):
    vsix = tmp_path / "aipc-lsp.vsix"
    proc = _run([npm, "run", "package", "--", "-o", str(vsix)], timeout=300,
                env={"npm_config_offline": "true"})
    assert proc.returncode == 0, "vsce package failed"
    names = set(zipfile.ZipFile(vsix).namelist())
    assert "extension/out/extension.js" in names
    assert "extension/package.json" in names
    # The runtime dependency travels inside the package; the sources and tests do not.
    assert any(n.startswith("extension/node_modules/vscode-languageclient/") for n in names)
    assert not any(n.startswith(("extension/src/", "extension/out/test/")) for n in names)
