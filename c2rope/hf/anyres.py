"""The documented import path of `AnyresGeometry` (README); the code lives in the
LLaVA-NeXT / OneVision family, c2rope/hf/families/llava_next/anyres.py."""
from .families.llava_next.anyres import AnyresGeometry

__all__ = ["AnyresGeometry"]
