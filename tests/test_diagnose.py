"""`python -m c2rope diagnose`: the positional-attention algebra against an explicit
rotation, the measurements on known patterns, what each scheme shows, and the files the
command writes."""
import io
import math
import os
import re

import matplotlib.image  # the [test] extra installs matplotlib
import pytest
import torch

from c2rope.cli.diagnose import DiagnoseSettings, run_diagnose
from c2rope.cli.diagnostics.attention import (
    default_inv_freq, phase_table, positional_attention, positional_scores, qk_weights, weights_from_qk,
)
from c2rope.cli.diagnostics.figures import DECAY_LIMIT, continuity_figure, decay_figure, rings_figure
from c2rope.cli.diagnostics.measures import Probe, continuity, decay, image_attention, ptd, ring_causality
from c2rope.cli.diagnostics.progress import Progress
from c2rope.cli.diagnostics.prompt import Prompt
from c2rope.cli.diagnostics.schemes import default_schemes, scheme_by_key
from c2rope.cli.main import main
from c2rope.cli.plotting import figure_size_px
from c2rope.rotary import rotary_cos_sin

SCHEMES = {s.key: s for s in default_schemes()}


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@pytest.mark.parametrize("key", ["rope1d", "c2rope-paper", "circle"])
@pytest.mark.parametrize("qk", ["shared", "independent"])
def test_scores_equal_explicit_rotation(key, qk):
    # The complex-product shortcut must equal rotating q and k with HF's formula.
    scheme, dim = SCHEMES[key], 32
    prompt = Prompt.build([(3, 4)], text_before=2, text_after=5)
    pos = scheme.positions(prompt)
    inv_freq = default_inv_freq(dim)
    q = torch.randn(3, dim, dtype=torch.float64)
    k = q if qk == "shared" else torch.randn(3, dim, dtype=torch.float64)
    weights = weights_from_qk(q, k)
    cos, sin = rotary_cos_sin(pos.unsqueeze(0), inv_freq, scheme.axis(dim), dtype=torch.float64)
    cos, sin = cos[0], sin[0]  # [S, dim]
    q_rot = q[:, None] * cos + _rotate_half(q[:, None]) * sin  # [D, S, dim]
    k_rot = k[:, None] * cos + _rotate_half(k[:, None]) * sin
    expected = q_rot @ k_rot.transpose(1, 2) / math.sqrt(dim)
    queries = torch.tensor([0, 3, prompt.seq_len - 1])
    got = positional_scores(phase_table(pos, inv_freq, scheme.axis(dim)), weights, queries)
    torch.testing.assert_close(got, expected[:, queries], rtol=1e-10, atol=1e-10)
    if qk == "shared":  # identical content: a token's score with itself is |q|^2 / sqrt(d)
        diag = got[:, torch.arange(3), queries]
        expected_diag = (q.norm(dim=-1, keepdim=True) ** 2 / math.sqrt(dim)).expand_as(diag)
        torch.testing.assert_close(diag, expected_diag)


@pytest.mark.parametrize("norm,length", [("rms", 4.0), ("unit", 1.0)])
def test_qk_weights_norm_and_sharing(norm, length):
    weights = qk_weights(5, 16, qk="shared", norm=norm)
    # shared q = k: every slot's weight is |z|^2 (real, >= 0), summing to |q|^2.
    assert (weights.imag == 0).all() and (weights.real >= 0).all()
    torch.testing.assert_close(weights.real.sum(-1), torch.full((5,), length ** 2, dtype=torch.float64))
    independent = qk_weights(5, 16, qk="independent", norm=norm)
    assert (independent.imag != 0).any()


def test_attention_respects_mask_and_sums_to_one():
    scores = torch.randn(4, 5, 7, dtype=torch.float64)
    allowed = torch.rand(5, 7) < 0.5
    allowed[torch.arange(5), torch.arange(5)] = True
    attn = positional_attention(scores, allowed)
    assert (attn[~allowed] == 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(5, dtype=torch.float64))


