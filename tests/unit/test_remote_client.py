"""The remote engine without a model: what it sends an OpenAI-compatible server and how it reads
the answers, errors, retries and timeouts, through httpx's MockTransport; and the one thing a
mock cannot show, a cancel that ends a stream while its reader waits on the socket, against a
socket that sends an event and then nothing. The real server is in tests/e2e/test_remote_engine.py."""

from __future__ import annotations

import json
import logging
import socket
import threading

import httpx
import pytest

from aipc_lsp import fim
from aipc_lsp.chat_template import ChatPrompter
from aipc_lsp.config import RemoteSettings, Settings, SettingsLayers
from aipc_lsp.engines.base import CancelFlag, EngineError, GenerationParams, RequestError
from aipc_lsp.engines.remote import CHAT_MARK, ESTIMATE_BYTES_PER_TOKEN, RemoteEngine, split_chat_prompt
from aipc_lsp.engines.remote_http import api_base, shown

KEY = "sk-test-0123456789abcdef"


def sse(*events: dict, done: bool = True) -> bytes:
    body = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events)
    return body + (b"data: [DONE]\n\n" if done else b"")


def pieces(texts, finish="stop", chat=False) -> list[dict]:
    def choice(text, reason=None):
        return {"delta": {"content": text}, "finish_reason": reason} if chat else {"text": text, "finish_reason": reason}
    return [{"choices": [choice(t)]} for t in texts] + ([{"choices": [choice("", finish)]}] if finish else [])


class Server:
    """A MockTransport handler: /v1/models, optional tokenizer, and queued stream bodies."""

    def __init__(self, *, models=("team-coder",), tokenize: bool = False, n_ctx: int | None = None):
        self.models = models
        self.tokenize = tokenize
        self.n_ctx = n_ctx
        self.streams: list = []  # bytes, an int status, or an exception to raise
        self.requests: list[httpx.Request] = []
        self.counts_silent = False  # the tokenizer endpoint times out

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": m} for m in self.models]})
        if path == "/extras/tokenize/count" and self.counts_silent:
            raise httpx.ReadTimeout("timed out")
        if path == "/extras/tokenize/count" and self.tokenize:
            text = json.loads(request.content)["input"]
            return httpx.Response(200, json={"count": len(text.split()) + text.count("<fim_prefix>")})
        if path == "/props" and self.n_ctx:
            return httpx.Response(200, json={"default_generation_settings": {"n_ctx": self.n_ctx}})
        if path in ("/v1/completions", "/v1/chat/completions"):
            answer = self.streams.pop(0)
            if isinstance(answer, Exception):
                raise answer
            if isinstance(answer, int):
                return httpx.Response(answer, json={"error": {"message": f"status {answer}"}})
            if isinstance(answer, httpx.Response):
                return answer
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=iter([answer]))
        return httpx.Response(404, text="not found")

    def bodies(self, path: str) -> list[dict]:
        return [json.loads(r.content) for r in self.requests if r.url.path == path]


def engine(server: Server, **options) -> RemoteEngine:
    settings = RemoteSettings(**{"url": "http://team.test:8080", **options})
    remote = RemoteEngine("", "CPU", options=settings, transport=httpx.MockTransport(server))
    remote.load()
    return remote


def run(remote: RemoteEngine, prompt: str, max_tokens: int = 16, stop=(), cancel=None, on_text=None):
    return remote.generate(prompt, GenerationParams(max_new_tokens=max_tokens, stop=stop), cancel or CancelFlag(), on_text)


# --- settings and URLs --------------------------------------------------------------------------------------------------

def test_the_remote_section_is_a_setting_like_any_other():
    layers = SettingsLayers(file={"engine": "remote", "remote": {"url": "http://team:8080/v1", "timeout_s": 3}})
    settings = layers.settings()
    assert settings.engine == "remote" and settings.remote.url == "http://team:8080/v1" and settings.remote.timeout_s == 3.0
    assert Settings().remote.retries >= 0 and Settings().remote.api_key_env == ""


@pytest.mark.parametrize("given, base", [
    ("http://team:8080", "http://team:8080/v1"), ("http://team:8080/v1/", "http://team:8080/v1"),
    ("https://ovms.example/v3", "https://ovms.example/v3"), ("http://[::1]:8000/api", "http://[::1]:8000/api/v1"),
])
def test_the_base_url_gets_its_version_path(given, base):
    assert api_base(given) == base


@pytest.mark.parametrize("bad", ["", "team:8080", "ftp://team/v1", "http:///v1"])
def test_a_url_that_is_no_http_url_is_refused_with_an_example(bad):
    with pytest.raises(EngineError, match="remote.url must be an http"):
        api_base(bad)


