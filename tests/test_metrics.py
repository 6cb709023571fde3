"""Per-Token Distance (c2rope.metrics.per_token_distance)."""
import math
import random

import pytest
import torch

import c2rope
from c2rope.circle import circle_position_ids
from c2rope.metrics import per_token_distance


def reference_ptd(image, text):
    total = 0.0
    for t in text:
        d = [math.dist(t, i) for i in image]
        mean = sum(d) / len(d)
        total += sum(abs(x - mean) for x in d) / len(d)
    return total / len(text)


def test_matches_loop_reference_on_random_positions():
    n_img, n_txt, axes = random.randint(1, 20), random.randint(1, 8), random.randint(1, 4)
    image = torch.randn(n_img, axes) * 10
    text = torch.randn(n_txt, axes) * 10
    want = reference_ptd(image.double().tolist(), text.double().tolist())
    assert per_token_distance(image, text) == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert c2rope.per_token_distance is per_token_distance


def test_raster_3x3_then_text_is_20_over_9():
    # The paper's Table 1 setup: 9 image tokens at 1D positions 0..8, then 5 text tokens.
    # Every text token is past the image, so its distances are p - 0 ... p - 8, whose mean
    # absolute deviation is that of 0..8: (4+3+2+1+0+1+2+3+4)/9 = 20/9 = 2.22.
    image = torch.arange(9.0).view(-1, 1)
    text = torch.arange(9.0, 14.0).view(-1, 1)
    assert per_token_distance(image, text) == pytest.approx(20 / 9, abs=1e-12)
    # Text before the image gives the same value; text inside it does not.
    assert per_token_distance(image + 5, torch.arange(5.0).view(-1, 1)) == pytest.approx(20 / 9, abs=1e-12)
    assert per_token_distance(image, torch.tensor([[4.0]])) == pytest.approx(reference_ptd(image.tolist(), [[4.0]]))
    assert per_token_distance(image, torch.tensor([[4.0]])) < 20 / 9


def test_circle_positions_give_zero():
    h, w = random.randint(1, 8), random.randint(1, 8)
    offset = random.uniform(0, 50)
    image = circle_position_ids((1, h, w), alpha=random.random(), radius=random.uniform(1, 20)).T + offset
    text = (torch.rand(random.randint(1, 6)) * 100 - 50).view(-1, 1).expand(-1, 3)  # anywhere on the text line
    assert per_token_distance(image, text) < 1e-5


def test_invariant_to_translation_and_order():
    image, text = torch.randn(7, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    base = per_token_distance(image, text)
    shift = torch.randn(3, dtype=torch.float64)
    assert per_token_distance(image + shift, text + shift) == pytest.approx(base, abs=1e-9)
    assert per_token_distance(image[torch.randperm(7)], text[torch.randperm(4)]) == pytest.approx(base, abs=1e-12)


def test_accepts_lists_and_integer_tensors():
    assert per_token_distance([[0], [1], [2]], [[5]]) == pytest.approx(2 / 3)
    assert per_token_distance(torch.arange(3).view(-1, 1), torch.tensor([[5]])) == pytest.approx(2 / 3)


def test_returns_python_float():
    assert isinstance(per_token_distance(torch.randn(3, 2), torch.randn(2, 2)), float)


@pytest.mark.parametrize(
    "image,text,exc,name",
    [
        (torch.randn(3, 2), torch.randn(2, 3), ValueError, "axes"),
        (torch.randn(3), torch.randn(2, 1), ValueError, "image_pos"),
        (torch.randn(3, 1), torch.randn(2, 1, 1), ValueError, "text_pos"),
        (torch.randn(0, 2), torch.randn(2, 2), ValueError, "image_pos"),
        (torch.randn(3, 2), torch.randn(0, 2), ValueError, "text_pos"),
        (torch.tensor([[float("nan")]]), torch.randn(2, 1), ValueError, "image_pos"),
        (torch.randn(3, 1), torch.tensor([[float("inf")]]), ValueError, "text_pos"),
        (torch.ones(3, 1, dtype=torch.bool), torch.randn(2, 1), TypeError, "image_pos"),
        ("abc", torch.randn(2, 1), TypeError, "image_pos"),
        (torch.randn(3, 1), object(), TypeError, "text_pos"),
    ],
)
def test_bad_input(image, text, exc, name):
    with pytest.raises(exc, match=name):
        per_token_distance(image, text)


def test_ptd_table_script_reproduces_the_paper_values():
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ptd_table.py"
    schemes = runpy.run_path(str(script))["schemes"]
    for text_before in (False, True):
        rows = {name: per_token_distance(image, text) for name, image, text in schemes(text_before)}
        assert rows["1D RoPE (raster)"] == pytest.approx(20 / 9, abs=1e-12)
        assert rows["Circle-RoPE (alpha 0.5, R 10)"] < 1e-5
        assert rows["Circle-RoPE (alpha 0.5, R auto)"] < 1e-5
        assert 0 < rows["M-RoPE (Qwen2-VL)"] < 20 / 9
