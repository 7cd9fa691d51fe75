"""The custom messages (docs/PROTOCOL.md) as attrs types, registered with the protocol.

pygls structures every incoming message with lsprotocol's cattrs converter, by the type the
protocol names for its method (protocol.py asks `MESSAGE_TYPES` before lsprotocol's table), with
lsprotocol's camelCase names: a request whose params do not fit these types is answered
-32602 where every other malformed request is, and its handler gets typed params.
"""

from __future__ import annotations

from typing import Any, Literal, NewType, Optional, Union

import attrs
import cattrs
from lsprotocol import types

INLINE_CHAT = "aipc/inlineChat"
CHAT_CHUNK = "aipc/chatChunk"
WARM = "aipc/warm"
STATUS = "aipc/status"


class ParamError(ValueError):
    """A value the types cannot take; the message says what it must be."""


# cattrs' own str hook turns 3 into "3", and lsprotocol's ProgressToken hook takes anything:
# these are checked as they arrive.
Instruction = NewType("Instruction", str)
Text = NewType("Text", str)
Token = NewType("Token", object)


@attrs.define
class ChatTurn:
    role: Literal["system", "user", "assistant"]
    content: Text


@attrs.define
class InlineChatParams:
    text_document: types.TextDocumentIdentifier
    range: types.Range
    instruction: Instruction
    mode: Optional[Literal["edit", "ask"]] = None
    # None: the server's own history of this document; [] starts afresh.
    history: Optional[list[ChatTurn]] = None
    partial_result_token: Optional[Token] = None
    work_done_token: Optional[Token] = None


@attrs.define
class InlineChatRequest:
    id: Union[int, str]
    params: InlineChatParams
    method: Literal["aipc/inlineChat"] = INLINE_CHAT
    jsonrpc: str = "2.0"


@attrs.define
class ChatChunkParams:
    """A piece of a chat answer, server -> client, when the request had no partialResultToken."""

    id: Union[int, str]
    text: str


@attrs.define
class WarmParams:
    text_document: types.TextDocumentIdentifier
    position: types.Position


@attrs.define
class WarmNotification:
    params: WarmParams
    method: Literal["aipc/warm"] = WARM
    jsonrpc: str = "2.0"


@attrs.define
class StatusParams:
    """aipc/status takes no parameters (an empty object, or none)."""


@attrs.define
class StatusRequest:
    id: Union[int, str]
    params: Optional[StatusParams] = None
    method: Literal["aipc/status"] = STATUS
    jsonrpc: str = "2.0"


# method -> (message type, result type, params type), as lsprotocol's METHOD_TO_TYPES.
MESSAGE_TYPES: dict[str, tuple[type, Any, type]] = {
    INLINE_CHAT: (InlineChatRequest, None, InlineChatParams),
    WARM: (WarmNotification, None, WarmParams),
    STATUS: (StatusRequest, None, StatusParams),
}
_PARAMS = (InlineChatParams, ChatTurn, WarmParams)


def register_hooks(converter: cattrs.Converter) -> cattrs.Converter:
    """Teach a converter made by lsprotocol (which already renames to camelCase) the checks the
    custom params need."""

    def instruction(value: Any, _type) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ParamError("must be a non-empty string")
        return value

    def text(value: Any, _type) -> str:
        if not isinstance(value, str):
            raise ParamError("must be a string")
        return value

    def token(value: Any, _type) -> int | str:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ParamError("must be an integer or a string")
        return value

    def no_params(value: Any, _type) -> StatusParams:
        # An object (its members ignored), or [] as Neovim encodes an empty Lua table.
        if isinstance(value, dict) or value == []:
            return StatusParams()
        raise ParamError("must be an object")

    converter.register_structure_hook(Instruction, instruction)
    converter.register_structure_hook(Text, text)
    converter.register_structure_hook(Token, token)
    for cls in _PARAMS:
        _objects_only(converter, cls)
    converter.register_structure_hook(StatusParams, no_params)
    return converter


def _objects_only(converter: cattrs.Converter, cls: type) -> None:
    """A JSON object or nothing: cattrs would read a list's items as the fields' values."""
    structure = converter.get_structure_hook(cls)

    def hook(value: Any, type_) -> Any:
        if not isinstance(value, dict):
            raise ParamError("must be an object")
        return structure(value, type_)

    converter.register_structure_hook(cls, hook)
