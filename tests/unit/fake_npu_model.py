"""A stand-in for aipc_lsp/engines/npu_model.py's engine, without intel-npu-acceleration-library,
for the npu_library engine's unit tests: the real worker (aipc_lsp/engines/worker.py) builds it in
a real child process, as it builds the real one under the library's interpreter.

It "generates" the pieces `tok1 `, `tok2 `, ... one per `delay` seconds. What it does wrong on
purpose is read from `fake.json` in the model folder it is given:
  {"crash_after": N}      exit with code 3 (after a line on stderr) once N tokens are out
  {"hang_after": N}       after N tokens, stop sending anything and ignore cancels
  {"delay": S}            seconds per token (default 0.02)
"""

from __future__ import annotations

import json
import os
import sys
import time

from fake_engine import FakeEngine


class FakeNpuModel(FakeEngine):
    def __init__(self, model_path: str, device: str = "NPU", *, precision: str = "int4", threads: int = 0):
        with open(os.path.join(model_path, "fake.json"), encoding="utf-8") as f:
            self.behaviour = json.load(f)
        super().__init__(output=[f"tok{i} " for i in range(1, 1001)], token_delay=self.behaviour.get("delay", 0.02),
                         name="npu_library", device=device, model_path=model_path,
                         template=f"{{{{ fake {precision} {threads} {os.path.basename(os.getcwd())} }}}}")
        self.emitted = 0

    def generate(self, prompt, params, cancel, on_text=None):
        def misbehave(piece: str) -> bool:
            self.emitted += 1
            if self.behaviour.get("crash_after") is not None and self.emitted > self.behaviour["crash_after"]:
                print("Fatal: the fake model crashes now", file=sys.stderr, flush=True)
                os._exit(3)
            if self.behaviour.get("hang_after") is not None and self.emitted > self.behaviour["hang_after"]:
                time.sleep(3600)
            return on_text(piece) if on_text is not None else True

        return super().generate(prompt, params, cancel, misbehave)
