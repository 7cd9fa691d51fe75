"""The pygls language server: lifecycle, settings layers, and the model runtime.

Features (features/*.py) register their handlers on the server object; this module keeps
what every feature shares.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from aipc_lsp import __version__, parent_watch
from aipc_lsp.chat import ChatService
from aipc_lsp.config import Problem, Settings, SettingsLayers, load_file, validate
from aipc_lsp.runtime import ModelRuntime
from aipc_lsp.snippets import SnippetRing
from aipc_lsp.suggest import Suggester

log = logging.getLogger(__name__)
CONFIG_SECTION = "aipc"


class LspReporter:
    """Model preparation shown to the user: work-done progress, log lines, error messages."""

    def __init__(self, server: "AipcServer"):
        self.server = server
        self.token: str | None = None
        # Until the client acknowledges the token, reports wait here (only the latest matters).
        self.begun = False
        self.waiting: tuple[str, int | None] | None = None
        self.ended: str | None = None

    def begin(self, title: str) -> None:
        log.info("%s", title)
        caps = self.server.client_capabilities.window
        if caps is None or not caps.work_done_progress:
            return
        self.token = str(uuid.uuid4())
        self.begun = False
        self.waiting = None
        self.ended = None
        token = self.token
        progress = self.server.work_done_progress

        def created(*_args) -> None:
            if self.token == token:
                progress.begin(token, types.WorkDoneProgressBegin(title=title, percentage=0, cancellable=False))
                self.begun = True
                if self.waiting:
                    self._send_report(*self.waiting)
                if self.ended is not None:
                    self._send_end(self.ended)

        progress.create(token, created)

    def report(self, message: str, percent: int | None) -> None:
        log.info("%s%s", message, f" ({percent}%)" if percent is not None else "")
        if self.token and not self.begun:
            self.waiting = (message, percent)
        elif self.token:
            self._send_report(message, percent)

    def _send_report(self, message: str, percent: int | None) -> None:
        try:
            self.server.work_done_progress.report(
                self.token, types.WorkDoneProgressReport(message=message, percentage=percent))
        except Exception:  # a client that dropped the token must not break preparation
            log.debug("progress report dropped", exc_info=True)

    def end(self, message: str) -> None:
        log.info("%s", message)
        if self.token and not self.begun:
            self.ended = message
        elif self.token:
            self._send_end(message)

    def _send_end(self, message: str) -> None:
        try:
            self.server.work_done_progress.end(self.token, types.WorkDoneProgressEnd(message=message))
        except Exception:
            log.debug("progress end dropped", exc_info=True)
        self.token = None
        self.begun = False

    def error(self, message: str) -> None:
        self.server.tell_user(message, types.MessageType.Error)

    def warn(self, message: str) -> None:
        self.server.tell_user(message, types.MessageType.Warning)


class AipcServer(LanguageServer):
    def __init__(self, config_path: Path | None = None, status_port: int | None = None,
                 status_host: str = "127.0.0.1", **kwargs):
        super().__init__("aipc-lsp", __version__, **kwargs)
        self.config_path = config_path
        self.status_port = status_port
        self.status_host = status_host
        self.status_endpoint = None
        self.layers = SettingsLayers()
        self.settings = Settings()
        self.runtime = ModelRuntime(LspReporter(self))
        self.suggester = Suggester(self.runtime)
        # Snippets of the user's other files for completion prompts, fed by the document events.
        self.snippets = SnippetRing()
        self.chat = ChatService(self.runtime)
        self.shutting_down = False
        # Settings problems found before the client can be shown messages (initialize).
        self.pending_problems: list[Problem] = []
        self._told: set[str] = set()  # tell_user_once's keys
        # How many times settings took effect (initialized, each didChangeConfiguration): aipc/status
        # says it, so a client can tell its change was applied.
        self.settings_applied = 0

    def end_of_input(self) -> None:
        """The client's stream ended (`exit`, or the editor went away): no job may start or
        go on from here."""
        self.runtime.close()

    def shutdown(self) -> None:
        # Also reached when the client goes away (end of input) without `shutdown`: stop every
        # generation so worker threads end within a decode step and the process can exit.
        self.runtime.close()
        super().shutdown()

    # -- messages to the user -------------------------------------------------------------
    def tell_user(self, message: str, kind: types.MessageType = types.MessageType.Warning) -> None:
        level = {types.MessageType.Error: logging.ERROR, types.MessageType.Warning: logging.WARNING}.get(kind, logging.INFO)
        log.log(level, "%s", message)
        try:
            self.window_show_message(types.ShowMessageParams(type=kind, message=message))
        except Exception:
            log.debug("could not show message", exc_info=True)

    def tell_user_once(self, key: str, message: str, kind: types.MessageType = types.MessageType.Warning) -> None:
        """For what every keystroke would repeat (a completion that cannot run as configured):
        shown the first time for `key`, logged at debug level after that."""
        if key in self._told:
            log.debug("%s", message)
            return
        self._told.add(key)
        self.tell_user(message, kind)

    def report_problems(self, problems: list[Problem]) -> None:
        if problems:
            lines = "\n".join(f"- {p}" for p in problems)
            self.tell_user(f"aipc-lsp: problems in settings (using defaults for these):\n{lines}")

    # -- settings ---------------------------------------------------------------------------
    def load_file_settings(self) -> list[Problem]:
        if self.config_path is None:
            return []
        self.layers.file, problems = load_file(self.config_path)
        return problems

    def apply_settings(self) -> None:
        self.settings = self.layers.settings()
        logging.getLogger("aipc_lsp").setLevel(self.settings.log_level.upper())
        if not (self.settings.completion.enabled and self.settings.completion.other_files):
            self.snippets.clear()  # nothing of the user's files kept that no prompt will use
        self.runtime.configure(self.settings)
        self.settings_applied += 1

    async def pull_workspace_settings(self) -> list[Problem]:
        caps = self.client_capabilities.workspace
        if caps is None or not caps.configuration:
            return []
        try:
            result = await self.workspace_configuration_async(
                types.ConfigurationParams(items=[types.ConfigurationItem(section=CONFIG_SECTION)]))
        except Exception as exc:
            log.warning("workspace/configuration failed: %s", exc)
            return []
        value: Any = result[0] if result else None
        self.layers.workspace, problems = validate(value or {}, "workspace/configuration")
        return problems


def create_server(config_path: Path | None = None, status_port: int | None = None,
                  status_host: str = "127.0.0.1") -> AipcServer:
    from aipc_lsp.protocol import AipcProtocol

    server = AipcServer(config_path=config_path, status_port=status_port, status_host=status_host,
                        protocol_cls=AipcProtocol)

    @server.feature(types.INITIALIZE)
    def on_initialize(ls: AipcServer, params: types.InitializeParams) -> None:
        problems = ls.load_file_settings()
        ls.layers.init_options, more = validate(params.initialization_options or {}, "initializationOptions")
        ls.pending_problems = problems + more
        # Snippets show paths relative to the workspace folder holding the file.
        folders = [folder.uri for folder in params.workspace_folders or []]
        ls.snippets.set_roots(folders or [root for root in (params.root_uri, params.root_path) if root][:1])
        if params.process_id is not None:  # the editor gone with stdin left open: exit (parent_watch.py)
            pid = params.process_id
            parent_watch.watch(pid, lambda: parent_watch.exit_now(f"the client's process {pid} exited"))

    @server.feature(types.INITIALIZED)
    async def on_initialized(ls: AipcServer, params: types.InitializedParams) -> None:
        if ls.status_port is not None:
            from aipc_lsp.features.status import serve_status

            try:
                ls.status_endpoint = await serve_status(ls, ls.status_port, ls.status_host)
            except OSError as exc:
                ls.tell_user(f"aipc-lsp: cannot serve status on {ls.status_host}:{ls.status_port}: {exc}")
        problems = ls.pending_problems + await ls.pull_workspace_settings()
        ls.pending_problems = []
        ls.report_problems(problems)
        ls.apply_settings()

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def on_configuration(ls: AipcServer, params: types.DidChangeConfigurationParams) -> None:
        caps = ls.client_capabilities.workspace
        if caps is not None and caps.configuration:
            problems = await ls.pull_workspace_settings()
        else:
            pushed = params.settings.get(CONFIG_SECTION) if isinstance(params.settings, dict) else None
            ls.layers.workspace, problems = validate(pushed or {}, "workspace/didChangeConfiguration")
        ls.report_problems(problems)
        ls.apply_settings()

    @server.feature(types.SHUTDOWN)
    def on_shutdown(ls: AipcServer, params: None) -> None:
        ls.shutting_down = True
        ls.runtime.close()

    from aipc_lsp.features import chat, completion, debug, status

    completion.register(server)
    chat.register(server)
    status.register(server)
    debug.register(server)
    return server
