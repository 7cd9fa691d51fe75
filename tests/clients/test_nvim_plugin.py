"""The Neovim plugin (editor-clients/nvim/lua/aipc) in a real headless Neovim 0.11 against the
real server and default model, driven like a user: keys go in through Neovim's RPC socket
(`nvim --server S --remote-send`), so typing fires TextChangedI and the mappings run as typed;
state is read back with `--remote-expr`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from test_neovim import _find_nvim

pytestmark = pytest.mark.model

RTP = Path(__file__).resolve().parents[2] / "editor-clients" / "nvim"
SOURCE = (
    "import os\n"
    "\n"
    "\n"
    "def add(a, b):\n"
    "    return a + b\n"
    "\n"
    "\n"
    "def list_python_files(folder):\n"
    "    \n"
)
SETUP = """
vim.opt.rtp:prepend(vim.env.AIPC_RTP)
require('aipc').setup({ ghost = { debounce_ms = 60 } })
vim.lsp.config('aipc_lsp', {
  cmd = vim.json.decode(vim.env.AIPC_CMD),
  init_options = { completion = { max_tokens = 24, max_lines = 2 }, chat = { max_tokens = 96 } },
})
vim.lsp.enable('aipc_lsp')
"""


class Nvim:
    def __init__(self, exe: str, folder: Path):
        self.exe = exe
        self.socket = str(folder / "nvim.sock")
        setup = folder / "setup.lua"
        setup.write_text(SETUP, encoding="utf-8")
        env = {"AIPC_RTP": str(RTP), "AIPC_CMD": json.dumps([sys.executable, "-m", "aipc_lsp", "serve"])}
        import os
        self.proc = subprocess.Popen(
            [exe, "--headless", "--clean", "-n", "-i", "NONE", "--listen", self.socket, "-c", f"luafile {setup}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env})
        deadline = time.monotonic() + 20
        while not Path(self.socket).exists():
            assert time.monotonic() < deadline and self.proc.poll() is None, "nvim did not start listening"
            time.sleep(0.05)

    def send(self, keys: str) -> None:
        subprocess.run([self.exe, "--server", self.socket, "--remote-send", keys], check=True, timeout=20,
                       capture_output=True)

    def lua(self, expr: str):
        """Evaluate a Lua expression in the editor; its value comes back through JSON."""
        code = f"vim.json.encode({{v = {expr}}})".replace("\\", "\\\\").replace('"', '\\"')
        out = subprocess.run(
            [self.exe, "--server", self.socket, "--remote-expr", f'luaeval("{code}")'],
            check=True, timeout=60, capture_output=True, text=True).stdout
        value = json.loads(out.strip())
        return value.get("v") if isinstance(value, dict) else None  # {v = nil} encodes as []

    def wait(self, expr: str, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            value = self.lua(expr)
            if value not in (None, False, 0, ""):
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    def lines(self) -> list[str]:
        return self.lua("vim.api.nvim_buf_get_lines(0, 0, -1, false)")

    def close(self) -> None:
        try:
            self.send("<Esc>:qa!<CR>")
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()


@pytest.fixture(scope="module")
def nvim():
    exe, reason = _find_nvim()
    if exe is None:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="aipc-nvim-"))  # short: socket paths are limited
    (folder / "files.py").write_text(SOURCE, encoding="utf-8")
    editor = Nvim(exe, folder)
    try:
        editor.send(f":edit {folder / 'files.py'}<CR>")
        editor.wait("#vim.lsp.get_clients({ name = 'aipc_lsp', bufnr = 0 })", 60, "the client to attach")
        editor.wait("(function() local r = vim.lsp.get_clients({ name = 'aipc_lsp' })[1]:request_sync("
                    "'aipc/status', {}, 5000); return r and r.result and (r.result.ready or r.result.error) end)()",
                    180, "the model")
        yield editor
    finally:
        editor.close()
        shutil.rmtree(folder, ignore_errors=True)


GHOST = "require('aipc.ghost').current()"
STATUS = ("(function() return vim.lsp.get_clients({ name = 'aipc_lsp' })[1]:request_sync("
          "'aipc/status', {}, 5000).result end)()")
EXTMARKS = "#vim.api.nvim_buf_get_extmarks(0, require('aipc.ghost').ns, 0, -1, {})"


def test_ghost_text_as_you_type_then_accept_word_line_and_all(nvim: Nvim):
    nvim.send("<Esc>9G$")
    nvim.send("Areturn")  # typed: TextChangedI, debounce, request, extmark
    shown = nvim.wait(GHOST, 60, "ghost text")
    assert shown["row"] == 8 and shown["col"] == len("    return") and shown["text"].strip(), shown
    assert nvim.lua(EXTMARKS) == 1
    assert nvim.lines()[8] == "    return", "ghost text must not be in the buffer"
    suggestion = shown["text"]
    # Next word: the buffer gains the suggestion's first word, the rest stays as ghost text.
    nvim.send("<M-w>")
    after_word = nvim.lines()[8]
    assert after_word.startswith("    return") and len(after_word) > len("    return")
    taken = after_word[len("    return"):]
    assert suggestion.startswith(taken) and taken.strip() and " " not in taken.strip()
    rest = suggestion[len(taken):]
    if rest:
        assert nvim.lua(GHOST)["text"] == rest
        # Next line: the rest of this line (and its line break, if the suggestion goes on).
        nvim.send("<M-l>")
        first_line = suggestion.split("\n", 1)[0]
        assert nvim.lines()[8] == "    return" + first_line
        if "\n" in suggestion:
            assert nvim.lua(GHOST)["text"] == suggestion.split("\n", 1)[1]
            nvim.send("<C-l>")  # accept all the rest
    text = "\n".join(nvim.lines())
    assert text == SOURCE[:-len("    \n")] + "    return" + suggestion, (text, suggestion)
    assert nvim.lua(GHOST) is None and nvim.lua(EXTMARKS) == 0


def test_ghost_text_is_cleared_when_the_cursor_moves(nvim: Nvim):
    nvim.send("<Esc>:%d<CR>")
    nvim.send("idef add(a, b):<CR>return")
    nvim.wait(GHOST, 60, "ghost text")
    nvim.send("<Left>")
    assert nvim.lua(GHOST) is None and nvim.lua(EXTMARKS) == 0
    # Leaving insert mode clears too; a new keystroke asks again.
    nvim.send("<End> a")
    nvim.wait(GHOST, 60, "ghost text again")
    nvim.send("<Esc>")
    assert nvim.lua(EXTMARKS) == 0


def test_chat_streams_into_a_float_and_accept_applies_the_edit(nvim: Nvim):
    nvim.send("<Esc>:%d<CR>")
    nvim.send("idef add(a, b):<CR>return a + b<CR><Esc>")
    nvim.send("<Esc>ggVj:AipcChat Add a docstring to this function<CR>")
    chat = "require('aipc.chat').current"
    nvim.wait(f"{chat} and {chat}.chunks", 60, "the first streamed piece")
    float_lines = nvim.lua(f"vim.api.nvim_buf_get_lines({chat}.float_buf, 0, -1, false)")
    assert float_lines[0] == "> Add a docstring to this function"
    assert nvim.lua(f"vim.api.nvim_win_get_config({chat}.win).relative") == "editor"
    nvim.wait(f"{chat}.done", 120, "the whole answer")
    state = nvim.lua(f"{{ chunks = {chat}.chunks, text = {chat}.text, edit = {chat}.result.edit }}")
    assert state["chunks"] >= 3, state
    assert state["edit"], f"no edit in the answer: {state['text']!r}"
    float_text = "\n".join(nvim.lua(f"vim.api.nvim_buf_get_lines({chat}.float_buf, 0, -1, false)"))
    assert state["text"] in float_text and "AipcChatAccept" in float_text
    edits = state["edit"].get("documentChanges", [{}])[0].get("edits") or next(iter(state["edit"]["changes"].values()))
    new_text = edits[0]["newText"]
    nvim.send(":AipcChatAccept<CR>")
    text = "\n".join(nvim.lines()) + "\n"
    assert text.startswith(new_text), (text, new_text)
    assert nvim.lua(chat) is None
    assert nvim.lua("#vim.api.nvim_list_wins()") == 1, "the float is closed"


def test_closing_a_chat_cancels_it(nvim: Nvim):
    nvim.send("<Esc>:%d<CR>")
    nvim.send("i" + "<CR>".join(SOURCE.rstrip().split("\n")) + "<Esc>")
    nvim.send(":%AipcChat Explain every line of this file in detail<CR>")
    chat = "require('aipc.chat').current"
    nvim.wait(f"{chat} and {chat}.chunks", 60, "the first streamed piece")
    nvim.send(":AipcChatDiscard<CR>")
    deadline = time.monotonic() + 30
    while (state := nvim.lua(STATUS))["slots"][0]["busy"]:
        assert time.monotonic() < deadline, "the generation kept running after the chat was closed"
        time.sleep(0.1)
    # Stopped by the discard (counted as cancelled), not run to its end. (The server may compute ahead
    # for a suggestion shown while the text was typed: background work of its own.)
    assert [job for job in state["liveJobs"] if job["kind"] == "chat"] == []
    assert state["slots"][0]["cancelled"] >= 1
    assert nvim.lua(chat) is None


def test_a_resting_cursor_is_reported_so_the_server_warms_the_window_there(nvim: Nvim):

    def cursor_warmups() -> list[dict]:
        return [w for w in nvim.lua(STATUS)["warmups"] if w.get("at") == "cursor"]

    nvim.send("<Esc>:%d<CR>")
    nvim.send("i" + "<CR>".join(SOURCE.rstrip().split("\n")) + "<Esc>")
    before = len(cursor_warmups())
    nvim.send("gg")  # the cursor rests at the top: a window of nothing before it, nothing to warm
    nvim.send("4G$")  # and here, after "def add(a, b):"
    deadline = time.monotonic() + 30
    while len(found := cursor_warmups()) == before:
        assert time.monotonic() < deadline, "no warm-up at the cursor"
        time.sleep(0.2)
    assert found[-1]["uri"].endswith("/files.py") and not found[-1]["cancelled"], found[-1]
    # The prompt ends at the cursor, which in normal mode is on the ":" (the text before it, and
    # little else).
    assert len("import os\n\n\ndef add(a, b)") <= found[-1]["promptChars"] < len(SOURCE) + 200, found[-1]


def test_checkhealth_reports_server_model_and_device(nvim: Nvim):
    nvim.send("<Esc>:checkhealth aipc<CR>")
    report = nvim.wait("(function() local t = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), '\\n');"
                       " return t:find('slot') and t end)()", 30, "the health report")
    assert "OK Neovim 0.11" in report or "Neovim 0.11" in report
    assert "aipc_lsp running" in report and "model ready" in report
    assert "device CPU" in report and "openvino-cpu: openvino on CPU" in report
    assert "ERROR" not in report, report
    nvim.send(":bwipeout<CR>")