def test_credentials_in_a_url_are_not_shown():
    assert shown("http://user:secret@team:8080/v1") == "http://team:8080/v1"


def test_no_url_says_which_setting_is_missing():
    with pytest.raises(EngineError, match="remote.url"):
        RemoteEngine("", "CPU", options=RemoteSettings()).load()


# --- loading --------------------------------------------------------------------------------------------------------------

def test_load_picks_the_served_model_and_says_where_it_runs():
    remote = engine(Server(models=("qwen2.5-coder-7b", "other"), n_ctx=8192))
    assert remote.model == "qwen2.5-coder-7b"
    assert remote.info.device == "http://team.test:8080/v1"
    assert remote.info.max_prompt_tokens == 8192 - 512
    assert remote.info.chat_template and not remote.info.keeps_prompt_cache


def test_a_model_the_server_does_not_serve_is_named_with_those_it_does():
    with pytest.raises(EngineError, match="serves a, b"):
        engine(Server(models=("a", "b")), model="c")


def test_an_unreachable_server_fails_the_load_quickly_and_says_so():
    def refuse(request):
        raise httpx.ConnectError("connection refused")
    with pytest.raises(EngineError, match="cannot reach http://team.test:8080/v1"):
        RemoteEngine("", "CPU", options=RemoteSettings(url="http://team.test:8080"),
                     transport=httpx.MockTransport(refuse)).load()


# --- the API key ------------------------------------------------------------------------------------------------------------

def test_the_key_comes_from_the_named_variable_and_never_reaches_a_log_or_message(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TEAM_LLM_KEY", KEY)
    server = Server()
    remote = engine(server, api_key_env="TEAM_LLM_KEY")
    server.streams += [sse(*pieces(["x"])), 401]
    run(remote, "def f():")
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in server.requests)
    with pytest.raises(EngineError) as refused:
        run(remote, "def g():")
    assert "remote.api_key_env" in str(refused.value)
    assert KEY not in str(refused.value) and KEY not in caplog.text and KEY not in remote.model_path


def test_a_named_key_variable_that_is_unset_fails_the_load(monkeypatch):
    monkeypatch.delenv("TEAM_LLM_KEY", raising=False)
    with pytest.raises(EngineError, match="TEAM_LLM_KEY, which is not set"):
        engine(Server(), api_key_env="TEAM_LLM_KEY")


# --- completions ----------------------------------------------------------------------------------------------------------------

def test_a_completion_streams_the_servers_pieces_and_asks_for_prompt_reuse():
    server = Server()
    remote = engine(server)
    server.streams.append(sse(*pieces(["    return", " x", "\n"])))
    seen = []
    result = run(remote, "<fim_prefix>def f(x):\n<fim_suffix><fim_middle>", stop=("<|endoftext|>",),
                 on_text=lambda piece: seen.append(piece) is None)
    assert seen == ["    return", " x", "\n"] and result.text == "    return x\n" and result.tokens == 3
    assert result.first_token_s is not None and not result.cancelled
    body = server.bodies("/v1/completions")[0]
    assert body["prompt"].startswith("<fim_prefix>") and body["stream"] is True and body["cache_prompt"] is True
    assert body["model"] == "team-coder" and body["stop"] == ["<|endoftext|>"] and body["max_tokens"] == 16


def test_post_processing_stops_the_stream():
    server = Server()
    remote = engine(server)
    server.streams.append(sse(*pieces(["a", "b", "c", "d"])))
    result = run(remote, "x", on_text=lambda piece: piece != "b")
    assert result.text == "ab" and result.stopped_by_caller


def test_a_cancel_ends_the_read():
    server = Server()
    remote = engine(server)
    server.streams.append(sse(*pieces(["a", "b", "c", "d"])))
    cancel = CancelFlag()
    result = run(remote, "x", cancel=cancel, on_text=lambda piece: piece != "b" or cancel.set() or True)
    assert result.cancelled and result.text == "ab"


@pytest.mark.parametrize("status", [503, 429, 502])
def test_a_busy_or_restarting_server_is_asked_again_within_the_retries(status):
    server = Server()
    remote = engine(server, retries=1)
    server.streams += [status, sse(*pieces(["ok"]))]
    assert run(remote, "x").text == "ok"
    server.streams += [status, status]
    with pytest.raises(EngineError, match=f"HTTP {status}"):
        run(remote, "x")


def test_a_dropped_connection_is_tried_again_but_a_silent_server_is_not():
    server = Server()
    remote = engine(server, retries=1, timeout_s=0.5)
    server.streams += [httpx.RemoteProtocolError("server disconnected"), sse(*pieces(["ok"]))]
    assert run(remote, "x").text == "ok"
    server.streams += [httpx.ReadTimeout("timed out"), sse(*pieces(["never asked"]))]
    with pytest.raises(EngineError, match=r"sent nothing for 0.5 s \(remote.timeout_s\)"):
        run(remote, "x")


