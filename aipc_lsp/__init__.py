"""aipc-lsp: local AI code completion and inline chat over the Language Server Protocol."""

import sys

__version__ = "0.1.0"

# `import openvino` imports its converter (openvino.tools.ovc), which sends a usage event to OpenVINO's
# telemetry service (Google Analytics) unless the user opted out or the CI variable is set: from a
# process it forks for the purpose and, when the network is slow to answer, never waits for (the
# exited child the engine's worker kept). Nothing may leave the machine unless the user configures
# a remote engine (docs/SECURITY.md), so in every process of ours the telemetry package does not
# import, and OpenVINO falls back to its own stub, which sends nothing. Set before anything of
# ours imports OpenVINO; a process that imported it already keeps what it has.
sys.modules.setdefault("openvino_telemetry", None)
