"""Draws docs/img/qwen_video_mask.png: the C2RoPE mask and positions of a Qwen3-VL-style
video prompt (text, frame 1, timestamp text, frame 2, text), with the frame row that
options={"frame_axis": "separate"} adds. Run from the repo root:
python scripts/qwen_video_picture.py"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from c2rope import C2RoPEConfig, VisualLayout, chebyshev_mask  # noqa: E402
from c2rope.mrope import c2rope_mrope_position_ids, frame_axis_positions, qwen_vision_spans  # noqa: E402

T, V = 0, 2
types = torch.tensor([[T, T] + [V] * 6 + [T, T] + [V] * 6 + [T, T]])
spans = qwen_vision_spans(types, None, torch.tensor([[2, 4, 6]]), spatial_merge_size=2)
config = C2RoPEConfig()
seq = types.shape[1]
layout = VisualLayout.from_spans([[tuple(s[:3]) for s in row] for row in spans], seq)
mask = chebyshev_mask(layout, config, dtype=torch.bool)[0, 0]
positions, _ = c2rope_mrope_position_ids(spans, seq, config)

figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1, 1.25]})
left.imshow(mask.numpy(), cmap="Greys", vmin=0, vmax=1.6)
for span in spans[0]:
    start, size = span.start - 0.5, span.h * span.w
    left.add_patch(plt.Rectangle((start, start), size, size, fill=False, edgecolor="tab:red", lw=1.5))
    left.text(start + size / 2, start - 0.8, f"frame {span.frame}", ha="center", color="tab:red", fontsize=8)
left.set_title("mask (dark = attends): Chebyshev inside a frame,\ncausal between frames and text", fontsize=9)
left.set_xlabel("key")
left.set_ylabel("query")
labels = ["text"] * 2 + ["f0"] * 6 + ["time"] * 2 + ["f1"] * 6 + ["text"] * 2
for row, name in enumerate(["t = m", "h = y", "w = x"]):
    right.plot(range(seq), positions[row, 0].numpy(), marker="o", label=name, alpha=0.8)
right.plot(range(seq), frame_axis_positions(positions, spans)[0].numpy(), marker="s", linestyle="--", color="k",
           label="frame (frame_axis='separate')", alpha=0.7)
right.set_xticks(range(seq))
right.set_xticklabels(labels, rotation=90, fontsize=7)
right.set_title("M-RoPE rows the model receives (text: t = h = w = frame)", fontsize=9)
right.legend(fontsize=8)
figure.tight_layout()
figure.savefig("docs/img/qwen_video_mask.png", dpi=110)
print("wrote docs/img/qwen_video_mask.png")
