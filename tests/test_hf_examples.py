"""The examples/ snippets run (tiny random models, no downloads)."""
from pathlib import Path

import pytest

from test_hf_common import transformers  # noqa: F401  (skips under transformers < 5)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(autouse=True)
def _examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))


def test_llava_finetune_example():
    import llava_finetune

    losses = llava_finetune.main(steps=2)
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # finite, not NaN


def test_llava_finetune_example_lora():
    pytest.importorskip("peft")
    import llava_finetune

    assert len(llava_finetune.main(steps=1, lora=True)) == 1


def test_hf_llava_generate_example():
    import hf_llava_generate

    tokens = hf_llava_generate.main(max_new_tokens=3)
    assert tokens.shape == (2, 30 + 3)
