"""`python -m c2rope check` on files that are not a usable model config: each is refused
with exit code 2 and a one-line reason (no traceback), and nothing is built for a model
type c2rope does not patch or for sizes no model has."""
import json
import os
import subprocess
import sys

import pytest

from test_hf_common import transformers  # noqa: F401  (skips under transformers < 4.57)

from c2rope.hf.check import main as check_main  # the documented path (docs/hf.md)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HUB = os.path.join(ROOT, "tests", "data", "hub_configs")
LLAMA3 = os.path.join(HUB, "meta-llama__Meta-Llama-3-8B-Instruct", "config.json")
LLAVA = os.path.join(HUB, "llava-hf__llava-1.5-7b-hf", "config.json")

MALFORMED = {  # name: (config.json text, words the reason must hold)
    "a JSON list": ("[1, 2]", "must hold a JSON object, got a JSON list"),
    "null": ("null", "must hold a JSON object, got null"),
    "a list as model_type": ('{"model_type": ["llama"]}', "model_type must be a non-empty string"),
    "no model_type": ('{"architectures": ["LlamaForCausalLM"]}', "has no model_type"),
    "NaN for an integer field": ('{"model_type": "llama", "num_hidden_layers": NaN}', "NaN"),
    "a bool for an integer field": ('{"model_type": "llama", "vocab_size": true}', "vocab_size must be an integer"),
    "a float for an integer field": ('{"model_type": "llava", "image_token_index": 32000.5}',
                                     "image_token_index must be an integer"),
    "a bool in a sub-config": ('{"model_type": "llava", "vision_config": {"patch_size": false}}',
                               "vision_config.patch_size must be an integer"),
    "architectures as a string": ('{"model_type": "llava", "architectures": "LlavaForConditionalGeneration"}',
                                  "architectures must be a list"),
    "text_config as a list": ('{"model_type": "llava", "text_config": [1]}', "text_config must be a JSON object"),
    "a string dtype field": ('{"model_type": "llama", "torch_dtype": 16}', "torch_dtype must be a string"),
    "bad grid pinpoints": ('{"model_type": "llava_next", "image_grid_pinpoints": [[336]]}', "image_grid_pinpoints"),
    "a zero patch size": ('{"model_type": "llava", "vision_config": {"patch_size": 0}}', "must be positive"),
    "invalid JSON": ('{"model_type": ', "not valid JSON"),
    "no layer count a model has": ('{"model_type": "qwen2", "num_hidden_layers": 1000000000}',
                                   "num_hidden_layers=1000000000 is more than any model has"),
    "a label count no model has": ('{"model_type": "llama", "num_labels": 1000000000}', "num_labels=1000000000"),
}


def _refused(code, out, err, words):
    assert code == 2, out + err
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("c2rope check: error: ") and words in lines[0], err
    assert "NOT SUPPORTED" not in out  # a broken file is not a verdict on a model


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_config_is_refused_with_a_reason(case, tmp_path, capsys):
    text, words = MALFORMED[case]
    (tmp_path / "config.json").write_text(text)
    code = check_main(str(tmp_path / "config.json"))
    captured = capsys.readouterr()
    _refused(code, captured.out, captured.err, words)


def test_missing_file_and_folder_without_config_are_refused(tmp_path, capsys):
    code = check_main(str(tmp_path / "nope"))
    captured = capsys.readouterr()
    _refused(code, captured.out, captured.err, "no such file or folder")
    code = check_main(str(tmp_path))
    captured = capsys.readouterr()
    _refused(code, captured.out, captured.err, "a folder without config.json")


@pytest.mark.parametrize("case", ["a JSON list", "NaN for an integer field", "invalid JSON"])
def test_command_line_refuses_a_malformed_config(case, tmp_path):
    text, words = MALFORMED[case]
    (tmp_path / "config.json").write_text(text)
    done = subprocess.run([sys.executable, "-m", "c2rope", "check", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    _refused(done.returncode, done.stdout, done.stderr, words)


@pytest.fixture
def nothing_is_built(monkeypatch):
    """Fail the test if any transformers model is built, on any device."""
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__} was built")

    monkeypatch.setattr(transformers.PreTrainedModel, "__init__", refuse)


def test_unsupported_model_type_is_refused_before_anything_is_built(tmp_path, capsys, nothing_is_built):
    # GPT-2 with n_positions = 2**31: building it would allocate 256 GB of position embeddings.
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_positions": 2 ** 31, "n_embd": 32,
        "n_layer": 2, "n_head": 2, "vocab_size": 50257}))
    code = check_main(str(tmp_path))
    out = capsys.readouterr().out
    assert code == 2, out
    assert "NOT SUPPORTED: model_type 'gpt2' is not one c2rope patches" in out and "nothing was built" in out
    assert "llava" in out and "qwen2_5_vl" in out  # names what is supported


@pytest.mark.parametrize("field, value", [("image_size", 2 ** 20), ("num_channels", 10 ** 7)])
def test_vision_sizes_no_model_has_are_not_built(field, value, tmp_path, capsys, nothing_is_built):
    with open(LLAVA) as handle:
        fields = json.load(handle)
    fields["vision_config"][field] = value
    (tmp_path / "config.json").write_text(json.dumps(fields))
    code = check_main(str(tmp_path))
    out = capsys.readouterr().out
    assert code == 2 and "NOT CHECKED:" in out and f"{field}={value}" in out, out


def test_huge_text_fields_are_shrunk_not_allocated(tmp_path, capsys):
    """vocab_size, max_position_embeddings and widths far beyond any checkpoint: the
    test model is the usual small one."""
    with open(LLAMA3) as handle:
        fields = json.load(handle)
    fields.update(vocab_size=2 ** 40, max_position_embeddings=2 ** 40, hidden_size=2 ** 30,
                  intermediate_size=2 ** 36)
    (tmp_path / "config.json").write_text(json.dumps(fields))
    code = check_main(str(tmp_path))
    out = capsys.readouterr().out
    assert code == 0 and out.count("PASS") == 4, out
    assert "vocabulary 512; random weights, 0.14 M values" in out, out
