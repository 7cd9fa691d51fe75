"""Read a model folder's own chat template without loading a tokenizer library.

Engines whose tokenizer object does not expose the template (ONNX Runtime GenAI) read it
from the files Hugging Face tokenizers save next to the model.
"""

from __future__ import annotations

import json
from pathlib import Path


def chat_template_from_folder(folder: str | Path) -> str:
    """The Jinja chat template saved in `folder`, or "" when it has none."""
    root = Path(folder)
    if root.is_file():
        root = root.parent
    jinja = root / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        try:
            data = json.loads((root / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        template = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(template, str):
            return template
        if isinstance(template, list):  # several named templates: take the default one
            for entry in template:
                if isinstance(entry, dict) and entry.get("name") == "default":
                    return str(entry.get("template", ""))
    return ""
