// The Python module `c2rope._C` and the schemas of every c2rope op.
//
// The module itself is empty (no pybind11): importing it only runs the static
// registrations below and in the other csrc/torch/*_ops.cpp files, which add the CPU
// (and, when built, CUDA) implementations with TORCH_LIBRARY_IMPL. Python reaches the
// ops as torch.ops.c2rope.<name>; c2rope/_ops.py adds fake kernels and autograd.
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject *PyInit__C(void) {
    static struct PyModuleDef module_def = {
        PyModuleDef_HEAD_INIT,
        "_C",  // name
        "c2rope kernels; the ops are registered as torch.ops.c2rope.*",
        -1,       // no per-module state
        nullptr,  // no methods
    };
    return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(c2rope, m) {
    // HF-format cos/sin [B, S, 2*len(inv_freq)] from float32 positions [B, S, A]:
    // slot k rotates by positions[..., axis[k]] * inv_freq[k].
    m.def("cos_sin(Tensor positions, Tensor inv_freq, Tensor axis, float attention_scaling, "
          "ScalarType dtype) -> (Tensor, Tensor)");
    // HF's apply_rotary_pos_emb on q [B,Hq,S,D] and k [B,Hk,S,D] in one pass.
    m.def("rotary(Tensor q, Tensor k, Tensor cos, Tensor sin) -> (Tensor, Tensor)");
    // Its exact transpose: the gradient with respect to q and k.
    m.def("rotary_backward(Tensor grad_q, Tensor grad_k, Tensor cos, Tensor sin) -> (Tensor, Tensor)");
    // In-place forward rotation.
    m.def("rotary_(Tensor(a!) q, Tensor(b!) k, Tensor cos, Tensor sin) -> ()");
    // Chebyshev causal mask [B, 1, q_len, K]; mode 0 outward, 1 inward, 2 causal;
    // dtype bool (True = attend) or float (additive 0 / finfo.min).
    m.def("chebyshev_mask(Tensor valid, Tensor image_id, Tensor ring, int q_offset, int q_len, "
          "int mode, ScalarType dtype) -> Tensor");
}
