"""Chat prompts: the model's own chat template when it has one, a built-in format otherwise.

Engines generate from raw text, so the chat feature renders the conversation itself. A
model's template is Jinja as in Hugging Face tokenizers; it is rendered the way transformers
renders it (sandboxed, trim_blocks/lstrip_blocks, `raise_exception`, `tojson`). When a model
ships no template, the format is guessed from its name: Phi-3, Llama-3, or ChatML (the most
common one among small instruct models).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterable

from aipc_lsp.engines.base import Engine

log = logging.getLogger(__name__)

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


class ChatTemplateError(ValueError):
    """A template that cannot be rendered for these messages."""


@dataclass(frozen=True)
class ChatFormat:
    name: str
    render: Callable[[list[Message], bool], str]
    # Text that ends an assistant turn; generation stops there (engines may also stop on EOS).
    stop: tuple[str, ...]


def _chatml(messages: list[Message], add_generation_prompt: bool) -> str:
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _phi3(messages: list[Message], add_generation_prompt: bool) -> str:
    out = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)
    return out + ("<|assistant|>\n" if add_generation_prompt else "")


def _llama3(messages: list[Message], add_generation_prompt: bool) -> str:
    out = "<|begin_of_text|>" + "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>" for m in messages)
    return out + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


CHATML = ChatFormat("chatml", _chatml, ("<|im_end|>", "<|im_start|>"))
PHI3 = ChatFormat("phi3", _phi3, ("<|end|>", "<|user|>", "<|endoftext|>"))
LLAMA3 = ChatFormat("llama3", _llama3, ("<|eot_id|>", "<|start_header_id|>", "<|end_of_text|>"))
BUILTIN = {f.name: f for f in (CHATML, PHI3, LLAMA3)}


def builtin_for_model(model_name: str) -> ChatFormat:
    """The built-in format a model most likely expects, judged by its file or folder name."""
    name = re.sub(r"[\s_.]", "-", model_name.lower())
    if re.search(r"phi-?3", name):
        return PHI3
    if re.search(r"llama-?3", name):
        return LLAMA3
    return CHATML


def stop_strings_for(template: str) -> tuple[str, ...]:
    """Turn-end markers a model's template uses, so generation stops at the end of the turn."""
    for fmt in (CHATML, LLAMA3, PHI3):
        if fmt.stop[0] in template:
            return fmt.stop
    return ()


def _raise_exception(message: str):
    raise ChatTemplateError(message)


def render_jinja(template: str, messages: list[Message], *, add_generation_prompt: bool = True,
                 bos_token: str = "", eos_token: str = "") -> str:
    """Render a Hugging Face chat template as transformers' apply_chat_template does."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=bos_token, eos_token=eos_token)
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template failed: {exc}") from exc


class ChatPrompter:
    """Renders conversations for one loaded engine: its template, its own renderer, or a built-in."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.template = engine.info.chat_template
        self.fallback = builtin_for_model(engine.model_path)
        self.stop = (stop_strings_for(self.template) if self.template else self.fallback.stop) or self.fallback.stop
        self.source = "model" if self.template else f"built-in {self.fallback.name}"

    def render(self, messages: list[Message]) -> str:
        if self.template:
            try:
                # BOS is left out: the engines' tokenizers add it when they encode the prompt.
                return render_jinja(self.template, messages, eos_token=self.engine.info.eos_token)
            except ChatTemplateError as exc:
                try:
                    return self.engine.apply_chat_template(messages)
                except Exception:
                    log.debug("the engine's own chat template renderer failed too", exc_info=True)
                log.warning("%s; using the built-in %s format", exc, self.fallback.name)
        return self.fallback.render(messages, True)


class StopFilter:
    """Streams text up to the first stop string, holding back what could begin one."""

    def __init__(self, stop: Iterable[str]):
        self.stop = tuple(s for s in stop if s)
        self.text = ""  # everything released so far
        self._pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        buffer = self._pending + piece
        cut = min((i for i in (buffer.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return self._release(buffer[:cut])
        hold = max((k for s in self.stop for k in range(1, len(s)) if buffer.endswith(s[:k])), default=0)
        self._pending = buffer[len(buffer) - hold:] if hold else ""
        return self._release(buffer[:len(buffer) - hold])

    def flush(self) -> str:
        rest, self._pending = ("" if self.stopped else self._pending), ""
        return self._release(rest)

    def _release(self, text: str) -> str:
        self.text += text
        return text
