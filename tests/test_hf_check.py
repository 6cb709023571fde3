"""`python -m c2rope check MODEL`: a local config.json is built at test size with random
weights, patched and compared with the unpatched model."""
import subprocess
import sys

import pytest

import c2rope

from test_hf_common import text_config, transformers  # noqa: F401  (skips under transformers < 4.57)

from c2rope.cli.check_model import main as check_main


def _write(config, folder):
    config.architectures = [{
        "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
        "llava": "LlavaForConditionalGeneration", "gpt2": "GPT2LMHeadModel",
    }[config.model_type]]
    config.to_json_file(str(folder / "config.json"))
    return str(folder)


def _llava_config():
    vision = transformers.CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                           num_attention_heads=16, image_size=56, patch_size=14)
    return transformers.LlavaConfig(vision_config=vision, text_config=text_config("llama", hidden_size=4096,
                                    num_hidden_layers=32, vocab_size=32064), image_token_id=32000)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "llava"])
def test_check_passes_on_supported_families(family, tmp_path, capsys):
    config = _llava_config() if family == "llava" else text_config(family, hidden_size=4096, num_hidden_layers=32)
    code = check_main(_write(config, tmp_path))
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("PASS") == 4 and "FAIL" not in out and out.strip().endswith("supported")
    assert f"transformers {transformers.__version__}" in out


def test_check_reports_an_unsupported_family(tmp_path, capsys):
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2)
    assert check_main(_write(config, tmp_path)) == 2
    assert "NOT SUPPORTED" in capsys.readouterr().out


def test_check_command_line(tmp_path):
    path = _write(text_config("qwen2"), tmp_path)
    out = subprocess.run([sys.executable, "-m", "c2rope", "check", path + "/config.json"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "text-only logits equal" in out.stdout
    missing = subprocess.run([sys.executable, "-m", "c2rope", "check", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "config.json" in missing.stdout + missing.stderr


def test_check_packed_line_fails_when_samples_are_not_separated(tmp_path, capsys, monkeypatch):
    """The packed line can fail: with packed-row detection switched off, the image
    sample's positions do not restart and its mask lets it see the text sample."""
    import c2rope.hf.packing as packing

    monkeypatch.setattr(packing, "sample_ids", lambda *args, **kwargs: None)
    assert check_main(_write(text_config("llama"), tmp_path)) == 1
    out = capsys.readouterr().out
    packed_line = next(line for line in out.splitlines() if "packed row" in line)
    assert packed_line.strip().startswith("FAIL") and out.count("PASS") == 3, out


def test_check_command_line_options(tmp_path):
    """--config picks the C2RoPEConfig by name."""
    path = _write(text_config("llama"), tmp_path)
    ok = subprocess.run([sys.executable, "-m", "c2rope", "check", path, "--config", "shared-high"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and ok.stdout.count("PASS") == 4, ok.stdout + ok.stderr


@pytest.mark.parametrize("extra, words", [
    (["--frame-axis", "separate"], "--frame-axis: model_type 'llama' takes no options"),
    (["--frequencies", "c2rope"], "--frequencies: model_type 'llama' takes no options"),
    (["--config", "sideways"], "--config: name must be one of"),
])
def test_usage_errors_exit_2_with_the_usage(extra, words, tmp_path, capsys):
    """A Qwen-VL option on a Llama, or a --config name that does not exist, is a usage
    error (argparse's usage line and the reason, exit code 2), not a verdict on the model."""
    from c2rope.cli.main import main as cli_main

    path = _write(text_config("llama"), tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli_main(["check", path, *extra])
    captured = capsys.readouterr()
    assert exc.value.code == 2
    assert captured.err.startswith("usage: c2rope check") and f"c2rope check: error: {words}" in captured.err, \
        captured.err
    assert "NOT SUPPORTED" not in captured.out + captured.err and "PASS" not in captured.out


def test_python_check_refuses_options_the_family_does_not_take(tmp_path, capsys):
    path = _write(text_config("llama"), tmp_path)
    assert check_main(path, None, {"frequencies": "c2rope"}) == 2
    captured = capsys.readouterr()
    assert "NOT SUPPORTED" not in captured.out and captured.out == ""
    assert captured.err.startswith("c2rope check: error: model_type 'llama' takes no options"), captured.err
    assert check_main(path, c2rope.CircleRoPEConfig()) == 2
    captured = capsys.readouterr()
    assert "NOT SUPPORTED" not in captured.out and "is patched with a c2rope.C2RoPEConfig" in captured.err
