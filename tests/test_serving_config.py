"""What a checkpoint records for serving (c2rope.record_config / recorded_config) and the
exact float -> int64 position encoding the vLLM plugin uses. Needs transformers, not vLLM."""
import json
import random

import pytest
import torch

import c2rope
import gemma_tiny
import qwen_tiny
import vllm_tiny_internvl
import vllm_tiny_llava
from c2rope.serving import SERVING_ARCHITECTURES, config_entry, parse_entry
from c2rope.vllm.positions import FLOAT_TAG, decode_positions, encode_positions


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_record_config_writes_entry_and_serving_architecture(tmp_path, kind):
    model = qwen_tiny.make_model(kind, dtype=torch.float32)
    config = c2rope.C2RoPEConfig.from_name(random.choice(["causal", "paper-causal", "recommended-causal"]))
    options = {"frequencies": random.choice(["model", "c2rope"])}
    c2rope.patch_model(model, config, options=options)
    c2rope.record_config(model)
    model.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == [SERVING_ARCHITECTURES[type(model).__name__]]
    recorded = c2rope.recorded_config(tmp_path)
    assert recorded == {"config": config, "options": {**options, "frame_axis": "temporal"}}
    assert c2rope.recorded_config(tmp_path / "config.json") == recorded == c2rope.recorded_config(model.config)

    # transformers loads the folder by model_type; the recorded settings re-patch it.
    loaded = type(model).from_pretrained(tmp_path, dtype=torch.float32)
    assert c2rope.recorded_config(loaded.config) == recorded
    c2rope.patch_model(loaded, **c2rope.recorded_config(loaded.config))
    assert c2rope.hf.is_patched(loaded)

    # Unpatching takes the record away with the patch.
    c2rope.unpatch_model(model)
    assert c2rope.recorded_config(model.config) is None
    model.save_pretrained(tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["architectures"] == [type(model).__name__]


@pytest.mark.parametrize("kind", ["llava", "llava_next", "llava_onevision"])
def test_record_config_llava(tmp_path, kind):
    """LLaVA / LLaVA-NeXT / LLaVA-OneVision record their C2RoPEConfig with no options (they take none), name
    their serving class, and are refused when patched with another grid or image token than
    their config's (the plugin derives those from config.json, as patch_model does by
    default)."""
    from c2rope.vllm.mrope_config import three_row_section

    model, _ = vllm_tiny_llava.make_model(kind=kind)
    config = c2rope.C2RoPEConfig.from_name(random.choice(["causal", "paper-causal", "recommended-causal"]))
    c2rope.patch_model(model, config)
    c2rope.record_config(model)
    model.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == [SERVING_ARCHITECTURES[type(model).__name__]]
    assert written["architectures"][0].startswith("C2RoPELlava")
    assert c2rope.recorded_config(tmp_path) == {"config": config, "options": {}}
    loaded = type(model).from_pretrained(tmp_path, dtype=torch.float32)
    assert not hasattr(loaded.config, "mrope_section")  # transformers loads what it always did
    # What the plugin's config hook declares to vLLM: three rows, the split's slot counts.
    section = three_row_section(loaded.config)
    table = config.axis_table(loaded.config.text_config.head_dim)
    assert section == [table.count(axis) for axis in (0, 1, 2)] and sum(section) == len(table)

    model, _ = vllm_tiny_llava.make_model(kind=kind)
    c2rope.patch_model(model, c2rope.C2RoPEConfig(mask="causal"), image_token_id=7)
    with pytest.raises(ValueError, match="image_token_id=7"):
        c2rope.record_config(model)
    if kind == "llava":
        model, _ = vllm_tiny_llava.make_model(kind=kind)
        c2rope.patch_model(model, c2rope.C2RoPEConfig(mask="causal"), grid=(2, 8))
        with pytest.raises(ValueError, match="grid"):
            c2rope.record_config(model)


@pytest.mark.parametrize("change,match", [({"vision_aspect_ratio": "anyres_max_4"}, "anyres_max_9"),
                                          ({"vision_feature_select_strategy": "full"}, "one token per patch")])
def test_record_config_refuses_onevision_that_vllm_computes_otherwise(change, match):
    """vLLM's OneVision shrinks with anyres_max_9 whatever the config says, and the image
    tokens must be one per patch (CLIP: "default"): anything else is refused when recorded,
    as the serving class would refuse it when built."""
    model, _ = vllm_tiny_llava.make_model(kind="llava_onevision")
    for key, value in change.items():
        setattr(model.config, key, value)
    c2rope.patch_model(model, c2rope.C2RoPEConfig(mask="causal"))
    with pytest.raises(ValueError, match=match):
        c2rope.record_config(model)
    assert c2rope.recorded_config(model.config) is None


def test_record_config_internvl(tmp_path):
    """InternVL records its C2RoPEConfig with no options, names its serving class, declares
    three position rows to vLLM, and is refused when patched with another image token than
    its config's or when vLLM's InternVL computes its image features otherwise
    (c2rope.serving.internvl_refusal), as the serving class would refuse it when built."""
    from c2rope.vllm.mrope_config import three_row_section

    model, _ = vllm_tiny_internvl.make_model()
    config = c2rope.C2RoPEConfig.from_name(random.choice(["causal", "paper-causal", "recommended-causal"]))
    c2rope.patch_model(model, config)
    c2rope.record_config(model)
    model.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == ["C2RoPEInternVLForConditionalGeneration"]
    assert c2rope.recorded_config(tmp_path) == {"config": config, "options": {}}
    loaded = type(model).from_pretrained(tmp_path, dtype=torch.float32)
    section = three_row_section(loaded.config)
    table = config.axis_table(loaded.config.text_config.head_dim)
    assert section == [table.count(axis) for axis in (0, 1, 2)] and sum(section) == len(table)

    model, _ = vllm_tiny_internvl.make_model()
    c2rope.patch_model(model, c2rope.C2RoPEConfig(mask="causal"), image_token_id=7)
    with pytest.raises(ValueError, match="image_token_id=7"):
        c2rope.record_config(model)
    for key, value, match in (("vision_feature_layer", -2, "vision_feature_layer=-1"),
                              ("vision_feature_select_strategy", "full", "vision_feature_select_strategy"),
                              ("image_size", [16, 32], "not square")):
        model, _ = vllm_tiny_internvl.make_model()
        setattr(model.config.vision_config if key == "image_size" else model.config, key, value)
        c2rope.patch_model(model, c2rope.C2RoPEConfig(mask="causal"))
        with pytest.raises(ValueError, match=match):
            c2rope.record_config(model)
        assert c2rope.recorded_config(model.config) is None


def test_record_config_refusals():
    model = qwen_tiny.make_model("qwen2_vl", dtype=torch.float32)
    with pytest.raises(TypeError, match="patched"):
        c2rope.record_config(model)


@pytest.mark.parametrize("config, options, mode", [
    (c2rope.C2RoPEConfig(), None, "outward"),                                    # image_attention="chebyshev"
    (c2rope.C2RoPEConfig(mask="inward"), {"image_attention": "chebyshev"}, "inward"),
    (c2rope.C2RoPEConfig(mask="causal"), None, "block"),                         # Gemma 3's own image block
    (c2rope.C2RoPEConfig(), {"image_attention": "bidirectional"}, "block"),
])
def test_record_config_gemma3(tmp_path, config, options, mode):
    """Gemma 3 records its C2RoPEConfig with image_attention written out, names its serving
    class, and the plugin reads the image rule back (c2rope/vllm/gemma3.py serves all of
    them); a patch with another image token than the config's is refused."""
    from c2rope.vllm.mrope_config import three_row_section

    model = gemma_tiny.make_gemma3(dtype=torch.float32)
    c2rope.patch_model(model, config, options=options)
    c2rope.record_config(model)
    model.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == ["C2RoPEGemma3ForConditionalGeneration"]
    recorded = c2rope.recorded_config(tmp_path)
    assert recorded == {"config": config, "options": {"image_attention": "chebyshev", **(options or {})}}
    loaded = type(model).from_pretrained(tmp_path, dtype=torch.float32)
    table = config.axis_table(loaded.config.text_config.head_dim)
    assert three_row_section(loaded.config) == [table.count(axis) for axis in (0, 1, 2)]
    try:  # the image rule the served class applies (its module imports vLLM)
        from c2rope.vllm.gemma3 import gemma3_mask_mode
    except ImportError:
        pass
    else:
        assert gemma3_mask_mode(recorded) == mode

    model = gemma_tiny.make_gemma3(dtype=torch.float32)
    c2rope.patch_model(model, config, options=options, image_token_id=7)
    with pytest.raises(ValueError, match="image_token_id=7"):
        c2rope.record_config(model)


@pytest.mark.parametrize("config, options, rule", [
    (c2rope.C2RoPEConfig(), None, ("outward", "all")),                            # image_attention="chebyshev"
    (c2rope.C2RoPEConfig(mask="causal"), None, ("block", "sliding")),             # Gemma 4's own image block
    (c2rope.C2RoPEConfig(), {"image_attention": "bidirectional"}, ("block", "sliding")),
])
def test_record_config_gemma4(tmp_path, config, options, rule):
    """Gemma 4 records its C2RoPEConfig with image_attention written out, names its serving
    class, and the plugin reads the image rule back (c2rope/vllm/gemma4.py serves all of
    them: the block on sliding layers only); a patch with another image token than the
    config's is refused."""
    from c2rope.vllm.mrope_config import three_row_section

    model = gemma_tiny.make_gemma4(dtype=torch.float32)
    c2rope.patch_model(model, config, options=options)
    c2rope.record_config(model)
    model.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == ["C2RoPEGemma4ForConditionalGeneration"]
    recorded = c2rope.recorded_config(tmp_path)
    assert recorded == {"config": config, "options": {"image_attention": "chebyshev", **(options or {})}}
    loaded = type(model).from_pretrained(tmp_path, dtype=torch.float32)
    assert len(three_row_section(loaded.config)) == 3  # three position rows (m, x, y)
    try:  # the image rule the served class applies (its module imports vLLM)
        from c2rope.vllm.gemma4 import gemma4_mask_rule
    except ImportError:
        pass
    else:
        assert gemma4_mask_rule(recorded, loaded.config.get_text_config()) == rule

    model = gemma_tiny.make_gemma4(dtype=torch.float32)
    c2rope.patch_model(model, config, options=options, image_token_id=7)
    with pytest.raises(ValueError, match="image_token_id=7.*gemma4 with the config's image token"):
        c2rope.record_config(model)


@pytest.mark.skipif(not qwen_tiny.HAS_QWEN3_5, reason="this transformers release has no Qwen3.5")
@pytest.mark.parametrize("kind", qwen_tiny.QWEN3_5_KINDS)
def test_record_config_refuses_qwen3_5_saying_why(kind):
    model = qwen_tiny.make_model(kind, dtype=torch.float32)
    c2rope.patch_model(model, c2rope.C2RoPEConfig(mask="causal"))
    with pytest.raises(TypeError, match="does not serve Qwen3_5.*Gated DeltaNet layers only in bfloat16"):
        c2rope.record_config(model)
    assert c2rope.recorded_config(model.config) is None


def test_parse_entry_names_what_is_wrong():
    entry = config_entry(c2rope.C2RoPEConfig(mask="causal"))
    assert parse_entry(json.loads(json.dumps(entry)))["config"] == c2rope.C2RoPEConfig(mask="causal")
    with pytest.raises(ValueError, match="format"):
        parse_entry({**entry, "format": 99})
    with pytest.raises(ValueError, match="kind"):
        parse_entry({**entry, "kind": "Other"})
    with pytest.raises(ValueError, match="unknown C2RoPEConfig field"):
        parse_entry({**entry, "fields": {**entry["fields"], "radius": 1}})
    with pytest.raises(ValueError, match="mask must be one of"):
        parse_entry({**entry, "fields": {**entry["fields"], "mask": "diagonal"}})
    with pytest.raises(TypeError, match="source"):
        c2rope.recorded_config(42)
    entry = config_entry(c2rope.CircleRoPEConfig())
    assert parse_entry(json.loads(json.dumps(entry)))["config"] == c2rope.CircleRoPEConfig()


def test_positions_survive_the_int64_buffer_bit_for_bit():
    integers = torch.randint(0, 100_000, (3, 50)).to(torch.float32)
    halves = integers + 0.5
    rationals = (torch.rand(3, 50) * 1000).to(torch.float32)
    negative = -rationals
    values = torch.cat([integers, halves, rationals, negative], dim=1)
    encoded = encode_positions(values)
    assert encoded.dtype == torch.int64
    assert torch.equal(encoded[:, :50], integers.to(torch.int64)), "integers travel as themselves"
    assert bool((encoded[:, 50:] >= FLOAT_TAG // 2).all())
    decoded = decode_positions(encoded)
    assert torch.equal(decoded.view(torch.int32), values.view(torch.int32))
    # vLLM's decode positions (index + delta) are plain integers.
    assert torch.equal(decode_positions(torch.arange(7)), torch.arange(7, dtype=torch.float32))
    with pytest.raises(ValueError, match="finite"):
        encode_positions(torch.tensor([float("nan")]))
    with pytest.raises(TypeError, match="float32"):
        encode_positions(torch.tensor([1.5], dtype=torch.float64))


def _config(entry, **extra):
    return type("Config", (), {"c2rope": entry, **extra})()


def test_check_servable_refusals():
    """What the vLLM plugin refuses, decided from the recorded entry alone (no vLLM needed)."""
    from c2rope.vllm.servable import check_servable

    with pytest.raises(ValueError, match="no 'c2rope' entry"):
        check_servable(_config(None))
    with pytest.raises(ValueError, match="C2RoPEConfig only"):
        check_servable(_config(config_entry(c2rope.CircleRoPEConfig())))
    with pytest.raises(ValueError, match="frame_axis"):
        check_servable(_config(config_entry(c2rope.C2RoPEConfig(mask="causal"), {"frame_axis": "sideways"})))
    with pytest.raises(ValueError, match="frequencies"):
        check_servable(_config(config_entry(c2rope.C2RoPEConfig(mask="causal"), {"frequencies": "other"})))
    with pytest.raises(ValueError, match="Chebyshev"):
        check_servable(_config(config_entry(c2rope.C2RoPEConfig())))
    with pytest.raises(ValueError, match="text_spatial='zero'"):
        check_servable(_config(config_entry(c2rope.C2RoPEConfig(mask="causal", text_spatial="zero"))))
    recorded = check_servable(_config(config_entry(c2rope.C2RoPEConfig(mask="causal"))))
    assert recorded["config"] == c2rope.C2RoPEConfig(mask="causal")
    # Every serving class names the masks it serves (the Chebyshev ones through chebyshev.py).
    masks = ("causal", "outward", "inward")
    assert check_servable(_config(config_entry(c2rope.C2RoPEConfig(mask="inward"))), masks)["config"].mask == "inward"


def test_check_mask_backend():
    """The Chebyshev mask is applied on vLLM's CPU backend only; any other backend is
    refused by name (a GPU engine would otherwise serve the model causally)."""
    from c2rope.vllm.servable import check_mask_backend

    check_mask_backend("outward", "CPU_ATTN")
    check_mask_backend("causal", "FLASH_ATTN")
    for backend in ("FLASH_ATTN", "TRITON_ATTN", "FLEX_ATTENTION", "FLASHINFER"):
        with pytest.raises(ValueError, match="Chebyshev") as caught:
            check_mask_backend("inward", backend)
        assert f"backend is {backend}." in str(caught.value) and "mask='inward'" in str(caught.value)
        assert "The Chebyshev mask on vLLM" in str(caught.value)


def test_image_cells_travel_with_positions():
    """Image cells (raster index + 1, h, w) ride above the float bits: decoding the
    positions ignores them, decode_cells gets them back, text carries none."""
    from c2rope.vllm.positions import attach_cells, decode_cells, decode_positions, encode_positions

    positions = torch.tensor([[3.0, 3.5, -0.5, 7.0], [3.0, -1.5, 2.0, 7.0], [3.0, 0.5, -0.25, 7.0]])
    cells = torch.tensor([[0, 1, 2, 0], [0, 1, 1, 0], [0, 2, 2, 0]])
    cells[:, 2] = torch.tensor([(1 << 22) - 1, 4096, 1])
    encoded = attach_cells(encode_positions(positions), positions, cells)
    assert torch.equal(decode_positions(encoded).view(torch.int32), positions.view(torch.int32))
    assert torch.equal(decode_cells(encoded), cells)
    assert torch.equal(decode_cells(encode_positions(positions)), torch.zeros_like(cells))
    with pytest.raises(ValueError, match="cells must be in"):
        attach_cells(encode_positions(positions), positions, cells << 1)


def test_check_mask_scheduler():
    """A scheduler that may split an image over two steps is refused for the Chebyshev mask."""
    from c2rope.vllm.servable import check_mask_scheduler

    def scheduler(chunked, whole_items):
        return type("SchedulerConfig", (), {"enable_chunked_prefill": chunked,
                                            "disable_chunked_mm_input": whole_items})()

    check_mask_scheduler("outward", scheduler(True, True))
    check_mask_scheduler("outward", scheduler(False, False))
    check_mask_scheduler("causal", scheduler(True, False))
    with pytest.raises(ValueError, match="disable_chunked_mm_input=True") as caught:
        check_mask_scheduler("inward", scheduler(True, False))
    assert "mask='inward'" in str(caught.value)
    # Gemma 3's own image block (kept by mask="causal") needs whole images too; the message says so.
    with pytest.raises(ValueError, match="Gemma 3's bidirectional image block.*disable_chunked_mm_input=True"):
        check_mask_scheduler("block", scheduler(True, False))


@pytest.mark.parametrize("kind", ["idefics3", "smolvlm"])
def test_record_config_idefics3(tmp_path, kind):
    """Idefics3 / SmolVLM record their C2RoPEConfig with no options, name their serving
    class (three position rows, as LLaVA), and are refused when patched with another image
    token than their config's (the plugin derives it from config.json)."""
    import vllm_tiny_idefics3
    from c2rope.vllm.mrope_config import THREE_ROW_ARCHITECTURES, three_row_section

    model, _ = vllm_tiny_idefics3.make_model(kind=kind)
    config = c2rope.C2RoPEConfig.from_name(random.choice(["default", "paper", "causal", "paper-causal"]))
    c2rope.patch_model(model, config)
    c2rope.record_config(model)
    model.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == [SERVING_ARCHITECTURES[type(model).__name__]]
    assert written["architectures"][0] in THREE_ROW_ARCHITECTURES
    assert c2rope.recorded_config(tmp_path) == {"config": config, "options": {}}
    loaded = type(model).from_pretrained(tmp_path, dtype=torch.float32)
    assert not hasattr(loaded.config, "mrope_section")  # transformers loads what it always did
    section = three_row_section(loaded.config)
    table = config.axis_table(loaded.config.text_config.head_dim)
    assert section == [table.count(axis) for axis in (0, 1, 2)] and sum(section) == len(table)

    model, _ = vllm_tiny_idefics3.make_model(kind=kind)
    c2rope.patch_model(model, c2rope.C2RoPEConfig(mask="causal"), image_token_id=7)
    with pytest.raises(ValueError, match="image_token_id=7"):
        c2rope.record_config(model)


def test_served_image_rules_are_the_patch_options():
    """The vLLM plugin's list of Gemma image rules (read without transformers) is the one
    c2rope's Gemma patch takes, and other options or values are refused by name."""
    from c2rope.hf.families.gemma import IMAGE_ATTENTION
    from c2rope.vllm.servable import IMAGE_ATTENTION as SERVED, recorded_image_attention

    assert SERVED == IMAGE_ATTENTION
    recorded = {"config": c2rope.C2RoPEConfig(), "options": {}}
    assert recorded_image_attention(recorded, "Gemma 3") == "chebyshev"
    for value in IMAGE_ATTENTION:
        assert recorded_image_attention(dict(recorded, options={"image_attention": value}), "Gemma 4") == value
    with pytest.raises(ValueError, match="image_attention"):
        recorded_image_attention(dict(recorded, options={"image_attention": "sideways"}), "Gemma 3")
    with pytest.raises(ValueError, match="Gemma 4 takes the option 'image_attention' only"):
        recorded_image_attention(dict(recorded, options={"frame_axis": "separate"}), "Gemma 4")