def test_a_request_the_server_refuses_is_a_request_error_not_a_broken_slot():
    server = Server()
    remote = engine(server)
    server.streams.append(400)
    with pytest.raises(RequestError, match="HTTP 400"):
        run(remote, "x")


def test_an_error_event_mid_answer_fails_the_generation():
    server = Server()
    remote = engine(server)
    server.streams.append(sse({"choices": [{"text": "a"}]}, {"error": {"message": "out of memory"}}))
    with pytest.raises(EngineError, match="out of memory"):
        run(remote, "x")


# --- chat ---------------------------------------------------------------------------------------------------------------

def chat_prompt(remote: RemoteEngine) -> str:
    prompter = ChatPrompter(remote)
    return prompter.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain x"}])


def test_a_conversation_goes_to_chat_completions_as_messages():
    remote = engine(Server())
    prompt = chat_prompt(remote)
    conversation, answered = split_chat_prompt(prompt)
    assert prompt.startswith(CHAT_MARK) and answered == ""
    assert json.loads(conversation)[1] == {"role": "user", "content": "Explain x"}
    assert split_chat_prompt("def f():\n") is None


def test_a_chat_in_chunks_reads_one_stream_on():
    server = Server()
    remote = engine(server)
    words = ["It ", "is ", "the ", "input ", "value."]
    server.streams.append(sse(*pieces(words, chat=True)))
    prompt, text = chat_prompt(remote), ""
    while True:  # as the scheduler asks: two tokens a chunk, the text so far after the prompt
        chunk = run(remote, prompt + text, max_tokens=2)
        text += chunk.text
        if chunk.tokens < 2:
            break
    assert text == "".join(words)
    assert len(server.bodies("/v1/chat/completions")) == 1
    assert server.bodies("/v1/chat/completions")[0]["messages"][0]["content"] == "Be brief."


def test_a_lost_chat_stream_is_asked_again_without_repeating_what_was_shown():
    server = Server()
    remote = engine(server)
    words = ["It ", "is ", "the ", "input ", "value."]
    # The first stream ends without a finish reason after three pieces (another request interrupted it).
    server.streams += [sse(*pieces(words[:3], finish=None, chat=True)), sse(*pieces(words, chat=True))]
    prompt = chat_prompt(remote)
    first = run(remote, prompt, max_tokens=2)
    second = run(remote, prompt + first.text, max_tokens=2)
    rest = run(remote, prompt + first.text + second.text, max_tokens=10)
    assert first.text + second.text + rest.text == "".join(words)
    assert len(server.bodies("/v1/chat/completions")) == 2


def test_settling_closes_a_chat_stream_nobody_continues():
    server = Server()
    remote = engine(server)
    server.streams += [sse(*pieces(["a ", "b ", "c"], chat=True)), sse(*pieces(["a ", "b ", "c"], chat=True))]
    prompt = chat_prompt(remote)
    first = run(remote, prompt, max_tokens=1)
    remote.settle()
    assert run(remote, prompt + first.text, max_tokens=5).text == "b c"  # asked again, "a " skipped
    assert len(server.bodies("/v1/chat/completions")) == 2


# --- counting -------------------------------------------------------------------------------------------------------------

def test_counts_come_from_the_servers_tokenizer_when_it_has_one():
    server = Server(tokenize=True)
    remote = engine(server)
    assert remote.count_tokens("a b c") == 3
    assert remote.count_tokens("a b c") == 3
    assert len([r for r in server.requests if r.url.path == "/extras/tokenize/count"]) == 2  # the probe, then one count


def test_a_server_without_a_tokenizer_gets_an_over_count_that_still_detects_fim():
    remote = engine(Server(models=("Qwen2.5-Coder-7B-Instruct",)))
    code = "def area(r):\n    return 3.14159 * r * r\n"
    assert remote.count_tokens(code) >= len(code.encode()) / ESTIMATE_BYTES_PER_TOKEN
    assert fim.detect(remote.count_tokens) is fim.QWEN
    assert fim.detect(engine(Server(models=("llama-3-8b",))).count_tokens) is None


def test_a_chat_prompt_is_counted_by_its_messages():
    remote = engine(Server())
    prompt = chat_prompt(remote)
    assert remote.count_tokens("Be brief.") + remote.count_tokens("Explain x") < remote.count_tokens(prompt) < 40


# --- a cancel while the reader waits on the socket -----------------------------------------------------------------------

