"""`aipc/status`: what the server is doing, for status bars, health checks and tests."""

from __future__ import annotations

from aipc_lsp import __version__

STATUS = "aipc/status"


def register(server) -> None:
    @server.feature(STATUS)
    def status(ls, params) -> dict:
        scheduler = ls.runtime.current()
        return {
            "version": __version__,
            "model": ls.settings.model,
            "engine": ls.settings.engine,
            "device": ls.settings.device,
            "ready": scheduler is not None,
            "error": ls.runtime.error,
            "slots": [slot.status() for slot in scheduler.slots] if scheduler else [],
            "liveJobs": [
                {"uri": job.key[0], "kind": job.key[1], "version": job.version}
                for job in (scheduler.live_jobs() if scheduler else [])
            ],
            # Timings of the latest answers (request received -> first token / answer, and
            # whether it was generated or reused); `aipc-lsp bench` reads them.
            "suggestions": list(ls.suggester.recent),
        }