def test_continuity_on_known_patterns():
    h, w, start = 5, 6, 3
    seq = start + h * w
    rows = torch.arange(h * w) // w
    cols = torch.arange(h * w) % w
    key_rows, key_cols = rows.view(1, -1), cols.view(1, -1)
    q_rows, q_cols = rows.view(-1, 1), cols.view(-1, 1)
    allowed = torch.ones(h * w, seq, dtype=torch.bool)
    weight = torch.rand(())  # any value: only the ratio of the two directions matters
    vertical = ((key_rows - q_rows).abs() == 1) & (key_cols == q_cols)
    horizontal = ((key_cols - q_cols).abs() == 1) & (key_rows == q_rows)
    attn = torch.zeros(h * w, seq, dtype=torch.float64)
    attn[:, start:] = vertical * weight + horizontal * 2 * weight
    result = continuity(attn, allowed, start, (h, w))
    assert result["ratio"] == pytest.approx(0.5)
    assert result["vertical_allowed"] == result["horizontal_allowed"] == 1.0
    # A mask that hides every vertical neighbour is a complete column break.
    attn[:, start:] = horizontal * weight
    allowed[:, start:] &= ~vertical
    result = continuity(attn, allowed, start, (h, w))
    assert result["ratio"] == 0 and result["vertical_allowed"] == 0
    assert result["log2_map"].shape == (h, w)
    # Locality: attention spread evenly over the image prefers no patch (1); all of it
    # on the 4 neighbours of an interior patch is 30 keys / 4 = 7.5 times the mean key.
    allowed[:] = True
    attn[:, start:] = 1.0 / (h * w)
    assert continuity(attn, allowed, start, (h, w))["locality"] == pytest.approx(1.0)
    attn[:, start:] = (vertical | horizontal).double()
    result = continuity(attn, allowed, start, (h, w))
    assert result["locality"] == pytest.approx(h * w / 4) and result["ratio"] == pytest.approx(1.0)


def test_ring_causality_of_the_masks():
    probe = Probe(default_inv_freq(32), qk_weights(2, 32, torch.Generator().manual_seed(1)))
    grid = (6, 6)  # rings 0, 1, 2
    for key in ("c2rope", "c2rope-paper", "rope1d"):
        _, start, attn, allowed = image_attention(probe, SCHEMES[key], grid, 3, 3)
        r = ring_causality(attn, allowed, start, grid)
        assert r["may"].shape == r["do"].shape == (3, 3)
        lower = torch.tril(torch.ones(3, 3, dtype=torch.bool))
        if key == "c2rope":  # outward: own ring and nearer ones, all of them
            assert torch.equal(r["may"], lower.double()) and r["farther"] == 0
        elif key == "c2rope-paper":  # inward: own ring and farther ones
            assert torch.equal(r["may"], lower.T.double()) and r["nearer"] == 0
        else:  # causal: partial access in both directions
            assert ((r["may"] > 0) & (r["may"] < 1)).any() and r["farther"] > 0 and r["nearer"] > 0
        total = r["nearer"] + r["same"] + r["farther"] + r["outside"]
        assert total == pytest.approx(1.0)
        assert (r["do"][r["may"] == 0] == 0).all()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("diagnose")
    settings = DiagnoseSettings(draws=4, seed=int(torch.randint(0, 2**31, ())), text_lengths=(8, 2048))
    stream = io.StringIO()
    result = run_diagnose(str(out), settings, out=stream, progress=False)
    return result, stream.getvalue(), settings


