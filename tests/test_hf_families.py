"""The families table (c2rope/hf/families/__init__.py): the README's family table is the
one `python -m c2rope families` generates from it, and a family from outside the
corridor (tests/toy_family.py) is one module plus one row."""
import os
import sys

import pytest
import torch

from test_hf_common import IMG, assert_close_valid, batch_with_images, reference_logits, text_config  # noqa: F401

import c2rope  # noqa: E402
from c2rope.cli import families as families_cli  # noqa: E402
from c2rope.cli.main import main  # noqa: E402
from c2rope.hf import families, registry  # noqa: E402

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _readme_rows():
    with open(README, encoding="utf-8") as handle:
        text = handle.read()
    start, end = families_cli.readme_table(text)
    return [line for line in text[start:end].strip().splitlines()[2:]]


def test_readme_table_is_the_generated_one(capsys):
    assert main(["families", "--markdown"]) == 0
    generated = capsys.readouterr().out.strip().splitlines()[2:]
    readme = _readme_rows()
    missing = [row for row in generated if row not in readme]
    extra = [row for row in readme if row not in generated]
    assert not missing and not extra, (
        f"README.md's family table differs from the families table: missing {missing}, not registered {extra}; "
        "run `python -m c2rope families --readme README.md`")
    assert readme == generated  # same order too


def test_every_registered_model_type_has_one_readme_row():
    c2rope.hf._load_families()
    cells = [row.split("|")[2] for row in _readme_rows()]
    listed = [t.strip(" `") for cell in cells for t in cell.split(",")]
    assert sorted(listed) == sorted(registry.supported_model_types())


@pytest.fixture
def toy_table(monkeypatch):
    """The families table and the patcher registry as they are, restored afterwards."""
    c2rope.hf._load_families()
    monkeypatch.setattr(families, "FAMILIES", list(families.FAMILIES))
    monkeypatch.setattr(families, "_loaded", dict(families._loaded))
    for name in ("_PATCHERS", "_CONFIG_TYPES", "_TAKES_OPTIONS"):
        monkeypatch.setattr(registry, name, dict(getattr(registry, name)))
    yield
    sys.modules.pop("toy_family", None)


def test_a_family_from_outside_the_corridor_patches_through_its_row(toy_table):
    families.register_family(families.Family("toy_family", "Toy (tests)", "any"))
    import toy_family

    assert families.family_of("c2rope_toy") is toy_family
    assert "c2rope_toy" in c2rope.hf.supported_model_types()
    assert families_cli.markdown_rows()[-1] == "| Toy (tests) | `c2rope_toy` | `ToyForCausalLM` | C²RoPE | any | [code.md](docs/code.md) |"
    fields = {k: v for k, v in text_config("llama").to_dict().items() if k != "model_type"}
    model = toy_family.ToyForCausalLM(toy_family.ToyConfig(**fields)).eval()
    assert model.config.model_type == "c2rope_toy"
    model.set_attn_implementation("sdpa")
    ids, mask, spans = batch_with_images(2, 24, [[(3, 2, 3)], [(5, 3, 2)]], left_pad=(0, 4))
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
    config = c2rope.C2RoPEConfig()
    expected = reference_logits(model, config, ids, mask, spans)
    c2rope.patch_model(model, config, image_token_id=IMG, grid=[(2, 3), (3, 2)])
    assert toy_family.patched == [model]
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
    assert_close_valid(got, expected, mask)
    assert (got - plain)[mask.bool()].abs().max() > 1e-4  # the images moved the logits
    c2rope.unpatch_model(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, plain)


def test_register_family_refuses_bad_rows(toy_table):
    with pytest.raises(TypeError, match="family must be"):
        families.register_family(".llama")
    with pytest.raises(ValueError, match="already registered"):
        families.register_family(families.Family(".llama", "again", "any"))
    with pytest.raises(ValueError, match="Family.line"):
        families.Family("x", "x", "any", line="future")
    with pytest.raises(ValueError, match="Family.name"):
        families.Family("x", "", "any")
