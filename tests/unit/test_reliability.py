"""The pieces behind docs/RELIABILITY.md and docs/SECURITY.md, one by one: the document model, the
model file checks, the client process watch, log privacy, settings only the user's file may set,
the chat template sandbox."""

from __future__ import annotations

import logging
import struct
import subprocess
import sys
import threading

import pytest
from lsprotocol import types

from aipc_lsp import log_privacy, parent_watch
from aipc_lsp.chat_template import ChatTemplateError, render_jinja
from aipc_lsp.config import SettingsLayers, validate
from aipc_lsp.documents import LspWorkspace, split_lines
from aipc_lsp.models.integrity import DamagedModel, check_gguf, check_openvino_ir


# -- documents -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, lines", [
    ("", ()),
    ("a", ("a",)),
    ("a\n", ("a\n",)),
    ("a\r\nb\rc\nd", ("a\r\n", "b\r", "c\n", "d")),
    ("form\x0cfeed\u2028and\x85nel\x0b", ("form\x0cfeed\u2028and\x85nel\x0b",)),  # not LSP line breaks
])
def test_lines_break_only_where_lsp_says(text, lines):
    assert split_lines(text) == lines


def workspace(encoding: str = "utf-16") -> LspWorkspace:
    return LspWorkspace(None, types.TextDocumentSyncKind.Incremental, [], encoding)


def edited(text: str, start: tuple[int, int], end: tuple[int, int], new: str, encoding: str = "utf-16") -> str:
    ws = workspace(encoding)
    uri = "file:///a%20b.py"
    ws.put_text_document(types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text))
    change = types.TextDocumentContentChangePartial(
        range=types.Range(start=types.Position(*start), end=types.Position(*end)), text=new)
    ws.update_text_document(types.VersionedTextDocumentIdentifier(uri=uri, version=2), change)
    assert uri in ws.text_documents  # under the URI as sent (pygls decoded it)
    return ws.get_text_document(uri).source


def test_a_character_past_the_end_of_the_last_line_is_its_end():
    assert edited("abc", (0, 99), (0, 99), "X") == "abcX"  # pygls 2.1.1: "abXc"


def test_a_character_past_the_end_of_a_line_stops_before_its_line_break():
    assert edited("ab\r\ncd", (0, 7), (0, 9), "X") == "abX\r\ncd"


def test_a_line_past_the_end_is_the_end_of_the_document():
    assert edited("ab\n", (5, 0), (6, 3), "X") == "ab\nX"


def test_positions_after_a_form_feed_are_on_the_right_line():
    assert edited("a\x0cb\nc", (1, 0), (1, 1), "X") == "a\x0cb\nX"


def test_utf16_positions_count_surrogate_pairs():
    assert edited("😋x", (0, 2), (0, 3), "y") == "😋y"
    assert edited("😋x", (0, 4), (0, 5), "y", "utf-8") == "😋y"
    assert edited("😋x", (0, 1), (0, 2), "y", "utf-32") == "😋y"


def test_a_change_to_a_document_that_is_not_open_is_ignored():
    ws = workspace()
    ws.update_text_document(types.VersionedTextDocumentIdentifier(uri="file:///nope.py", version=2),
                            types.TextDocumentContentChangeWholeDocument(text="x"))
    assert "file:///nope.py" not in ws.text_documents


# -- model files -----------------------------------------------------------------------------------------
def gguf(tensors: list[tuple[str, list[int], int]], data: bytes, alignment: int | None = None) -> bytes:
    """A GGUF v3 file: metadata (general.alignment, when given), F32 tensors (type 0) at the offsets given."""
    def string(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()
    kv = [(string("general.alignment") + struct.pack("<I", 4) + struct.pack("<I", alignment))] if alignment else []
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv)
    for name, dims, offset in tensors:
        head += string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", 0, offset)
    align = alignment or 32
    head += b"\0" * (-len(head) % align)
    return head + data


def test_a_whole_gguf_passes(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf([("a", [4], 0), ("b", [2, 2], 32)], bytes(48)))
    check_gguf(path)


@pytest.mark.parametrize("alignment", [None, 64])
def test_a_gguf_cut_short_is_named_with_the_bytes_it_lacks(tmp_path, alignment):
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf([("a", [4], 0), ("b", [2, 2], 32)], bytes(40), alignment))
    with pytest.raises(DamagedModel, match="cut short: its tensors need"):
        check_gguf(path)


def test_a_gguf_cut_inside_its_header_and_a_file_that_is_none_are_named(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf([("a", [4], 0)], bytes(16))[:30])
    with pytest.raises(DamagedModel, match="inside its header"):
        check_gguf(path)
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(DamagedModel, match="not a GGUF model file"):
        check_gguf(path)


def test_an_openvino_ir_with_its_weights_cut_short_is_named(tmp_path):
    (tmp_path / "openvino_model.xml").write_text(
        '<net><layers><layer type="Const"><data offset="0" size="64"/></layer>'
        '<layer type="Const"><data offset="64" size="32"/></layer></layers></net>')
    (tmp_path / "openvino_model.bin").write_bytes(bytes(96))
    check_openvino_ir(tmp_path)
    (tmp_path / "openvino_model.bin").write_bytes(bytes(90))
    with pytest.raises(DamagedModel, match="cut short: its graph needs 96 bytes"):
        check_openvino_ir(tmp_path)


# -- the client's process --------------------------------------------------------------------------------
def test_the_watch_calls_back_when_the_process_exits():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    gone = threading.Event()
    assert parent_watch.watch(child.pid, gone.set)
    assert not gone.wait(0.2)
    child.kill()
    child.wait()
    assert gone.wait(10)


def test_a_process_that_is_not_there_is_not_watched():
    assert not parent_watch.watch(2**22 + 12345, lambda: None)


# -- logs ------------------------------------------------------------------------------------------------
def test_text_reaches_a_log_line_only_when_allowed():
    try:
        log_privacy.allow_document_text(False)
        assert log_privacy.shown("secret = 42") == "<11 characters: -vv shows them>"
        assert log_privacy.shown(b"secret") == "<6 bytes: -vv shows them>"
        log_privacy.allow_document_text(True)
        assert log_privacy.shown("secret = 42") == "'secret = 42'"
    finally:
        log_privacy.allow_document_text(False)


# -- settings that let a model run code -----------------------------------------------------------------
def test_trust_remote_code_is_read_from_the_settings_file_only(caplog):
    on, _ = validate({"transformers": {"trustRemoteCode": True}}, "test")
    assert SettingsLayers(file=on).settings().transformers.trust_remote_code
    with caplog.at_level(logging.WARNING):
        assert not SettingsLayers(init_options=on).settings().transformers.trust_remote_code
        assert not SettingsLayers(workspace=on).settings().transformers.trust_remote_code
    assert "only read from settings.toml" in caplog.text
    assert not SettingsLayers().settings().transformers.trust_remote_code


# -- chat templates --------------------------------------------------------------------------------------
@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",  # the classic escape to os/subprocess
    "{{ messages.append({'role': 'user', 'content': 'x'}) }}",  # templates may not change their input
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
])
def test_a_chat_template_cannot_reach_python(template):
    with pytest.raises(ChatTemplateError):
        render_jinja(template, [{"role": "user", "content": "hi"}])
