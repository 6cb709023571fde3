"""What a checkpoint records for serving (c2rope.record_config / recorded_config) and the
exact float -> int64 position encoding the vLLM plugin uses. Needs transformers, not vLLM."""
import json
import random

import pytest
import torch

import c2rope
import gemma_tiny
import qwen_tiny
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


def test_record_config_refusals():
    model = qwen_tiny.make_model("qwen2_vl", dtype=torch.float32)
    with pytest.raises(TypeError, match="patched"):
        c2rope.record_config(model)
    model = gemma_tiny.make_gemma3(dtype=torch.float32)
    c2rope.patch_model(model, c2rope.C2RoPEConfig(mask="causal"))
    with pytest.raises(TypeError, match="Gemma3ForConditionalGeneration; there is no serving class"):
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
    recorded = check_servable(_config(config_entry(c2rope.C2RoPEConfig(mask="causal"))))
    assert recorded["config"] == c2rope.C2RoPEConfig(mask="causal")
