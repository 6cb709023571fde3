"""Building blocks of `python -m c2rope diagnose` (see c2rope.cli.diagnose): synthetic
prompts, the compared schemes, pure positional attention, the measurements, the report,
the heat maps (figures.py, matplotlib) and a progress bar."""
from .attention import phase_table, positional_attention, positional_scores, qk_weights  # noqa: F401
from .measures import Probe, continuity, decay, ptd, ring_causality  # noqa: F401
from .prompt import Prompt  # noqa: F401
from .schemes import Scheme, default_schemes  # noqa: F401

__all__ = [
    "Probe", "Prompt", "Scheme", "continuity", "decay", "default_schemes", "phase_table",
    "positional_attention", "positional_scores", "ptd", "qk_weights", "ring_causality",
]
