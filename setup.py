"""Build c2rope: C11/OpenMP kernels as a static library, linked into one torch extension.

torch.utils.cpp_extension compiles every source of an Extension with C++ flags, so the
C kernels (csrc/cpu/*.c) are built first by setuptools' build_clib as real C11, and the
extension (csrc/torch/*.cpp, plus csrc/cuda/*.cu when CUDA is on) links them in.

Environment:
  C2ROPE_CUDA=1     build the CUDA kernels too (default off: opt-in until verified on
                    a GPU, see docs/cuda.md); needs a CUDA build of torch and nvcc
  C2ROPE_CUDA_ARCHS semicolon list for TORCH_CUDA_ARCH_LIST (default "8.0;9.0")
"""
import glob
import os

import torch
from setuptools import setup
from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))
INCLUDE = os.path.join("csrc", "include")


def _cuda_wanted() -> bool:
    # Opt-in until the CUDA kernels have been verified on a GPU (docs/cuda.md).
    forced = os.environ.get("C2ROPE_CUDA", "0")
    return forced.strip() not in ("0", "", "false", "False")


def _sources(pattern: str) -> list:
    return sorted(glob.glob(pattern))


# The wheel is tagged cp310-abi3 (py_limited_api below). Only torch >= 2.7 builds such an
# extension with -DPy_LIMITED_API=0x030A0000, which makes that tag true: the torch floor of
# pyproject.toml's dependencies. Refuse older ones rather than write a wrongly tagged wheel.
if torch.__version__ < (2, 7):
    raise RuntimeError(f"c2rope builds against torch >= 2.7 (found {torch.__version__}): "
                       "its limited-API (abi3) extension needs cpp_extension's Py_LIMITED_API support")

WITH_CUDA = _cuda_wanted()

c_kernels = (
    "c2rope_kernels",
    {
        "sources": _sources("csrc/cpu/*.c"),
        "include_dirs": [INCLUDE],
        # -fPIC: the archive is linked into a shared object. -O3 lets gcc vectorise
        # the pair loops; no -ffast-math, the kernels must round exactly like torch.
        "cflags": ["-std=c11", "-O3", "-fopenmp", "-fPIC", "-Wall", "-Wextra"],
    },
)

torch_sources = [s for s in _sources("csrc/torch/*.cpp") if not s.endswith("_cuda.cpp")]
define_macros = []
extra_compile_args = {"cxx": ["-O3", "-fopenmp"]}
if WITH_CUDA:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", os.environ.get("C2ROPE_CUDA_ARCHS", "8.0;9.0"))
    torch_sources += _sources("csrc/torch/*_cuda.cpp") + _sources("csrc/cuda/*.cu")
    define_macros.append(("C2ROPE_WITH_CUDA", "1"))
    # Recorded so `python -m c2rope info` can say which GPUs the kernels were built for.
    define_macros.append(("C2ROPE_CUDA_ARCHS", '"%s"' % os.environ["TORCH_CUDA_ARCH_LIST"]))
    extra_compile_args["nvcc"] = ["-O3", "-lineinfo"]
    extension_class = cpp_extension.CUDAExtension
else:
    extension_class = cpp_extension.CppExtension

ext = extension_class(
    name="c2rope._C",
    sources=torch_sources,
    include_dirs=[os.path.join(HERE, INCLUDE)],
    define_macros=define_macros,
    extra_compile_args=extra_compile_args,
    extra_link_args=["-fopenmp"],
    # The extension registers ops with the dispatcher and exports PyInit__C only; it
    # uses the limited API so one wheel serves CPython 3.10+ (torch sets Py_LIMITED_API to 3.10).
    py_limited_api=True,
)

class BuildExtensionWithKernels(cpp_extension.BuildExtension):
    """Build the C kernel archive first: `build_ext` alone (as in `--inplace` or an
    editable install) does not run `build_clib`, it only links what it produced."""

    def run(self):
        self.run_command("build_clib")
        super().run()


setup(
    libraries=[c_kernels],
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtensionWithKernels},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
