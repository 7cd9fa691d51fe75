"""The eval's runner against a stub LSP server (an oracle, or one that says nothing), the remote
peer against a stub llama.cpp server, and `--set` parsing: what reaches the report."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aipc_lsp.eval import EvalError, contender, parse_sets, remote, runner
from aipc_lsp.eval.runner import EvalClient, offset_of, uri_of
from aipc_lsp.eval.tasks import build_tasks
from aipc_lsp.lsp_client import plain
from lsprotocol import types

STUB = Path(__file__).with_name("eval_stub_server.py")


def stub_command(mode: str) -> tuple[str, ...]:
    return (sys.executable, str(STUB), mode)


def test_an_oracle_server_scores_full_marks_and_sees_the_helpers_open():
    tasks = build_tasks(quick=True)
    outcome = asyncio.run(runner.run(tasks, options={}, command=stub_command("oracle")))
    row = contender("oracle", "server", tasks, outcome)
    s = row["summary"]
    assert s["n"] == len(tasks) and s["exact"] == 1.0 and s["edit_sim"] == 1.0 and s["empty"] == 0.0
    assert s["pass_at_1"] == 1.0 and s["n_checked"] == sum(1 for t in tasks if t.checks)
    assert s["ms_p50"] > 0 and row["model"] == "stub-oracle"


def test_helpers_are_open_only_for_the_task_that_needs_them():
    tasks = [t for t in build_tasks(quick=True) if t.source in ("crossfile", "tests")][:4]

    async def go(open_other_files):
        client = EvalClient()
        await client.start_io(*stub_command("oracle"))
        await client.initialize_async(types.InitializeParams(capabilities=types.ClientCapabilities(), process_id=None))
        for task in tasks:
            await client.complete(task, open_other_files)
            assert await client.forget_other_files()
        log = plain(await client.protocol.send_request_async("stub/log", {}))
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()
        # After each task the server is told to drop other files, then its workspace layer emptied.
        assert [e["settings"] for e in log if "settings" in e] == [
            {"aipc": {"completion": {"other_files": False}}}, {"aipc": {}}] * len(tasks)
        return [(entry["uri"], entry["open"]) for entry in log if "uri" in entry]

    for open_other_files in (True, False):
        log = asyncio.run(go(open_other_files))
        for task, (uri, open_now) in zip(tasks, log):
            helpers = [uri_of(p) for p, _ in task.other_files] if open_other_files else []
            assert uri == uri_of(task.path) and sorted(open_now) == sorted([uri, *helpers])


def test_a_server_that_says_nothing():
    tasks = build_tasks(sources=("tests",), limit=3)
    row = contender("silent", "server", tasks, asyncio.run(runner.run(tasks, options={}, command=stub_command("silent"))))
    assert row["summary"]["empty"] == 1.0 and row["summary"]["exact"] == 0.0 and row["summary"]["pass_at_1"] == 0.0


def test_a_server_that_does_not_start_is_reported():
    tasks = build_tasks(limit=1)
    outcome = asyncio.run(runner.run(tasks, options={}, command=(sys.executable, "-c", "import sys; sys.exit(3)")))
    assert "error" in outcome or not outcome.get("answers")


def test_offsets_from_utf16_positions():
    text = "a = 1\nb = '𝄞x'\n"
    assert offset_of(text, types.Position(line=1, character=7)) == text.index("x")
    assert offset_of(text, types.Position(line=0, character=2)) == 2


def test_set_parsing():
    assert parse_sets(["fim=off", "completion.max_tokens=32", "other_files=false"]) == {
        "completion": {"fim": "off", "max_tokens": 32, "other_files": False}}
    assert parse_sets(["completion.fim=\"auto\""]) == {"completion": {"fim": "auto"}}
    for bad, words in (("max_tokens", "key=value"), ("nonsense=1", "unknown setting"),
                       ("max_tokens=many", "expected an integer"), ("fim=sideways", "is not one of")):
        with pytest.raises(EvalError, match=words):
            parse_sets([bad])


class Llama(BaseHTTPRequestHandler):
    """llama-cpp-python's server as the peer sees it: models, a tokenizer (one token per character),
    and streamed completions of a scripted answer, one character per chunk."""
    answer = ""
    prompts: list[str] = []
    chunks_sent: list[int] = []

    def do_GET(self):
        self._json({"data": [{"id": "stub-model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/extras/tokenize":
            return self._json({"tokens": [ord(c) for c in body["input"]]})
        if self.path == "/extras/detokenize":
            return self._json({"text": "".join(map(chr, body["tokens"]))})
        Llama.prompts.append(body["prompt"])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        sent = 0
        try:
            for char in Llama.answer:
                time.sleep(0.001)  # a token's time: a client that left is noticed
                self.wfile.write(f"data: {json.dumps({'choices': [{'text': char}]})}\n\n".encode())
                self.wfile.flush()
                sent += 1
            self.wfile.write(b"data: [DONE]\n\n")
        except OSError:
            pass
        Llama.chunks_sent.append(sent)

    def _json(self, value):
        data = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def llama():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Llama)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Llama.prompts.clear()
    Llama.chunks_sent.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_the_remote_peer_is_asked_as_llama_vim_asks(llama):
    task = next(t for t in build_tasks(sources=("crossfile",), kinds=("midline",)))
    Llama.answer = task.expected + "\n        raise RuntimeError('stub')\n    def other(self):\n        pass\n"
    out = remote.run(llama, [task], max_tokens=64, open_other_files=True)
    answer = out["answers"][task.id]
    prompt = Llama.prompts[-1]
    helper_path, helper_text = task.other_files[0]
    assert prompt.startswith(f"<|repo_name|>myproject\n<|file_sep|>{helper_path}\n{helper_text}<|file_sep|>filename\n")
    assert prompt.endswith("<|fim_middle|>") and task.text.split("\n")[task.line] + "<|fim_suffix|>" in prompt
    # The indent rule (the cursor line is indented 8) cut the answer at "    def", and the stream was left.
    assert answer["stopped_by"] == "indent" and answer["raw"].endswith("RuntimeError('stub')\n    ")
    deadline = time.monotonic() + 5
    while not Llama.chunks_sent and time.monotonic() < deadline:
        time.sleep(0.01)  # the stub notices the closed connection at its next write
    assert Llama.chunks_sent[-1] < len(Llama.answer)
    lines = task.text.split("\n")
    lines[task.line] += task.expected + "\n        raise RuntimeError('stub')\n    "
    assert answer["accepted"] == "\n".join(lines)
    row = contender("peer", "remote", [task], out)
    assert row["results"][0]["exact"] and row["results"][0]["passed"] is False  # the extra line breaks the code


def test_an_unreachable_remote_is_said_so():
    out = remote.run("http://127.0.0.1:9", build_tasks(limit=1), max_tokens=8, open_other_files=True)
    assert "unreachable" in out["error"]
    assert contender("peer", "remote", build_tasks(limit=1), out)["error"] == out["error"]
