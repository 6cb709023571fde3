// Host emulation test of the CUDA kernels (no GPU needed; run by
// scripts/check_cuda_compile.sh).
//
// Each kernel body in csrc/cuda/*_kernel.cuh is a __host__ __device__ function of
// (block, thread) indices without shared memory or barriers. This program runs those
// exact bodies on the CPU over the grid the launcher's plan would use (and over a
// deliberately small grid, to exercise the grid-stride loops), then compares every
// output element bit for bit with a direct transcription of the formulas in
// csrc/include/c2rope.h, and checks that nothing outside the output's footprint was
// written. It covers the index math, the vector/scalar path choice, broadcasting,
// in-place operation and the half-precision conversions; it cannot cover what only a
// GPU shows (memory model, launch limits, device math library): benchmarks/gpu_check.sh
// does that on a GPU.
//
// Seed: C2ROPE_EMU_SEED (default random, printed).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <string>
#include <vector>

#include "cos_sin_kernel.cuh"
#include "mask_kernel.cuh"
#include "rotary_kernel.cuh"

using namespace c2rope_cuda;

namespace {

uint64_t g_rng = 0;
int g_failures = 0;
int g_checks = 0;

uint64_t next_u64() {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}
double uniform(double lo, double hi) { return lo + (hi - lo) * double(next_u64() >> 11) * 0x1p-53; }
int64_t randint(int64_t lo, int64_t hi) { return lo + int64_t(next_u64() % uint64_t(hi - lo + 1)); }

void fail(const std::string &what) {
    if (g_failures < 30) fprintf(stderr, "FAIL: %s\n", what.c_str());
    ++g_failures;
}

// A byte buffer with guard zones, 64-byte aligned at `data + offset_bytes`.
struct Buffer {
    std::vector<unsigned char> bytes;
    size_t offset = 0;
    unsigned char *base() { return bytes.data() + offset; }
};

const unsigned char kSentinel = 0xA7;

template <typename T> c2rope_dtype code_of();
template <> c2rope_dtype code_of<float>() { return C2ROPE_F32; }
template <> c2rope_dtype code_of<__half>() { return C2ROPE_F16; }
template <> c2rope_dtype code_of<__nv_bfloat16>() { return C2ROPE_BF16; }
template <> c2rope_dtype code_of<double>() { return C2ROPE_F64; }

template <typename T> const char *name_of();
template <> const char *name_of<float>() { return "f32"; }
template <> const char *name_of<__half>() { return "f16"; }
template <> const char *name_of<__nv_bfloat16>() { return "bf16"; }
template <> const char *name_of<double>() { return "f64"; }

template <typename T> T from_double(double x) {
    T out;
    round_to(static_cast<typename MathOf<T>::type>(x), out);
    return out;
}

// A strided 4-D (or 3-D, last size 1 unused) tensor view over a Buffer.
struct View {
    int64_t size[4];
    int64_t stride[4];
    int64_t elem_offset; // element offset of [0,0,0,0] inside the buffer (alignment tests)
    int64_t extent;      // elements spanned from the base
};

int64_t extent_of(const int64_t *size, const int64_t *stride, int n) {
    int64_t e = 1;
    for (int i = 0; i < n; ++i) e += (size[i] - 1) * stride[i];
    return e;
}

template <typename T>
void alloc(Buffer &buf, const View &v, bool random_fill) {
    const size_t guard = 64;
    const size_t n = size_t(v.elem_offset + v.extent) * sizeof(T) + 2 * guard;
    buf.bytes.assign(n + 64, kSentinel);
    // 64-byte align the guard's end, then step over the guard.
    const uintptr_t raw = reinterpret_cast<uintptr_t>(buf.bytes.data());
    buf.offset = size_t((64 - raw % 64) % 64) + guard;
    if (random_fill) {
        T *p = reinterpret_cast<T *>(buf.base());
        for (int64_t i = 0; i < v.elem_offset + v.extent; ++i) p[i] = from_double<T>(uniform(-2, 2));
    }
}

// Layout kinds for q/k and their outputs.
enum Layout { BHSD, BSHD, LAST_STRIDE_2, PADDED_ROWS };

View make_view(Layout layout, int64_t B, int64_t H, int64_t S, int64_t D, int64_t elem_offset) {
    View v;
    v.size[0] = B; v.size[1] = H; v.size[2] = S; v.size[3] = D;
    switch (layout) {
    case BHSD: v.stride[0] = H * S * D; v.stride[1] = S * D; v.stride[2] = D; v.stride[3] = 1; break;
    case BSHD: v.stride[0] = S * H * D; v.stride[1] = D; v.stride[2] = H * D; v.stride[3] = 1; break;
    case LAST_STRIDE_2:
        v.stride[0] = H * S * D * 2; v.stride[1] = S * D * 2; v.stride[2] = D * 2; v.stride[3] = 2; break;
    case PADDED_ROWS: {
        const int64_t Dp = D + 3;
        v.stride[0] = H * S * Dp; v.stride[1] = S * Dp; v.stride[2] = Dp; v.stride[3] = 1; break;
    }
    }
    v.elem_offset = elem_offset;
    v.extent = (B && H && S && D) ? extent_of(v.size, v.stride, 4) : 0;
    return v;
}

int64_t offset_of(const View &v, int64_t a, int64_t b, int64_t c, int64_t d) {
    return v.elem_offset + a * v.stride[0] + b * v.stride[1] + c * v.stride[2] + d * v.stride[3];
}

// Marks the elements a view covers.
std::vector<char> footprint(const View &v, size_t total) {
    std::vector<char> mark(total, 0);
    for (int64_t a = 0; a < v.size[0]; ++a)
        for (int64_t b = 0; b < v.size[1]; ++b)
            for (int64_t c = 0; c < v.size[2]; ++c)
                for (int64_t d = 0; d < v.size[3]; ++d) mark[size_t(offset_of(v, a, b, c, d))] = 1;
    return mark;
}

// ------------------------------------------------------------------ rotary

struct RotaryCase {
    int64_t B, S, D, R, Hq, Hk;
    Layout in_layout, out_layout;
    int64_t in_offset, out_offset;
    bool cs_broadcast;
    int64_t cs_last_stride; // 1 or 2
    bool in_place;
    c2rope_direction direction;
    int64_t grid_override;  // 0: the plan's grid
    int expect_vec;         // 0: don't care, else the plan's vec must equal it
};

template <typename T, typename CT>
struct RotaryEmu {
    const c2rope_rotary_params &p;
    const RotaryPlan &plan;
    int64_t blocks;
    template <typename T2, typename CT2, int V>
    c2rope_status run() const {
        for (int64_t blk = 0; blk < blocks; ++blk)
            for (int z = 0; z < plan.tz; ++z)
                for (int y = 0; y < plan.ty; ++y)
                    for (int x = 0; x < plan.tx; ++x)
                        rotary_thread<T2, CT2, V>(p, plan.cs_vec, blk, blocks, x, y, z, plan.tx,
                                                  plan.ty, plan.tz);
        return C2ROPE_OK;
    }
};

template <typename T, typename CT>
void rotary_case(const RotaryCase &c) {
    using M = typename MathOf<T>::type;
    char label[256];
    snprintf(label, sizeof label,
             "rotary %s/%s B%lld S%lld D%lld R%lld Hq%lld Hk%lld layout %d->%d off %lld/%lld bc%d cs%lld inpl%d dir%d grid%lld",
             name_of<T>(), name_of<CT>(), (long long)c.B, (long long)c.S, (long long)c.D, (long long)c.R,
             (long long)c.Hq, (long long)c.Hk, int(c.in_layout), int(c.out_layout), (long long)c.in_offset,
             (long long)c.out_offset, int(c.cs_broadcast), (long long)c.cs_last_stride, int(c.in_place),
             int(c.direction), (long long)c.grid_override);
    const int64_t Bc = c.cs_broadcast ? 1 : c.B;
    View vq = make_view(c.in_layout, c.B, c.Hq, c.S, c.D, c.in_offset);
    View vk = make_view(c.in_layout, c.B, c.Hk, c.S, c.D, c.in_offset);
    View vqo = c.in_place ? vq : make_view(c.out_layout, c.B, c.Hq, c.S, c.D, c.out_offset);
    View vko = c.in_place ? vk : make_view(c.out_layout, c.B, c.Hk, c.S, c.D, c.out_offset);
    // cos/sin [Bc, S, R], last stride 1 or 2
    View vcs;
    vcs.size[0] = Bc; vcs.size[1] = c.S; vcs.size[2] = c.R; vcs.size[3] = 1;
    vcs.stride[2] = c.cs_last_stride; vcs.stride[1] = c.R * c.cs_last_stride;
    vcs.stride[0] = c.S * vcs.stride[1]; vcs.stride[3] = 1;
    vcs.elem_offset = 0;
    vcs.extent = extent_of(vcs.size, vcs.stride, 3);

    Buffer bq, bk, bqo, bko, bcos, bsin;
    alloc<T>(bq, vq, true);
    alloc<T>(bk, vk, true);
    if (!c.in_place) {
        alloc<T>(bqo, vqo, false);
        alloc<T>(bko, vko, false);
    }
    alloc<CT>(bcos, vcs, true);
    alloc<CT>(bsin, vcs, true);
    // Snapshots of the inputs (in place overwrites them).
    const Buffer q0 = bq, k0 = bk;

    T *q = reinterpret_cast<T *>(bq.base()) + vq.elem_offset;
    T *k = reinterpret_cast<T *>(bk.base()) + vk.elem_offset;
    T *qo = c.in_place ? q : reinterpret_cast<T *>(bqo.base()) + vqo.elem_offset;
    T *ko = c.in_place ? k : reinterpret_cast<T *>(bko.base()) + vko.elem_offset;

    c2rope_rotary_params p{};
    p.batch = c.B; p.seq = c.S; p.head_dim = c.D; p.rot_dim = c.R;
    p.n_heads_q = c.Hq; p.n_heads_k = c.Hk;
    p.q = q; p.k = k; p.q_out = qo; p.k_out = ko;
    for (int i = 0; i < 4; ++i) {
        p.q_stride[i] = vq.stride[i]; p.k_stride[i] = vk.stride[i];
        p.q_out_stride[i] = vqo.stride[i]; p.k_out_stride[i] = vko.stride[i];
    }
    p.cos = bcos.base(); p.sin = bsin.base();
    p.cs_stride[0] = c.cs_broadcast ? 0 : vcs.stride[0];
    p.cs_stride[1] = vcs.stride[1];
    p.cs_stride[2] = vcs.stride[2];
    p.dtype = code_of<T>(); p.cs_dtype = code_of<CT>();
    p.direction = c.direction;

    ++g_checks;
    if (rotary_validate(&p) != C2ROPE_OK) { fail(std::string(label) + ": validate refused"); return; }
    if (!rotary_has_work(&p)) return;
    const RotaryPlan plan = rotary_plan(&p);
    if (c.expect_vec && plan.vec != c.expect_vec) {
        fail(std::string(label) + ": plan vec " + std::to_string(plan.vec) + " expected " +
             std::to_string(c.expect_vec));
    }
    if (plan.tx * plan.ty * plan.tz > kRotaryBlockThreads || plan.tx < 1 || plan.ty < 1 || plan.tz < 1 ||
        plan.tz > kMaxBlockZ || plan.blocks < 1 || plan.blocks > kMaxBlocks)
        fail(std::string(label) + ": bad block shape");
    RotaryEmu<T, CT> emu{p, plan, c.grid_override ? c.grid_override : plan.blocks};
    rotary_dispatch(p, plan, emu);

    // Reference, straight from c2rope.h.
    const CT *cosp = reinterpret_cast<const CT *>(bcos.base());
    const CT *sinp = reinterpret_cast<const CT *>(bsin.base());
    const int64_t h = c.R / 2;
    const bool bwd = c.direction == C2ROPE_BACKWARD;
    auto check_tensor = [&](const Buffer &in0, const View &vin, const Buffer &outbuf, const View &vout,
                            int64_t H, const char *which) {
        const T *in = reinterpret_cast<const T *>(const_cast<Buffer &>(in0).base());
        const T *out = reinterpret_cast<const T *>(const_cast<Buffer &>(outbuf).base());
        int bad = 0;
        for (int64_t b = 0; b < c.B; ++b)
            for (int64_t hd = 0; hd < H; ++hd)
                for (int64_t s = 0; s < c.S; ++s)
                    for (int64_t i = 0; i < c.D; ++i) {
                        const int64_t bc = c.cs_broadcast ? 0 : b;
                        auto X = [&](int64_t j) { return static_cast<M>(widen(in[offset_of(vin, b, hd, s, j)])); };
                        auto C = [&](int64_t j) { return static_cast<M>(widen(cosp[bc * vcs.stride[0] + s * vcs.stride[1] + j * vcs.stride[2]])); };
                        auto Sn = [&](int64_t j) { return static_cast<M>(widen(sinp[bc * vcs.stride[0] + s * vcs.stride[1] + j * vcs.stride[2]])); };
                        M y;
                        if (i >= c.R) y = X(i);
                        else if (i < h) y = bwd ? X(i) * C(i) + X(i + h) * Sn(i + h) : X(i) * C(i) + X(i + h) * (-Sn(i));
                        else y = bwd ? X(i) * C(i) + X(i - h) * (-Sn(i - h)) : X(i) * C(i) + X(i - h) * Sn(i);
                        T expect;
                        round_to(y, expect);
                        const T got = out[offset_of(vout, b, hd, s, i)];
                        if (memcmp(&expect, &got, sizeof(T)) != 0 && bad++ < 3) {
                            char msg[512];
                            snprintf(msg, sizeof msg, "%s: %s[%lld,%lld,%lld,%lld] got %.9g expected %.9g", label, which,
                                     (long long)b, (long long)hd, (long long)s, (long long)i,
                                     double(widen(got)), double(widen(expect)));
                            fail(msg);
                        }
                    }
        // Nothing outside the output's footprint changed (guards, gaps between rows).
        const size_t total = (outbuf.bytes.size() - outbuf.offset) / sizeof(T);
        const std::vector<char> mark = footprint(vout, total);
        const unsigned char *ob = const_cast<Buffer &>(outbuf).base();
        const unsigned char *ib = const_cast<Buffer &>(in0).base();
        for (size_t e = 0; e < total; ++e) {
            if (mark[e]) continue;
            const unsigned char *expect_bytes = c.in_place ? ib + e * sizeof(T) : nullptr;
            for (size_t byte = 0; byte < sizeof(T); ++byte) {
                const unsigned char want = expect_bytes ? expect_bytes[byte] : kSentinel;
                if (ob[e * sizeof(T) + byte] != want) {
                    fail(std::string(label) + ": " + which + " wrote outside its footprint at element " + std::to_string(e));
                    return;
                }
            }
        }
        for (size_t g = 0; g < outbuf.offset; ++g)
            if (outbuf.bytes[g] != kSentinel && !c.in_place) {
                fail(std::string(label) + ": " + which + " wrote before its buffer");
                return;
            }
    };
    if (c.Hq) check_tensor(q0, vq, c.in_place ? bq : bqo, vqo, c.Hq, "q");
    if (c.Hk) check_tensor(k0, vk, c.in_place ? bk : bko, vko, c.Hk, "k");
}

template <typename T, typename CT>
void rotary_suite() {
    const int V = int(16 / sizeof(T));
    // Vector path: contiguous BHSD, BSHD views, GQA, partial rotary, broadcast, in place.
    rotary_case<T, CT>({2, 5, 32, 32, 4, 2, BHSD, BHSD, 0, 0, false, 1, false, C2ROPE_FORWARD, 0, V});
    rotary_case<T, CT>({2, 7, 64, 64, 6, 2, BSHD, BSHD, 0, 0, true, 1, false, C2ROPE_BACKWARD, 0, V});
    rotary_case<T, CT>({1, 9, 48, 32, 5, 1, BSHD, BHSD, 0, 0, true, 1, false, C2ROPE_FORWARD, 3, V});
    rotary_case<T, CT>({3, 4, 32, 16, 3, 3, BHSD, BHSD, 0, 0, false, 1, true, C2ROPE_FORWARD, 0, V});
    rotary_case<T, CT>({2, 3, 128, 128, 32, 8, BSHD, BSHD, 0, 0, true, 1, false, C2ROPE_FORWARD, 0, V});
    rotary_case<T, CT>({2, 3, 128, 128, 33, 7, BSHD, BSHD, 0, 0, true, 1, true, C2ROPE_BACKWARD, 2, V});
    // Decode step (S = 1) and only one of q / k.
    rotary_case<T, CT>({4, 1, 64, 64, 8, 0, BSHD, BSHD, 0, 0, false, 1, false, C2ROPE_FORWARD, 0, V});
    rotary_case<T, CT>({2, 6, 64, 64, 0, 3, BHSD, BHSD, 0, 0, false, 1, false, C2ROPE_BACKWARD, 0, V});
    // cos/sin not vector-readable: the q path stays vectorised.
    rotary_case<T, CT>({2, 5, 32, 32, 3, 1, BHSD, BHSD, 0, 0, false, 2, false, C2ROPE_FORWARD, 0, V});
    // Scalar path: odd half, pass-through not a multiple, last stride 2, misaligned.
    rotary_case<T, CT>({2, 5, 10, 6, 3, 2, BHSD, BHSD, 0, 0, false, 1, false, C2ROPE_FORWARD, 0, 1});
    rotary_case<T, CT>({2, 4, 34, 32, 3, 1, BHSD, BSHD, 0, 0, true, 1, false, C2ROPE_BACKWARD, 0, V == 2 ? 2 : 1});
    rotary_case<T, CT>({2, 5, 16, 16, 2, 2, LAST_STRIDE_2, BHSD, 0, 0, false, 2, false, C2ROPE_FORWARD, 0, 1});
    rotary_case<T, CT>({1, 6, 32, 32, 2, 2, BHSD, BHSD, 1, 0, false, 1, false, C2ROPE_FORWARD, 0, 1});
    rotary_case<T, CT>({2, 3, 32, 32, 2, 1, PADDED_ROWS, BHSD, 0, 0, false, 1, true, C2ROPE_BACKWARD, 0, 1});
    rotary_case<T, CT>({2, 3, 12, 2, 3, 2, LAST_STRIDE_2, LAST_STRIDE_2, 0, 0, true, 1, true, C2ROPE_FORWARD, 1, 1});
    // Rows of one task and one head: many tokens per block (blockDim.z is capped at 64).
    rotary_case<T, CT>({2, 150, 2, 2, 1, 0, BHSD, BHSD, 0, 0, false, 1, false, C2ROPE_FORWARD, 0, 1});
    // Head dim beyond one block of tasks (scalar: D/2 > 256 tasks).
    rotary_case<T, CT>({1, 2, 1030, 1024, 2, 1, BHSD, BHSD, 0, 1, false, 1, false, C2ROPE_FORWARD, 0, 1});
    // Random small shapes.
    for (int t = 0; t < 30; ++t) {
        const int64_t D = 2 * randint(1, 40);
        const int64_t R = 2 * randint(1, D / 2);
        const Layout lin = Layout(randint(0, 3)), lout = Layout(randint(0, 3));
        rotary_case<T, CT>({randint(1, 3), randint(1, 9), D, R, randint(0, 5), randint(1, 3), lin, lout,
                            randint(0, 1), randint(0, 1), randint(0, 1) != 0, randint(1, 2),
                            randint(0, 1) != 0, c2rope_direction(randint(0, 1)), randint(0, 3), 0});
    }
}

template <typename T>
void rotary_suites() {
    rotary_suite<T, float>();
    rotary_suite<T, __half>();
    rotary_suite<T, __nv_bfloat16>();
    rotary_suite<T, double>();
}

void rotary_validation() {
    c2rope_rotary_params p{};
    ++g_checks;
    if (rotary_validate(nullptr) != C2ROPE_ERR_INVALID_ARGUMENT) fail("rotary: null params accepted");
    float dummy[16], table[16];  // q in place; the tables elsewhere (an output may not overlap them)
    p.batch = 1; p.seq = 1; p.head_dim = 4; p.rot_dim = 4; p.n_heads_q = 1; p.n_heads_k = 0;
    p.q = dummy; p.q_out = dummy; p.cos = table; p.sin = table;
    p.q_stride[3] = p.q_out_stride[3] = p.cs_stride[2] = 1;
    if (rotary_validate(&p) != C2ROPE_OK) fail("rotary: valid struct refused");
    c2rope_rotary_params b = p; b.rot_dim = 3;
    if (rotary_validate(&b) != C2ROPE_ERR_INVALID_ARGUMENT) fail("rotary: odd rot_dim accepted");
    b = p; b.rot_dim = 6;
    if (rotary_validate(&b) != C2ROPE_ERR_INVALID_ARGUMENT) fail("rotary: rot_dim > head_dim accepted");
    b = p; b.q_stride[1] = -1;
    if (rotary_validate(&b) != C2ROPE_ERR_INVALID_ARGUMENT) fail("rotary: negative stride accepted");
    b = p; b.cos = nullptr;
    if (rotary_validate(&b) != C2ROPE_ERR_INVALID_ARGUMENT) fail("rotary: null cos accepted");
    b = p; b.dtype = C2ROPE_BOOL;
    if (rotary_validate(&b) != C2ROPE_ERR_UNSUPPORTED_DTYPE) fail("rotary: bool dtype accepted");
    b = p; b.direction = c2rope_direction(7);
    if (rotary_validate(&b) != C2ROPE_ERR_INVALID_ARGUMENT) fail("rotary: bad direction accepted");
    b = p; b.q = nullptr;
    if (rotary_validate(&b) != C2ROPE_ERR_INVALID_ARGUMENT) fail("rotary: null q with heads accepted");
    b = p; b.q = b.q_out = table;
    if (rotary_validate(&b) != C2ROPE_ERR_INVALID_ARGUMENT) fail("rotary: q written in place over cos accepted");
    b = p; b.q_out = dummy + 2;
    if (rotary_validate(&b) != C2ROPE_ERR_INVALID_ARGUMENT) fail("rotary: q_out overlapping q accepted");
    // c2rope.h: zero-sized problems are valid no-ops whatever their pointers (the CPU
    // kernel's rule; torch's empty tensors have null data).
    b = p; b.batch = 0; b.q = nullptr;
    if (rotary_validate(&b) != C2ROPE_OK || rotary_has_work(&b)) fail("rotary: empty problem with null q refused");
    b = p; b.seq = 0; b.cos = nullptr;
    if (rotary_validate(&b) != C2ROPE_OK || rotary_has_work(&b)) fail("rotary: empty problem not a no-op");
}

// ------------------------------------------------------------------ cos/sin

struct CosSinEmu {
    const c2rope_cos_sin_params &p;
    int64_t threads_total;
    template <typename OT>
    c2rope_status run() const {
        for (int64_t t = 0; t < threads_total; ++t) cos_sin_thread<OT>(p, t, threads_total);
        return C2ROPE_OK;
    }
};

template <typename OT>
void cos_sin_case(int64_t B, int64_t S, int64_t A, int64_t h, bool transposed_pos, bool bad_axis,
                  int64_t grid_override) {
    using M = typename MathOf<OT>::type;
    char label[160];
    snprintf(label, sizeof label, "cos_sin %s B%lld S%lld A%lld h%lld T%d bad%d grid%lld", name_of<OT>(),
             (long long)B, (long long)S, (long long)A, (long long)h, int(transposed_pos), int(bad_axis),
             (long long)grid_override);
    std::vector<float> pos(static_cast<size_t>(B * S * A)), inv(static_cast<size_t>(h));
    std::vector<int32_t> axis(static_cast<size_t>(h));
    for (auto &x : pos) x = float(randint(-600, 600)) + (randint(0, 1) ? 0.5f : 0.0f);
    for (int64_t k = 0; k < h; ++k) inv[size_t(k)] = powf(10000.0f, -float(2 * k) / float(2 * h));
    for (auto &a : axis) a = int32_t(randint(0, A - 1));
    const int64_t bad_slot = bad_axis ? randint(0, h - 1) : -1;
    if (bad_axis) axis[size_t(bad_slot)] = int32_t(A + randint(0, 2));
    c2rope_cos_sin_params p{};
    p.batch = B; p.seq = S; p.n_axes = A; p.half_dim = h;
    p.positions = pos.data();
    // positions stored [B, A, S] and viewed as [B, S, A] when transposed
    if (transposed_pos) { p.pos_stride[0] = S * A; p.pos_stride[1] = 1; p.pos_stride[2] = S; }
    else { p.pos_stride[0] = S * A; p.pos_stride[1] = A; p.pos_stride[2] = 1; }
    p.inv_freq = inv.data();
    p.axis = axis.data();
    p.attention_scaling = randint(0, 1) ? 1.0f : float(uniform(0.5, 1.5));
    p.out_dtype = code_of<OT>();
    std::vector<OT> cos_out(size_t(B * S * 2 * h)), sin_out(size_t(B * S * 2 * h));
    memset(static_cast<void *>(cos_out.data()), kSentinel, cos_out.size() * sizeof(OT));
    memset(static_cast<void *>(sin_out.data()), kSentinel, sin_out.size() * sizeof(OT));
    p.cos = cos_out.data(); p.sin = sin_out.data();
    ++g_checks;
    if (cos_sin_validate(&p) != C2ROPE_OK) { fail(std::string(label) + ": refused"); return; }
    const int64_t blocks = grid_override ? grid_override : cos_sin_blocks(&p);
    CosSinEmu emu{p, blocks * kBlockThreads};
    cos_sin_dispatch(p, emu);
    int bad = 0;
    for (int64_t b = 0; b < B; ++b)
        for (int64_t s = 0; s < S; ++s)
            for (int64_t k = 0; k < h; ++k) {
                OT ec, es;
                if (k == bad_slot) {
                    round_to(static_cast<M>(NAN), ec);
                    es = ec;
                } else {
                    const float x = pos[size_t(b * p.pos_stride[0] + s * p.pos_stride[1] + axis[size_t(k)] * p.pos_stride[2])];
                    const float angle = x * inv[size_t(k)];
                    if (sizeof(OT) == 8) {
                        round_to(static_cast<M>(cos(double(angle)) * double(p.attention_scaling)), ec);
                        round_to(static_cast<M>(sin(double(angle)) * double(p.attention_scaling)), es);
                    } else {
                        round_to(static_cast<M>(cosf(angle) * p.attention_scaling), ec);
                        round_to(static_cast<M>(sinf(angle) * p.attention_scaling), es);
                    }
                }
                const int64_t o = (b * S + s) * 2 * h + k;
                for (int64_t off : {o, o + h}) {
                    const bool ok = memcmp(&cos_out[size_t(off)], &ec, sizeof(OT)) == 0 &&
                                    memcmp(&sin_out[size_t(off)], &es, sizeof(OT)) == 0;
                    if (!ok && bad++ < 3) fail(std::string(label) + ": mismatch at flat " + std::to_string(off));
                }
            }
}

void cos_sin_suite() {
    for (int t = 0; t < 3; ++t) {
        const int64_t B = randint(1, 3), S = randint(1, 40), A = randint(1, 3), h = randint(1, 70);
        const bool tr = randint(0, 1) != 0;
        const int64_t grid = randint(0, 2);
        cos_sin_case<float>(B, S, A, h, tr, false, grid);
        cos_sin_case<__half>(B, S, A, h, tr, false, grid);
        cos_sin_case<__nv_bfloat16>(B, S, A, h, tr, false, grid);
        cos_sin_case<double>(B, S, A, h, tr, false, grid);
    }
    cos_sin_case<float>(2, 9, 3, 16, false, true, 0);
    cos_sin_case<__nv_bfloat16>(1, 5, 1, 8, true, true, 1);
    ++g_checks;
    c2rope_cos_sin_params p{};
    p.n_axes = 0;
    if (cos_sin_validate(&p) != C2ROPE_ERR_INVALID_ARGUMENT) fail("cos_sin: n_axes 0 accepted");
    p.n_axes = 1; p.out_dtype = C2ROPE_BOOL;
    if (cos_sin_validate(&p) != C2ROPE_ERR_UNSUPPORTED_DTYPE) fail("cos_sin: bool output accepted");
    p.out_dtype = C2ROPE_F32; p.half_dim = 4;
    if (cos_sin_validate(&p) != C2ROPE_ERR_INVALID_ARGUMENT) fail("cos_sin: null inv_freq accepted");
}

// ------------------------------------------------------------------ mask

template <int V_UNUSED = 0>
struct MaskEmu {
    const c2rope_mask_params &p;
    const MaskPlan &plan;
    int64_t blocks;
    template <typename U, int V>
    c2rope_status run(U allow, U deny) const {
        for (int64_t blk = 0; blk < blocks; ++blk)
            for (int t = 0; t < plan.threads; ++t)
                mask_thread<U, V>(p, allow, deny, blk, blocks, t, plan.threads);
        return C2ROPE_OK;
    }
};

bool mask_allowed_ref(const c2rope_mask_params &p, int64_t b, int64_t i, int64_t j) {
    const int64_t K = p.kv_len;
    const uint8_t *valid = p.valid + b * K;
    const int32_t *img = p.image_id + b * K;
    const int32_t *ring = p.ring + b * K;
    if (!valid[i]) return j == i;
    if (!valid[j]) return false;
    if (img[i] >= 0 && img[j] == img[i]) {
        if (p.mode == C2ROPE_MASK_OUTWARD) return ring[j] <= ring[i];
        if (p.mode == C2ROPE_MASK_INWARD) return ring[j] >= ring[i];
    }
    return j <= i;
}

void mask_case(c2rope_dtype dtype, int64_t B, int64_t K, int64_t q_offset, int64_t Q, c2rope_mask_mode mode,
               int64_t out_elem_offset, int64_t grid_override, int expect_vec) {
    char label[160];
    snprintf(label, sizeof label, "mask dtype%d B%lld K%lld off%lld Q%lld mode%d outoff%lld grid%lld", int(dtype),
             (long long)B, (long long)K, (long long)q_offset, (long long)Q, int(mode),
             (long long)out_elem_offset, (long long)grid_override);
    // Layout per batch row: left or right padding, text, a few images of random grids.
    std::vector<uint8_t> valid(size_t(B * K), 1);
    std::vector<int32_t> image(size_t(B * K), -1), ring(size_t(B * K), 0);
    for (int64_t b = 0; b < B; ++b) {
        const int64_t pad = randint(0, K / 4);
        const bool left = randint(0, 1) != 0;
        for (int64_t j = 0; j < pad; ++j) valid[size_t(b * K + (left ? j : K - 1 - j))] = uint8_t(randint(0, 1) ? 0 : 0);
        int64_t j = left ? pad : 0;
        const int64_t end = left ? K : K - pad;
        int32_t id = 0;
        while (j < end) {
            j += randint(0, 6); // text
            const int64_t H = randint(1, 6), W = randint(1, 6);
            if (j + H * W > end) break;
            for (int64_t r = 0; r < H; ++r)
                for (int64_t c = 0; c < W; ++c) {
                    const double cx = double(c) - (W - 1) / 2.0, cy = (H - 1) / 2.0 - double(r);
                    const double rr = fmax(fabs(cx), fabs(cy));
                    image[size_t(b * K + j)] = id;
                    ring[size_t(b * K + j)] = int32_t(floor(rr)); // a rank-like value; any ints work
                    ++j;
                }
            ++id;
        }
        // Some valid flags as other non-zero bytes (uint8 tensors from Python).
        for (int64_t x = 0; x < K; ++x)
            if (valid[size_t(b * K + x)] && randint(0, 7) == 0) valid[size_t(b * K + x)] = 3;
    }
    MaskFormat f{};
    mask_format(dtype, &f);
    const size_t n_out = size_t(B * Q * K);
    std::vector<unsigned char> out_bytes((n_out + size_t(out_elem_offset)) * size_t(f.elem_size) + 128, kSentinel);
    uintptr_t raw = reinterpret_cast<uintptr_t>(out_bytes.data());
    unsigned char *out = out_bytes.data() + (64 - raw % 64) % 64 + size_t(out_elem_offset) * size_t(f.elem_size);
    c2rope_mask_params p{};
    p.batch = B; p.q_len = Q; p.kv_len = K; p.q_offset = q_offset;
    p.valid = valid.data(); p.image_id = image.data(); p.ring = ring.data();
    p.mode = mode; p.out_dtype = dtype; p.out = out;
    ++g_checks;
    if (mask_validate(&p) != C2ROPE_OK) { fail(std::string(label) + ": refused"); return; }
    if (!mask_has_work(&p)) return;
    const MaskPlan plan = mask_plan(&p);
    if (expect_vec && plan.vec != expect_vec)
        fail(std::string(label) + ": plan vec " + std::to_string(plan.vec) + " expected " + std::to_string(expect_vec));
    MaskEmu<> emu{p, plan, grid_override ? grid_override : plan.blocks};
    mask_dispatch(p, plan, emu);
    int bad = 0;
    for (int64_t b = 0; b < B; ++b)
        for (int64_t r = 0; r < Q; ++r)
            for (int64_t j = 0; j < K; ++j) {
                const uint32_t want = mask_allowed_ref(p, b, q_offset + r, j) ? f.allow : f.deny;
                uint32_t got = 0;
                memcpy(&got, out + size_t((b * Q + r) * K + j) * size_t(f.elem_size), size_t(f.elem_size));
                if (got != want && bad++ < 3)
                    fail(std::string(label) + ": [" + std::to_string(b) + "," + std::to_string(r) + "," +
                         std::to_string(j) + "] got " + std::to_string(got) + " want " + std::to_string(want));
            }
    const unsigned char *end = out + n_out * size_t(f.elem_size);
    for (const unsigned char *g = out_bytes.data(); g < out; ++g)
        if (*g != kSentinel) { fail(std::string(label) + ": wrote before the output"); break; }
    for (const unsigned char *g = end; g < out_bytes.data() + out_bytes.size(); ++g)
        if (*g != kSentinel) { fail(std::string(label) + ": wrote past the output"); break; }
}

void mask_suite() {
    const c2rope_dtype dtypes[] = {C2ROPE_BOOL, C2ROPE_F32, C2ROPE_F16, C2ROPE_BF16};
    const int vecs[] = {16, 4, 8, 8};
    for (int d = 0; d < 4; ++d) {
        for (int mode = 0; mode < 3; ++mode) {
            mask_case(dtypes[d], 2, 96, 0, 96, c2rope_mask_mode(mode), 0, 0, vecs[d]);
            mask_case(dtypes[d], 3, 80, 17, 40, c2rope_mask_mode(mode), 0, 2, vecs[d]);
            mask_case(dtypes[d], 2, 77, 0, 77, c2rope_mask_mode(mode), 0, 0, 1);  // K not a multiple
            mask_case(dtypes[d], 1, 64, 63, 1, c2rope_mask_mode(mode), 0, 0, 0);  // decode step
            mask_case(dtypes[d], 2, 64, 3, 50, c2rope_mask_mode(mode), 1, 0, 1);  // misaligned out
            mask_case(dtypes[d], 1, 8192 + 16, 8000, 37, c2rope_mask_mode(mode), 0, 0, vecs[d]); // several key chunks
        }
        for (int t = 0; t < 3; ++t) {
            const int64_t K = randint(1, 150), off = randint(0, K - 1), Q = randint(1, K - off);
            mask_case(dtypes[d], randint(1, 3), K, off, Q, c2rope_mask_mode(randint(0, 2)), randint(0, 1),
                      randint(0, 3), 0);
        }
    }
    ++g_checks;
    c2rope_mask_params p{};
    p.batch = 1; p.q_len = 2; p.kv_len = 4; p.q_offset = 3;
    if (mask_validate(&p) != C2ROPE_ERR_INVALID_ARGUMENT) fail("mask: q_offset + Q > K accepted");
    p.q_offset = 0; p.out_dtype = C2ROPE_F64;
    if (mask_validate(&p) != C2ROPE_ERR_UNSUPPORTED_DTYPE) fail("mask: f64 accepted");
    p.out_dtype = C2ROPE_BOOL; p.mode = c2rope_mask_mode(5);
    if (mask_validate(&p) != C2ROPE_ERR_INVALID_ARGUMENT) fail("mask: bad mode accepted");
    p.mode = C2ROPE_MASK_OUTWARD;
    if (mask_validate(&p) != C2ROPE_ERR_INVALID_ARGUMENT) fail("mask: null pointers accepted");
}

}  // namespace

int main() {
    const char *env = getenv("C2ROPE_EMU_SEED");
    const uint64_t seed = env ? strtoull(env, nullptr, 10) : (uint64_t(time(nullptr)) ^ uint64_t(clock()));
    g_rng = seed | 1;
    printf("host emulation of the CUDA kernels, C2ROPE_EMU_SEED=%llu\n", (unsigned long long)seed);
    rotary_validation();
    rotary_suites<float>();
    rotary_suites<__half>();
    rotary_suites<__nv_bfloat16>();
    rotary_suites<double>();
    cos_sin_suite();
    mask_suite();
    printf("%d cases, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
