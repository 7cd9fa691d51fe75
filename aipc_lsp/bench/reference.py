"""The bare engine in the server's configuration, kept in a child process while the server
bench runs (bench/engine.py `serve_reference`): the server's decode and the bare one take turns
a few seconds apart, and the engine alone types the server bench's document, so each server
figure has the engine's own beside it from the same stretch of a shared host."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile


class ReferenceEngine:
    def __init__(self, spec: dict):
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        self._proc = subprocess.Popen([sys.executable, "-m", "aipc_lsp.bench.engine", "--reference", json.dumps(spec)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                      encoding="utf-8", bufsize=1)
        self.error: str | None = None
        ready = self._reply()
        if "error" in ready:
            self.error = ready["error"]

    def decode(self, round_: int) -> dict:
        """Bare decode rate (tokens/s) and step time on the server's decode prompts of that round."""
        return self._ask({"op": "decode", "round": round_})

    def typing(self) -> dict:
        """The engine API alone on the server bench's 1.5k document: cold, then typed on."""
        return self._ask({"op": "typing"})

    def _ask(self, request: dict) -> dict:
        if self.error:
            return {"error": self.error}
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
        except OSError:
            pass  # gone: the reply says why
        reply = self._reply()
        if "error" in reply and self._proc.poll() is not None:
            self.error = reply["error"]
        return reply

    def _reply(self) -> dict:
        for line in self._proc.stdout:
            if line.startswith("BENCH-RESULT "):
                return json.loads(line[len("BENCH-RESULT "):])
        self._proc.wait()
        self._stderr.seek(0)
        last = (self._stderr.read().strip().splitlines() or [f"exited with code {self._proc.returncode}"])[-1]
        return {"error": f"the reference engine process ended: {last}"}

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        self._stderr.close()

    def __enter__(self) -> "ReferenceEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
