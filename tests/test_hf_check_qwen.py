"""`python -m c2rope check MODEL` on Qwen-VL configs (c2rope/hf/families/qwen_vl/check.py): a
config.json with the checkpoints' real sizes and M-RoPE sections, written to tmp_path,
built at test size with random weights, patched and compared with the unpatched model
on text, an image and a video; the output says which frequency split is used."""
import pytest

import c2rope

transformers = pytest.importorskip("transformers")
from c2rope.cli.check_model import main as check_main  # noqa: E402

SECTIONS = {"qwen2_vl": [16, 24, 24], "qwen2_5_vl": [16, 24, 24], "qwen3_vl": [24, 20, 20]}
CLASSES = {"qwen2_vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration"),
           "qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"),
           "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration")}


def _write(kind, folder, section=None):
    """The config.json of a 7B-sized checkpoint of `kind` (as the hub's, less the weights)."""
    section = section or SECTIONS[kind]
    text = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, vocab_size=152064)
    if kind == "qwen3_vl":
        text["head_dim"] = 128
    if transformers.__version__.startswith("4."):
        text.update(rope_theta=1e6, rope_scaling={"type": "mrope", "mrope_section": section})
    else:
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": section,
                                   **({"mrope_interleaved": True} if kind == "qwen3_vl" else {})}
    config_class, model_class = CLASSES[kind]
    config = getattr(transformers, config_class)(
        text_config=text, image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
        vision_end_token_id=151653)
    config.architectures = [model_class]
    config.to_json_file(str(folder / "config.json"))
    return str(folder)


@pytest.mark.parametrize("kind", sorted(SECTIONS))
def test_check_passes_on_qwen_vl(kind, tmp_path, capsys):
    code = check_main(_write(kind, tmp_path))
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("PASS") == 4 and "FAIL" not in out and out.strip().endswith("supported")
    assert "image rows change" in out and "video frame rows change" in out
    layout = "interleaved" if kind == "qwen3_vl" else "chunked"
    assert f"frequency split: the model's M-RoPE sections mrope_section={SECTIONS[kind]} ({layout})" in out


def test_check_says_which_split_the_options_choose(tmp_path, capsys):
    path = _write("qwen2_5_vl", tmp_path)
    assert check_main(path, None, {"frequencies": "c2rope", "frame_axis": "separate"}) == 0
    out = capsys.readouterr().out
    assert "frequency split: c2rope's own (d_temporal=96, d_spatial=32) instead of the model's" in out
    assert "frame index" in out and out.count("PASS") == 4
    assert check_main(path, c2rope.CircleRoPEConfig()) == 0
    assert "rotated by Circle-RoPE positions" in capsys.readouterr().out


def test_check_reports_a_refused_option(tmp_path, capsys):
    # One temporal slot in the model's sections: no room for a frame axis.
    path = _write("qwen2_vl", tmp_path, section=[1, 31, 32])
    code = check_main(path, None, {"frame_axis": "separate"})
    out = capsys.readouterr().out
    assert code == 2 and "NOT SUPPORTED: ValueError" in out and "frame_axis" in out
