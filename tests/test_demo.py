"""`python -m c2rope demo | info` and the PNG writer."""
import struct
import subprocess
import sys
import zlib

import pytest
import torch

from c2rope import _png
from c2rope.__main__ import main


def decode_png(data: bytes):
    """Decode what _png writes (8-bit gray/RGB, filter 0): an independent reader."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks.setdefault(kind, b"")
        chunks[kind] += body
        pos += 12 + length
    width, height, depth, color, _, _, _ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    channels = {0: 1, 2: 3}[color]
    assert depth == 8 and b"IEND" in chunks
    raw = torch.frombuffer(bytearray(zlib.decompress(chunks[b"IDAT"])), dtype=torch.uint8)
    rows = raw.view(height, 1 + width * channels)
    assert rows[:, 0].eq(0).all()
    image = rows[:, 1:].reshape(height, width, channels)
    return image[..., 0] if channels == 1 else image


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (3, 4, 3)])
def test_png_round_trip(shape):
    image = torch.randint(0, 256, shape, dtype=torch.uint8)
    assert torch.equal(decode_png(_png.encode_png(image)), image)


def test_png_bad_input(tmp_path):
    with pytest.raises(TypeError, match="uint8"):
        _png.encode_png(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="shape"):
        _png.encode_png(torch.zeros(2, 2, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty"):
        _png.encode_png(torch.zeros(0, 2, dtype=torch.uint8))


def test_demo_writes_pngs_and_summary(tmp_path, capsys):
    from c2rope import C2RoPEConfig, chebyshev_mask
    from c2rope.demo import GRID, IMAGE_TOKEN_ID, synthetic_prompt
    from c2rope.layout import VisualLayout, grid_rings

    assert main(["demo", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "Triplet positions" in text and "Chebyshev mask" in text
    assert "tokens per ring (inner -> outer): [4, 12, 20" in text
    assert str(tmp_path / "mask.png") in text and str(tmp_path / "rings.png") in text
    # The rotation is checked against the float64 reference and reported.
    err = float(text.split("max |error| vs float64 reference ")[1].split()[0])
    assert err < 1e-5

    ids = synthetic_prompt(torch.Generator().manual_seed(0))
    layout = VisualLayout.from_input_ids(ids, IMAGE_TOKEN_ID, GRID)
    mask = decode_png((tmp_path / "mask.png").read_bytes())
    assert torch.equal(mask, chebyshev_mask(layout, C2RoPEConfig())[0, 0].to(torch.uint8) * 255)
    rings = decode_png((tmp_path / "rings.png").read_bytes())
    assert rings.shape == (24 * 12, (2 * 24 + 1) * 12, 3)
    # one colour per ring: cell colours and ring ranks determine each other
    cells = rings[6::12, 6 : 24 * 12 : 12].reshape(-1, 3)
    ranks = grid_rings(*GRID).flatten()
    colour_of = {}
    for rank, colour in zip(ranks.tolist(), map(tuple, cells.tolist())):
        assert colour_of.setdefault(rank, colour) == colour
    assert len(set(colour_of.values())) == 12


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


def test_info(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert f"torch {torch.__version__}" in text and "OpenMP max threads:" in text


def test_cli_needs_a_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def test_python_dash_m(tmp_path):
    done = subprocess.run([sys.executable, "-m", "c2rope", "info"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "kernels: CPU" in done.stdout
