"""Chat prompts rendered as the models expect them, and the stream cut at turn ends."""

import pytest

from aipc_lsp.chat_template import (
    CHATML, LLAMA3, PHI3, ChatPrompter, ChatTemplateError, StopFilter, builtin_for_model, render_jinja,
    stop_strings_for,
)
from aipc_lsp.engines.base import Engine, EngineInfo

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Fix it"},
]
# SmolLM2-135M-Instruct's own template (ChatML with a default system prompt).
SMOL = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
        "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# Shaped like Llama-3's: bos_token, trim_blocks-sensitive newlines, raise_exception.
LLAMA_LIKE = """{{ bos_token }}{% for message in messages %}
{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role ' + message['role']) }}{% endif %}
{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{% endfor %}
{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"""


def test_chatml_format():
    assert CHATML.render(MESSAGES[:2], True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert CHATML.render(MESSAGES[:2], False).endswith("Hi<|im_end|>\n")


def test_phi3_format():
    assert PHI3.render(MESSAGES, True) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello.<|end|>\n"
        "<|user|>\nFix it<|end|>\n<|assistant|>\n")
    assert "<|end|>" in PHI3.stop


def test_llama3_format():
    assert LLAMA3.render(MESSAGES[1:2], True) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "<|eot_id|>" in LLAMA3.stop


def test_model_template_rendered_like_transformers():
    assert render_jinja(SMOL, MESSAGES[1:2]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    # trim_blocks/lstrip_blocks: the template's own newlines after block tags do not leak.
    assert render_jinja(LLAMA_LIKE, MESSAGES[1:2], bos_token="<s>") == (
        "<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\n"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert render_jinja(LLAMA_LIKE, MESSAGES[1:2], add_generation_prompt=False).endswith("<|eot_id|>\n")


def test_template_errors_are_chat_template_errors():
    with pytest.raises(ChatTemplateError, match="bad role tool"):
        render_jinja(LLAMA_LIKE, [{"role": "tool", "content": "x"}])
    with pytest.raises(ChatTemplateError):
        render_jinja("{% for %}", MESSAGES)


def test_builtin_chosen_by_model_name_and_stop_strings_by_template():
    assert builtin_for_model("/m/Phi-3-mini-4k-instruct-int4-ov") is PHI3
    assert builtin_for_model("Meta-Llama-3.1-8B-Instruct.Q4_K_M.gguf") is LLAMA3
    assert builtin_for_model("llama3_2-1b") is LLAMA3
    assert builtin_for_model("SmolLM2-135M-Instruct.Q4_1.gguf") is CHATML
    assert stop_strings_for(SMOL) == CHATML.stop
    assert stop_strings_for(LLAMA_LIKE) == LLAMA3.stop
    assert stop_strings_for("{{ '<|user|>' + m + '<|end|>' }}") == PHI3.stop


class _Engine(Engine):
    name = "stub"

    def __init__(self, template="", own=None):
        super().__init__("/models/Phi-3-mini.gguf")
        self.info = EngineInfo(chat_template=template)
        self.own = own

    def apply_chat_template(self, messages):
        if self.own is None:
            return super().apply_chat_template(messages)
        return self.own


def test_prompter_prefers_the_model_template_then_its_engine_then_a_builtin():
    smol = ChatPrompter(_Engine(SMOL))
    assert smol.source == "model" and smol.stop == CHATML.stop
    assert smol.render(MESSAGES[1:2]).startswith("<|im_start|>system\nYou are a helpful")
    # No template: the built-in format matching the model's name, with its stop strings.
    phi = ChatPrompter(_Engine(""))
    assert phi.source == "built-in phi3" and phi.stop == PHI3.stop
    assert phi.render(MESSAGES[1:2]) == "<|user|>\nHi<|end|>\n<|assistant|>\n"
    # A template jinja2 cannot render: the engine's own renderer, else the built-in.
    assert ChatPrompter(_Engine("{% broken", own="OWN")).render(MESSAGES) == "OWN"
    assert ChatPrompter(_Engine("{% broken")).render(MESSAGES[1:2]) == "<|user|>\nHi<|end|>\n<|assistant|>\n"


def test_stop_filter_holds_back_a_possible_stop_string_and_cuts_at_it():
    f = StopFilter(["<|im_end|>"])
    assert f.feed("Hello") == "Hello"
    assert f.feed(" <|im") == " "  # might begin the stop string
    assert f.feed("_x") == "<|im_x"  # it did not
    assert f.feed(" done<|im_e") == " done"
    assert f.feed("nd|>tail") == ""
    assert f.stopped and f.text == "Hello <|im_x done"
    assert f.feed("more") == "" and f.flush() == ""


def test_stop_filter_flush_releases_the_held_back_tail():
    f = StopFilter(["<|end|>"])
    assert f.feed("a <|") == "a "
    assert f.flush() == "<|" and f.text == "a <|"
