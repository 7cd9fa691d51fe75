"""[[slots]]: device slots in order of preference, validated like every other setting."""

from pathlib import Path

from aipc_lsp.config import Settings, SettingsLayers, SlotSettings, load_file, validate


def test_no_slots_means_one_slot_from_the_top_level(tmp_path: Path):
    settings = Settings(model="/m.gguf", device="gpu.0", threads=3)
    assert settings.slot_list() == [SlotSettings(engine="openvino", device="GPU.0", model="/m.gguf", threads=3)]
    assert settings.slot_list()[0].label() == "openvino-gpu.0"


def test_slots_from_toml_inherit_the_model_and_name_their_lines(tmp_path: Path):
    path = tmp_path / "settings.toml"
    path.write_text(
        'model = "/models/phi3.gguf"\n'
        "[[slots]]\n"
        'engine = "openvino"\n'
        'device = "npu"\n'
        "[[slots]]\n"
        'device = "CPU"\n'
        'model = "/models/small.gguf"\n'
        "threads = -2\n"
        'name = "fallback"\n',
        encoding="utf-8",
    )
    layers = SettingsLayers()
    layers.file, problems = load_file(path)
    assert [str(p) for p in problems] == [
        f"{path}:8: slots[1].threads: -2 is below the minimum 0; ignored (the default 0 or an earlier layer's value applies)"
    ]
    slots = layers.settings().slot_list()
    assert [(s.device, s.model, s.label()) for s in slots] == [
        ("NPU", "/models/phi3.gguf", "openvino-npu"),
        ("CPU", "/models/small.gguf", "fallback"),
    ]


def test_slots_must_be_a_list_of_tables():
    clean, problems = validate({"slots": {"engine": "openvino"}}, "initializationOptions")
    assert clean == {} and "expected a list of tables" in str(problems[0])


def test_changing_a_slot_reloads_models_but_completion_settings_do_not():
    base = Settings(slots=[SlotSettings(device="NPU"), SlotSettings(device="CPU")])
    other = Settings(slots=[SlotSettings(device="NPU"), SlotSettings(device="CPU", threads=1)])
    assert base.model_key() != other.model_key()
    tuned = Settings(slots=[SlotSettings(device="NPU"), SlotSettings(device="CPU")])
    tuned.completion.max_tokens = 5
    assert base.model_key() == tuned.model_key()


def test_a_slot_that_is_not_a_table_is_dropped_and_the_others_keep_their_index():
    clean, problems = validate({"slots": [5, {"threads": "x"}, {"device": "gpu"}]}, "initializationOptions")
    assert [(p.key, p.message.split(";")[0]) for p in problems] == [
        ("slots[0]", "expected a table of settings, got 5"),
        ("slots[1].threads", "expected an integer, got 'x'"),
    ]
    assert clean == {"slots": [{}, {"device": "GPU"}]}
