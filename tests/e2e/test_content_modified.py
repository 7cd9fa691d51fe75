"""A request followed closely by an edit of its document: the request was sent for the text before
the edit, but pygls runs an async handler as a task whose first step comes after the messages
read behind the request, so the edit is applied before the handler looks at the document. The
server remembers where each request arrived among the document events (protocol.py) and answers
such a request -32801 ContentModified (chat), or nothing (completion), never from the newer text.

Each test writes the request and the edit in one write, as an editor does when the user types
right after asking; the real server over stdio.
"""

from __future__ import annotations

import json

import pytest

from server_process import ServerProcess

NO_MODEL = {"model": "/nonexistent/model.gguf", "completion": {"warm_on_open": False}}
CONTENT_MODIFIED, INVALID_PARAMS, REQUEST_FAILED = -32801, -32602, -32803
URI = "file:///edited/long.py"
LONG = "\n".join(f"value_{i} = {i}" for i in range(60))


def frame(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def open_long(server: ServerProcess) -> None:
    server.notify("textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 1,
                                                            "text": LONG}})


def chat(msg_id: int, end_line: int = 59) -> dict:
    return {"jsonrpc": "2.0", "id": msg_id, "method": "aipc/inlineChat",
            "params": {"textDocument": {"uri": URI}, "instruction": "what does this do?",
                       "range": {"start": {"line": 50, "character": 0}, "end": {"line": end_line, "character": 0}}}}


def chat_command(msg_id: int) -> dict:
    selection = {"start": {"line": 50, "character": 0}, "end": {"line": 59, "character": 0}}
    return {"jsonrpc": "2.0", "id": msg_id, "method": "workspace/executeCommand",
            "params": {"command": "aipc.chat", "arguments": [URI, selection, "what does this do?"]}}


def shortened(version: int) -> dict:
    """An edit that leaves the document 12 lines long: the chat's range (to line 59) no longer fits."""
    return {"jsonrpc": "2.0", "method": "textDocument/didChange",
            "params": {"textDocument": {"uri": URI, "version": version},
                       "contentChanges": [{"text": "\n".join(f"short_{i} = {i}" for i in range(12))}]}}


def error_code(reply: dict):
    return reply.get("error", {}).get("code")


def test_a_chat_whose_document_changed_after_it_was_sent_is_answered_content_modified():
    server = ServerProcess()
    try:
        server.start(NO_MODEL)
        open_long(server)
        # Sent alone, the chat reaches the engine (none here: it cannot run).
        assert error_code(server.call("aipc/inlineChat", chat(0)["params"])) == REQUEST_FAILED
        # With an edit that removes its lines written right behind it: the range was right for the
        # text it was sent for, so not -32602 (as before the fix), but -32801.
        server.send_raw(frame(chat(1)) + frame(shortened(2)))
        reply = server.response(1)
        assert error_code(reply) == CONTENT_MODIFIED, reply
        assert "changed after" in reply["error"]["message"]
        # The command form of the same chat, and a chat whose document is closed right behind it.
        open_long(server)
        server.send_raw(frame(chat_command(2)) + frame(shortened(3)))
        assert error_code(server.response(2)) == CONTENT_MODIFIED
        open_long(server)
        server.send_raw(frame(chat(3)) + frame({"jsonrpc": "2.0", "method": "textDocument/didClose",
                                                "params": {"textDocument": {"uri": URI}}}))
        assert error_code(server.response(3)) == CONTENT_MODIFIED
        # The remembered events are per document and per request: a request sent after the edit is
        # judged on the new text (its range does not fit: -32602), an edit of another document
        # does not count.
        open_long(server)
        server.send_raw(frame(shortened(4)))
        assert error_code(server.call("aipc/inlineChat", chat(0)["params"])) == INVALID_PARAMS
        open_long(server)
        other = {"jsonrpc": "2.0", "method": "textDocument/didOpen",
                 "params": {"textDocument": {"uri": "file:///edited/other.py", "languageId": "python", "version": 1,
                                             "text": "x = 1\n"}}}
        server.send_raw(frame(chat(4)) + frame(other))
        assert error_code(server.response(4)) == REQUEST_FAILED
        server.end_cleanly()
    finally:
        server.kill()


@pytest.mark.model
def test_a_completion_whose_document_changed_after_it_was_sent_is_answered_with_nothing():
    """Completion keeps its answer for a version that moved on: an empty list (clients ask again for
    the new text), not a suggestion computed at the old position in the new text."""
    server = ServerProcess()
    try:
        server.start({"completion": {"max_tokens": 8, "max_lines": 1, "warm_on_open": False}})
        server.wait_ready()
        text = "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        "
        server.notify("textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 1,
                                                                "text": text}})
        end = {"line": 5, "character": 8}
        request = {"jsonrpc": "2.0", "id": 1, "method": "textDocument/inlineCompletion",
                   "params": {"textDocument": {"uri": URI}, "position": end, "context": {"triggerKind": 2}}}
        # The class renamed: the cursor's position is the same, the text before it is not.
        rename = {"jsonrpc": "2.0", "method": "textDocument/didChange",
                  "params": {"textDocument": {"uri": URI, "version": 2},
                             "contentChanges": [{"range": {"start": {"line": 0, "character": 6},
                                                           "end": {"line": 0, "character": 11}},
                                                 "text": "Pile"}]}}
        server.send_raw(frame(request) + frame(rename))
        reply = server.response(1, timeout=60)
        assert reply.get("result") == {"items": []}, reply
        # Asked for the new text, the model does suggest there.
        reply = server.call("textDocument/inlineCompletion", request["params"], timeout=60)
        assert len(reply["result"]["items"]) == 1 and reply["result"]["items"][0]["insertText"].strip(), reply
        server.end_cleanly()
    finally:
        server.kill()
