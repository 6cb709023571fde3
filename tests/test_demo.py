"""`python -m c2rope demo`: the printed numbers and the two pictures, read back from the
PNG files."""
import matplotlib.image  # the [test] extra installs matplotlib
import pytest
import torch

from c2rope import C2RoPEConfig, chebyshev_mask
from c2rope.cli.demo import GRID, IMAGE_TOKEN_ID, synthetic_prompt
from c2rope.cli.demo_figures import block_average, mask_figure, ring_order, rings_figure
from c2rope.cli.main import main
from c2rope.cli.plotting import figure_size_px
from c2rope.layout import VisualLayout, grid_rings


def _demo_layout(seed=0):
    ids = synthetic_prompt(torch.Generator().manual_seed(seed))
    return VisualLayout.from_input_ids(ids, IMAGE_TOKEN_ID, GRID)


def _read_png(path) -> torch.Tensor:
    """RGBA float32 [H, W, 4] in [0, 1], row 0 at the top."""
    return torch.from_numpy(matplotlib.image.imread(str(path)).copy())


def test_demo_prints_numbers_and_writes_pictures(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "Triplet positions" in text and "Chebyshev mask" in text
    assert "tokens per ring (inner -> outer): [4, 12, 20" in text
    assert "allowed pairs: " in text and "every query row allows at least one key: True" in text
    # The rotation is checked against the float64 reference and reported.
    err = float(text.split("max |error| vs float64 reference ")[1].split()[0])
    assert err < 1e-5
    layout = _demo_layout()
    mask = chebyshev_mask(layout, C2RoPEConfig())
    allowed = int(mask.sum())
    assert f"allowed pairs: {allowed:,} " in text
    for name in ("mask", "rings"):
        path = tmp_path / f"{name}.png"
        assert str(path) in text
        assert path.stat().st_size > 10_000
    # The files are the figures drawn from this layout and mask, at their own size.
    mask_png = _read_png(tmp_path / "mask.png")
    width, height = figure_size_px(mask_figure(layout, mask, "outward"))
    assert mask_png.shape == (height, width, 4)
    width, height = figure_size_px(rings_figure(layout))
    assert _read_png(tmp_path / "rings.png").shape == (height, width, 4)


def test_mask_png_holds_the_mask_cell_for_cell(tmp_path):
    # Drawn without resampling: inside the whole-prompt panel every screen pixel is the
    # grey of its cell (the block average of the mask), so nothing can alias into moire.
    layout = _demo_layout()
    mask = chebyshev_mask(layout, C2RoPEConfig(mask="inward"))
    fig = mask_figure(layout, mask, "inward")
    path = tmp_path / "mask.png"
    fig.savefig(path, dpi=fig.dpi)
    png = _read_png(path)
    ax = fig.axes[0]
    cells = torch.from_numpy(ax.images[0].get_array().data)
    factor = -(-layout.seq_len // cells.shape[0])
    torch.testing.assert_close(cells, block_average(mask[0, 0], factor))
    box = ax.get_window_extent()
    x0, y1 = round(box.x0), png.shape[0] - round(box.y0)
    side = round(box.width)
    px = side // cells.shape[0]
    assert side == px * cells.shape[0] and round(box.height) == side  # whole pixels per cell
    panel = png[y1 - side : y1, x0 : x0 + side, 0].double()
    expected = cells.repeat_interleave(px, 0).repeat_interleave(px, 1)
    # Skip the frame and the span lines drawn on top (2 pixels either side of each).
    keep = torch.ones(side, dtype=torch.bool)
    keep[:2] = keep[-2:] = False
    for start, h, w in layout.spans[0]:
        for edge in (start, start + h * w):
            at = round(edge / layout.seq_len * side)
            keep[max(0, at - 2) : at + 3] = False
    inside = keep.view(-1, 1) & keep.view(1, -1)
    assert inside.float().mean() > 0.9
    assert (panel - expected)[inside].abs().max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("mask_name", ["outward", "inward"])
def test_ring_panel_is_the_ring_rule(mask_name):
    # Image 1 against itself, tokens sorted by ring: allowed iff the key's ring is at
    # most (outward) / at least (inward) the query's ring: a staircase.
    layout = _demo_layout()
    mask = chebyshev_mask(layout, C2RoPEConfig(mask=mask_name))
    shown = torch.from_numpy(mask_figure(layout, mask, mask_name).axes[1].images[0].get_array().data)
    order, sizes = ring_order(layout, layout.spans[0][0])
    assert sizes == torch.bincount(grid_rings(*GRID).flatten().long()).tolist()
    rings = layout.ring[0, order].long()
    rule = rings.view(1, -1) <= rings.view(-1, 1) if mask_name == "outward" else rings.view(1, -1) >= rings.view(-1, 1)
    assert torch.equal(shown, rule.double())
    assert torch.equal(rings, torch.sort(rings).values)  # inner rings first


def test_rings_figure_shows_each_images_rings():
    layout = _demo_layout()
    fig = rings_figure(layout)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2
    for image in images:
        assert torch.equal(torch.from_numpy(image.get_array().data).long(), grid_rings(*GRID).long())
        colours = {tuple(image.cmap(image.norm(r))) for r in range(12)}
        assert len(colours) == 12  # one colour per ring


def test_block_average_against_a_loop():
    allowed = torch.rand(13, 8) < 0.4
    got = block_average(allowed, 3)
    assert got.shape == (5, 3)
    for i in range(5):
        for j in range(3):
            block = allowed[3 * i : 3 * i + 3, 3 * j : 3 * j + 3].double()
            assert got[i, j].item() == pytest.approx(block.mean().item())
    assert torch.equal(block_average(allowed, 1), allowed.double())


def test_demo_paper_code(tmp_path, capsys):
    assert main(["demo", "--paper-code", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "mask='inward'" in text and "d_temporal=116, d_spatial=12" in text


def test_demo_named_config(tmp_path, capsys):
    # Two 24x24 images after 6 text tokens, shared m: each takes 24 temporal slots.
    assert main(["demo", "--config", "shared-spread", "--mask", "causal", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "temporal='shared'" in text and "spatial_band='spread'" in text and "mask='causal'" in text
    assert "image 1 spans m in [17.5, 17.5], x in [6, 29], y in [6, 29]" in text
    assert "next generated token gets m = 63 " in text  # 6 + 24 + 24 + 9 text after
    assert main(["demo", "--config", "shared-middle", "--out", str(tmp_path)]) == 2
    assert "--config" in capsys.readouterr().err