def test_schemes_on_24x24(report):
    results = report[0]["results"]
    ratio = {key: res["continuity"]["ratio"] for key, res in results.items()}
    # 1D RoPE puts the patch above 24 positions away: a column break.
    assert ratio["rope1d"] < 0.1
    # The paper code's concentric temporal index treats both directions alike.
    assert abs(ratio["c2rope-paper"] - 1) < 0.05
    # The seed's defaults keep the raster temporal index on 3/4 of the slots: the break
    # remains (measured, reported; the spatial slots are the slowest frequencies).
    assert ratio["c2rope"] < 0.2 and ratio["c2rope"] >= ratio["rope1d"] * 0.9
    # M-RoPE: one step on h or w; h takes faster slots than w, close to but not exactly 1.
    assert 0.7 < ratio["mrope"] < 1.4
    for key in ("mrope", "circle"):
        res = results[key]
        values = [res["continuity"]["ratio"], res["rings"]["same"], res["ptd_paper"], res["ptd_grid"]]
        values += [row[name] for row in res["decay"] for name in ("first_image", "all_images", "relative")]
        assert all(math.isfinite(v) for v in values)
        assert torch.isfinite(res["rings"]["do"]).all()


def test_decay_and_ptd(report):
    results = report[0]["results"]
    for key, res in results.items():
        short, long = res["decay"]
        assert 0 < long["all_images"] < short["all_images"] <= 1, key  # text takes over
        assert 0 < short["uniform"] < 1
    assert results["rope1d"]["ptd_paper"] == pytest.approx(20 / 9, abs=1e-6)  # paper: 2.22
    assert results["circle"]["ptd_paper"] == pytest.approx(0, abs=1e-4)      # paper: 0
    assert results["c2rope"]["ptd_paper"] < results["rope1d"]["ptd_paper"]


def test_decay_uniform_share_is_the_first_images_share_of_keys():
    probe = Probe(default_inv_freq(16), qk_weights(1, 16, torch.Generator().manual_seed(0)))
    rows = decay(probe, SCHEMES["rope1d"], (3, 3), 2, [5], text_before=4, text_between=2)
    seq = 4 + 9 + 2 + 9 + 5
    assert rows[0]["seq_len"] == seq and rows[0]["uniform"] == pytest.approx(9 / seq)
    assert ptd(SCHEMES["rope1d"], (3, 3), 5) == pytest.approx(20 / 9)


