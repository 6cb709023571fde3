// Autograd and ADInplaceOrView kernels of torch.ops.c2rope.rotary_, so the in-place op
// behaves as torch's own in-place ops do:
//   - the version counters of q and k are bumped (ADInplaceOrView), so a backward that
//     saved either before the rotation raises instead of using the rotated values;
//   - with grad mode on and any argument requiring grad, a leaf that requires grad is
//     refused, and otherwise the rotation is recorded in the graph: the out-of-place op
//     (with its registered backward) writes through torch's copy_, which rebases q's and
//     k's history (views of other tensors included) exactly as any in-place op does.
// Without grad the op goes straight to the device kernel, as before.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include <tuple>

namespace {

using InplaceFn = void(const at::Tensor &, const at::Tensor &, const at::Tensor &, const at::Tensor &);
using RotaryFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor &, const at::Tensor &,
                                                    const at::Tensor &, const at::Tensor &);

const c10::TypedOperatorHandle<InplaceFn> &rotary_inplace_op() {
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("c2rope::rotary_", "").typed<InplaceFn>();
    return op;
}

const c10::TypedOperatorHandle<RotaryFn> &rotary_op() {
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("c2rope::rotary", "").typed<RotaryFn>();
    return op;
}

void rotary_inplace_autograd(c10::DispatchKeySet ks, const at::Tensor &q, const at::Tensor &k,
                             const at::Tensor &cos, const at::Tensor &sin) {
    const bool record = c10::GradMode::is_enabled() &&
                        (q.requires_grad() || k.requires_grad() || cos.requires_grad() || sin.requires_grad());
    if (!record) {
        at::AutoDispatchBelowAutograd guard;
        rotary_inplace_op().redispatch(ks & c10::after_autograd_keyset, q, k, cos, sin);
        return;
    }
    for (const auto &[name, t] : {std::pair{"q", &q}, std::pair{"k", &k}})
        TORCH_CHECK_VALUE(!(t->is_leaf() && t->requires_grad()), "c2rope.rotary_: ", name,
                          " is a leaf that requires grad and cannot be rotated in place (as with "
                          "torch's in-place ops); use c2rope.rotary or rotate a non-leaf");
    // The table gradients need q and k as they were, which the copy_ below overwrites.
    const bool tables = cos.requires_grad() || sin.requires_grad();
    const auto [q_new, k_new] = rotary_op().call(tables ? q.clone() : q, tables ? k.clone() : k, cos, sin);
    q.copy_(q_new);
    k.copy_(k_new);
}

void rotary_inplace_bump_versions(c10::DispatchKeySet ks, const at::Tensor &q, const at::Tensor &k,
                                  const at::Tensor &cos, const at::Tensor &sin) {
    {
        at::AutoDispatchBelowADInplaceOrView guard;
        rotary_inplace_op().redispatch(ks & c10::after_ADInplaceOrView_keyset, q, k, cos, sin);
    }
    q.unsafeGetTensorImpl()->bump_version();
    k.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

TORCH_LIBRARY_IMPL(c2rope, Autograd, m) { m.impl("rotary_", &rotary_inplace_autograd); }

TORCH_LIBRARY_IMPL(c2rope, ADInplaceOrView, m) { m.impl("rotary_", &rotary_inplace_bump_versions); }