def test_a_cancel_shuts_the_socket_while_the_reader_waits_for_the_server():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sent, closed = threading.Event(), threading.Event()

    def serve():
        connection, _ = listener.accept()
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:
                request += connection.recv(65536)
            if b"/v1/models" in request:
                body = json.dumps({"data": [{"id": "m"}]}).encode()
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                                   b"Content-Length: %d\r\n\r\n" % len(body) + body)
                return serve()
            if b"/v1/completions" not in request:
                connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return serve()
            event = sse(*pieces(["first"], finish=None), done=False)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                               + b"%x\r\n" % len(event) + event + b"\r\n")
            sent.set()
            connection.settimeout(30)
            try:
                while connection.recv(65536):  # the rest of the request's body, then the end of the stream
                    pass
            except ConnectionResetError:  # or a reset, when the client closed with bytes unread
                pass
            closed.set()  # the client went away (a timeout would have raised)

    threading.Thread(target=serve, daemon=True).start()
    remote = RemoteEngine("", "CPU", options=RemoteSettings(url=f"http://127.0.0.1:{port}", timeout_s=30))
    remote.load()
    cancel, outcome, first = CancelFlag(), {}, threading.Event()
    reader = threading.Thread(target=lambda: outcome.setdefault(
        "result", run(remote, "x", cancel=cancel, on_text=lambda piece: first.set() is None)))
    reader.start()
    assert sent.wait(10) and first.wait(10)
    cancel.set()  # the reader waits on the socket for a second piece that never comes
    reader.join(10)
    assert not reader.is_alive(), "the cancel did not end the read (it would have waited for remote.timeout_s)"
    assert outcome["result"].cancelled and outcome["result"].text == "first"
    assert closed.wait(10), "the server did not see the client go"
    remote.close()
    listener.close()


def test_a_strict_server_that_refuses_llama_cpp_fields_is_asked_without_them():
    server = Server()
    remote = engine(server)
    refusal = httpx.Response(422, json={"detail": [{"loc": ["body", "cache_prompt"], "msg": "Extra inputs are not permitted"}]})
    server.streams += [refusal, sse(*pieces(["ok"])), sse(*pieces(["again"]))]
    stop = ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|fim_prefix|>")
    assert run(remote, "x", stop=stop).text == "ok"
    assert run(remote, "y").text == "again"
    first, second, third = server.bodies("/v1/completions")
    assert first["cache_prompt"] is True and "cache_prompt" not in second and "cache_prompt" not in third
    assert first["stop"] == list(stop[:4])  # OpenAI's limit of four, which OpenVINO Model Server keeps


def test_a_count_the_server_does_not_answer_is_estimated_until_it_answers_again():
    server = Server(tokenize=True)
    remote = engine(server)
    server.counts_silent = True
    assert remote.count_tokens("a b c d e") == remote.estimate("a b c d e")
    asked = len(server.requests)
    assert remote.count_tokens("f g h") == remote.estimate("f g h") and len(server.requests) == asked  # not asked again
    server.counts_silent = False
    server.streams.append(sse(*pieces(["ok"])))
    run(remote, "x")  # the server answers: exact counts again
    assert remote.count_tokens("f g h") == 3


def test_bench_and_eval_can_switch_a_run_to_the_remote_engine():
    from aipc_lsp.setting_pairs import parse_sets

    assert parse_sets(["engine=remote", "fim=off"]) == {"engine": "remote", "completion": {"fim": "off"}}
    with pytest.raises(ValueError, match="not one of"):
        parse_sets(["engine=cloud"])


def test_where_code_goes_and_which_variable_is_sent_come_from_the_settings_file_only(caplog):
    # A workspace's settings (workspace/configuration) or the client's initializationOptions cannot
    # send the code, or an environment variable as a "key", to a server of their choosing.
    layers = SettingsLayers(file={"remote": {"url": "http://team:8080/v1"}},
                            workspace={"engine": "remote", "remote": {"url": "http://elsewhere:9/v1",
                                                                      "api_key_env": "AWS_SECRET_ACCESS_KEY",
                                                                      "timeout_s": 9.0}})
    settings = layers.settings()
    assert settings.remote.url == "http://team:8080/v1" and settings.remote.api_key_env == ""
    assert settings.engine == "remote" and settings.remote.timeout_s == 9.0  # the rest may come from the editor
    assert "remote.url is only read from settings.toml" in caplog.text


def test_a_remote_slot_is_named_for_its_engine_not_a_device():
    assert SettingsLayers(file={"engine": "remote"}).settings().slot_list()[0].label() == "remote"
    assert SettingsLayers(file={"engine": "openvino"}).settings().slot_list()[0].label() == "openvino-cpu"
