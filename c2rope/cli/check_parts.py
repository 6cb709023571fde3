"""What `python -m c2rope check` shares with the families' own check code
(`check_inputs`, `run_check` in c2rope/hf/families/*): the verdicts, the result line,
the test model's build, and the synthetic prompt around an image.

It imports no family and not check_model.py, so a family module can import it (lazily,
inside its check functions) without an import cycle."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from ..hf.state import config_image_token_id

VOCAB = 512  # the test model's vocabulary
SEQ_TEXT = 6  # text tokens before and after the synthetic image


class CheckUsageError(ValueError):
    """An option that does not apply to this model (a usage error, not a verdict)."""


class NotSupported(Exception):
    """c2rope refuses this model; the message says why."""

    verdict = "NOT SUPPORTED"


class TooLargeToCheck(NotSupported):
    """The test model or its synthetic inputs would be larger than the check builds."""

    verdict = "NOT CHECKED"


@dataclass
class CheckResult:
    name: str
    passed: Optional[bool]  # None: not checked for this model (detail says why)
    detail: str


@dataclass
class Plan:
    """What the check builds: the shrunk config, the class, and the report's lines."""
    path: str
    config: object
    model_class: type
    class_reason: str
    lines: List[str] = field(default_factory=list)


def build(config, cls):
    """`cls(config)` with seeded random weights, float32, in eval mode."""
    torch.manual_seed(0)
    return cls(config).to(torch.float32).eval()


def surrounding_text(generator: torch.Generator):
    """(before, after): the random text tokens around the synthetic image, drawn first
    so every family's prompt draws its pixels after them from the same generator."""
    vocab = VOCAB - 2
    before = torch.randint(3, vocab, (1, SEQ_TEXT), generator=generator)
    after = torch.randint(3, vocab, (1, SEQ_TEXT), generator=generator)
    return before, after


def image_prompt(before, after, tokens: int, placeholder: int, vision_inputs: Optional[dict] = None):
    """(kwargs with the image, kwargs text only, the rows to compare: the image and the
    text after it) of `before`, `tokens` placeholders, `after`."""
    image_ids = torch.cat([before, torch.full((1, tokens), placeholder), after], dim=1)
    text_ids = torch.cat([before, after], dim=1)
    with_image = {"input_ids": image_ids, "attention_mask": torch.ones_like(image_ids)}
    with_image.update(vision_inputs or {})
    text = {"input_ids": text_ids, "attention_mask": torch.ones_like(text_ids)}
    return with_image, text, slice(before.shape[1], before.shape[1] + tokens + after.shape[1])


__all__ = ["CheckResult", "CheckUsageError", "NotSupported", "Plan", "SEQ_TEXT", "TooLargeToCheck", "VOCAB", "build",
           "config_image_token_id", "image_prompt", "surrounding_text"]
