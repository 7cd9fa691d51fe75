"""A stand-in for aipc_lsp/engines/npu_worker.py that speaks the same JSON-lines protocol
without intel-npu-acceleration-library, for the npu_library engine's unit tests.

It "generates" the words tok1 tok2 ... one per `delay` seconds. What it does wrong on purpose
is read from `fake.json` in the model folder it is asked to load:
  {"crash_after": N}      exit with code 3 (after a line on stderr) once N tokens are out
  {"hang_after": N}       after N tokens, stop sending anything and ignore cancels
  {"delay": S}            seconds per token (default 0.02)
  {"chatty": true}        print to stdout outside the protocol, as libraries do
Standard library only, like the real worker.
"""

import json
import os
import queue
import sys
import threading
import time

out = os.fdopen(os.dup(1), "w", encoding="utf-8")
os.dup2(2, 1)
sys.stdout = sys.stderr
lock = threading.Lock()


def send(message):
    with lock:
        out.write(json.dumps(message) + "\n")
        out.flush()


inbox = queue.Queue()
cancelled = set()


def reader():
    for line in sys.stdin:
        message = json.loads(line)
        if "cancel" in message:
            cancelled.add(message["cancel"])
        elif message.get("op") == "count_tokens":  # answered at once, like the real worker
            send({"id": message["id"], "ok": True, "result": len(message["text"].split())})
        else:
            inbox.put(message)
    inbox.put(None)


threading.Thread(target=reader, daemon=True).start()
send({"hello": 1, "pid": os.getpid(), "python": sys.version.split()[0]})
behaviour = {}
emitted = 0
while True:
    message = inbox.get()
    if message is None or message.get("op") == "close":
        if message is not None:
            send({"id": message["id"], "ok": True, "result": None})
        os._exit(0)
    rid, op = message["id"], message["op"]
    if op == "load":
        if message["precision"] not in ("int4", "int8", "fp16"):
            send({"id": rid, "ok": False, "error": f"ValueError: precision {message['precision']!r} is not supported"})
            continue
        try:
            with open(os.path.join(message["model"], "fake.json")) as f:
                behaviour = json.load(f)
        except OSError:
            behaviour = {}
        if behaviour.get("chatty"):
            print("Compiling model for the NPU")  # goes to stderr, like the real worker's library prints
        send({"id": rid, "ok": True, "result": {"npu": False, "device": "CPU", "version": "fake",
                                                 "precision": message["precision"], "load_s": 0.0}})
    elif op == "chat_template":
        send({"id": rid, "ok": True, "result": "{{ fake }}"})
    elif op == "generate":
        params = message["params"]
        text, n, stopped = "", 0, False
        while n < params["max_new_tokens"] and rid not in cancelled:
            time.sleep(behaviour.get("delay", 0.02))
            if behaviour.get("crash_after") is not None and emitted >= behaviour["crash_after"]:
                print("Fatal: the fake worker crashes now", file=sys.stderr, flush=True)
                os._exit(3)
            if behaviour.get("hang_after") is not None and emitted >= behaviour["hang_after"]:
                time.sleep(3600)
            n += 1
            emitted += 1
            piece = f"tok{n} "
            text += piece
            send({"id": rid, "token": n, "text": piece})
            if any(s in text for s in params.get("stop", [])):
                stopped = True
                break
        send({"id": rid, "ok": True, "result": {
            "tokens": n, "prompt_tokens": len(message["prompt"].split()), "first_token_s": 0.01, "total_s": 0.1,
            "cancelled": rid in cancelled, "stopped": stopped, "reused_tokens": 0}})
    else:
        send({"id": rid, "ok": False, "error": f"ValueError: unknown op {op!r}"})