def _table(md: str, heading: str):
    """Rows (lists of cells) of the first markdown table after `heading`."""
    lines = md[md.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_report_files_and_numbers(report):
    result, text, settings = report
    results = result["results"]
    written = re.findall(r"^  (\S+\.(?:png|md))", text, flags=re.M)
    assert len(written) == 1 + 2 * len(SCHEMES) + 1
    assert sorted(written) == sorted(result["paths"].values())
    for path in written:
        assert os.path.getsize(path) > 1000
        if path.endswith(".png"):
            image = matplotlib.image.imread(path)
            assert image.ndim == 3 and image.shape[-1] == 4 and min(image.shape[:2]) > 300
    md = open(result["report"]).read()
    schemes = default_schemes()
    for scheme in schemes:
        assert md.count(f"| {scheme.name} |") == 6  # masks, continuity, rings, decay x2, PTD
    # The numbers in report.md are the measured ones, row by row in scheme order.
    rows = _table(md, "## Spatial continuity")
    assert [row[0] for row in rows] == [s.name for s in schemes]
    for scheme, row in zip(schemes, rows):
        c = results[scheme.key]["continuity"]
        assert row[1] == f"**{c['ratio']:.3f}**"
        assert row[5] == f"continuity_{scheme.key}.png"
    for scheme, row in zip(schemes, _table(md, "## Chebyshev causality")):
        r = results[scheme.key]["rings"]
        assert [float(v) for v in row[1:5]] == pytest.approx([r["nearer"], r["same"], r["farther"], r["outside"]],
                                                             abs=5e-4)
    for scheme, row in zip(schemes, _table(md, "## Long-range decay")):
        relative = [float(re.search(r"\(([\d.]+)x uniform\)", cell).group(1)) for cell in row[1:]]
        assert relative == pytest.approx([d["relative"] for d in results[scheme.key]["decay"]], abs=5e-3)
    ptd_rows = {row[0]: row for row in _table(md, "## Cross-modal bias")}
    assert ptd_rows["1D RoPE (raster)"][1] == "2.222"  # the paper's Table 1: 2.22
    assert float(ptd_rows["Circle-RoPE (alpha 0.5, R 10)"][1]) == pytest.approx(0, abs=1e-3)


def test_decay_figure_plots_the_table(report):
    result, _, settings = report
    schemes = default_schemes()
    fig = decay_figure(schemes, result["results"], settings.text_lengths)
    ax = fig.axes[0]
    relative = torch.tensor([[d["relative"] for d in result["results"][s.key]["decay"]] for s in schemes],
                            dtype=torch.float64)
    shown = torch.from_numpy(ax.images[0].get_array().data)
    torch.testing.assert_close(shown, torch.log2(relative).clamp(-DECAY_LIMIT, DECAY_LIMIT))
    assert [t.get_text() for t in ax.texts] == [f"{v:.2g}x" for v in relative.flatten().tolist()]
    assert [t.get_text() for t in ax.get_yticklabels()] == [s.name for s in schemes]
    # 1D RoPE's first image gets far less than its uniform share: its row is blue.
    assert (shown[0] < -1).all()
    width, height = figure_size_px(fig)
    assert matplotlib.image.imread(result["paths"]["decay"]).shape == (height, width, 4)


def test_continuity_and_rings_figures_plot_the_measurements(report):
    results = report[0]["results"]
    for scheme in default_schemes():
        res = results[scheme.key]
        fig = continuity_figure(scheme, res["continuity"])
        shown = torch.from_numpy(fig.axes[0].images[0].get_array().data)
        torch.testing.assert_close(shown, res["continuity"]["log2_map"])
        assert f"{res['continuity']['ratio']:.3f}" in fig.axes[0].get_title()
        fig = rings_figure(scheme, res["rings"])
        may, do = (torch.from_numpy(ax.images[0].get_array().data) for ax in fig.axes[:2])
        torch.testing.assert_close(may, res["rings"]["may"])
        torch.testing.assert_close(do, torch.log10(res["rings"]["do"].clamp_min(1e-300)))


def test_command_line(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["diagnose", "--out", str(out), "--grid", "5x4", "--draws", "2", "--dim", "32",
                 "--images", "2", "--text-lengths", "3,40", "--schemes", "rope1d,mrope", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    files = sorted(os.listdir(out))
    assert files == sorted(["report.md", "decay.png", "continuity_rope1d.png", "rings_rope1d.png",
                            "continuity_mrope.png", "rings_mrope.png"])
    for name in files:
        assert str(out / name) in printed
    md = (out / "report.md").read_text()
    assert md.count("| M-RoPE (Qwen2-VL) |") == 6
    assert matplotlib.image.imread(str(out / "rings_mrope.png")).shape[:2] == (470, 1000)
    assert main(["diagnose", "--schemes", "nope", "--out", str(out)]) == 2
    assert "unknown scheme" in capsys.readouterr().err


def test_settings_and_schemes_refuse_bad_values():
    with pytest.raises(ValueError, match="grid"):
        DiagnoseSettings(grid=(2, 24))
    with pytest.raises(ValueError, match="draws"):
        DiagnoseSettings(draws=0)
    with pytest.raises(ValueError, match="text_lengths"):
        DiagnoseSettings(text_lengths=())
    with pytest.raises(ValueError, match="norm"):
        DiagnoseSettings(norm="l2")
    with pytest.raises(ValueError, match="unknown scheme"):
        scheme_by_key(["rope1d", "bogus"])
    with pytest.raises(ValueError, match="qk"):
        qk_weights(1, 8, qk="same")


def test_progress_bar():
    stream = io.StringIO()
    bar = Progress(4, enabled=True, stream=stream)
    for i in range(4):
        bar.step(f"task {i}")
    bar.close()
    text = stream.getvalue()
    assert "4/4" in text and "task 3" in text and "#" * 28 in text and text.endswith("\n")
    quiet = io.StringIO()
    bar = Progress(4, enabled=False, stream=quiet)
    bar.step("x")
    bar.close()
    assert quiet.getvalue() == ""
