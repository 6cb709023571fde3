"""`python -m c2rope check` on the config.json files of published checkpoints
(tests/data/hub_configs, reconstructions of the hub's files): each is supported with
PASS lines, whatever dtype it declares (float16 / bfloat16 at the top level and in its
sub-configs), and the report names the file, the dtypes and the synthetic inputs."""
import json
import os

import pytest

from test_hf_common import transformers  # noqa: F401  (skips under transformers < 4.57)

from c2rope.cli.check_model import main as check_main
from c2rope.hf.families.gemma import MODEL_TYPES as GEMMA, unsupported_reason

HUB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "hub_configs")
CHECKPOINTS = sorted(name for name in os.listdir(HUB) if os.path.isdir(os.path.join(HUB, name)))
QWEN_VL = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl"}
# Families checked with their own synthetic inputs (c2rope/hf/families/*.check_inputs):
# what the report's "synthetic image" line must name.
TILE_FAMILIES = {"internvl": "2 tiles of 448x448 px -> 2 grids of 16x16 tokens",
                 "llava_onevision1_5": "8x12 patches of 14 px (image_grid_thw), merged 2x2 -> a 4x6 grid"}


def _shipped(model_type):
    """Whether the installed transformers has the family (llava_onevision1_5: from 5.25)."""
    import importlib.util

    return importlib.util.find_spec(f"transformers.models.{model_type}") is not None


def _fields(name):
    with open(os.path.join(HUB, name, "config.json")) as handle:
        return json.load(handle)


def _run(path, capsys):
    code = check_main(path)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_family_the_readme_lists_has_a_published_config():
    types = {_fields(name)["model_type"] for name in CHECKPOINTS}
    assert types >= {"llama", "mistral", "qwen2", "llava", "llava_next", "llava_onevision"} | QWEN_VL | \
        set(TILE_FAMILIES)


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_published_config_is_supported(name, capsys):
    fields = _fields(name)
    folder = os.path.join(HUB, name)
    code, out, err = _run(folder, capsys)
    if fields["model_type"] in GEMMA and unsupported_reason(fields["model_type"]) is not None:
        assert code == 2 and ("NOT SUPPORTED" in out or "error" in err), out + err  # refused on this release
        return
    if not _shipped(fields["model_type"]):  # refused from the file, with the reason
        assert code == 2 and "NOT SUPPORTED" in out and "needs a transformers release that ships" in out, out + err
        return
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0] == f"c2rope check: {os.path.join(folder, 'config.json')}"
    assert "FAIL" not in out and "NOT" not in out and lines[-1] == "supported", out
    assert out.count("PASS") == 4, out
    dtype_line = next(line for line in lines if line.strip().startswith("dtype:"))
    declared = fields.get("torch_dtype") or fields.get("dtype") or fields["text_config"]["dtype"]
    assert declared in dtype_line and "float32" in dtype_line, dtype_line
    synthetic = next(line for line in lines if line.strip().startswith("synthetic image:"))
    if fields["model_type"] in TILE_FAMILIES:
        assert TILE_FAMILIES[fields["model_type"]] in synthetic, synthetic
    elif fields["model_type"] in QWEN_VL:
        assert "image_grid_thw (1, 4, 6)" in synthetic and "video_grid_thw (2, 4, 4)" in synthetic, synthetic
    elif "vision_config" in fields:
        size = fields["vision_config"]["image_size"]
        assert f"{size} px" in synthetic or f"{size}x{size} px" in synthetic, synthetic
        side = size // fields["vision_config"]["patch_size"]
        assert f"{side}x{side}" in synthetic, synthetic
    else:
        assert "2x3 patch grid" in synthetic, synthetic


@pytest.mark.parametrize("name", [n for n in CHECKPOINTS if n.startswith("llava-hf__")])
def test_llava_config_without_architectures_builds_from_model_type(name, tmp_path, capsys):
    fields = _fields(name)
    del fields["architectures"]
    (tmp_path / "config.json").write_text(json.dumps(fields))
    code, out, err = _run(str(tmp_path), capsys)
    assert code == 0 and out.count("PASS") == 4, out + err
    assert "(from model_type; config.json names no architectures)" in out, out


def test_reward_model_is_checked_on_its_score(tmp_path, capsys):
    """LlamaForSequenceClassification (a reward model on Llama-3): patch_model takes it;
    the check compares its score and its decoder's image rows, and says plainly that
    generation and packed rows are not checked."""
    fields = _fields("meta-llama__Meta-Llama-3-8B-Instruct")
    fields.update(architectures=["LlamaForSequenceClassification"], num_labels=1, pad_token_id=128256,
                  id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0}, vocab_size=128257)
    (tmp_path / "config.json").write_text(json.dumps(fields))
    code, out, err = _run(str(tmp_path), capsys)
    assert code == 0, out + err
    assert "built as LlamaForSequenceClassification" in out
    assert out.count("PASS") == 2 and "FAIL" not in out and out.strip().endswith("supported"), out
    assert "image rows of the decoder's last hidden state change" in out
    not_checked = [line for line in out.splitlines() if line.strip().startswith("NOT CHECKED")]
    assert len(not_checked) == 1 and "generation and packed rows" in not_checked[0], out
