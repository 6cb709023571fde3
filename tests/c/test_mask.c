/*
 * test_mask.c -- c2rope_chebyshev_mask_cpu against a naive per-element reference.
 *
 * Random layouts (contiguous images, which take the fast paths, and scattered image
 * ids, which take the general one), padding, every mode and output dtype, query
 * windows; plus parameter validation. Seeded from the clock unless C2ROPE_TEST_SEED
 * is set; the seed is printed so a failure can be replayed. Run it through
 * tests/c/run_sanitized.sh (ASan + UBSan).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "c2rope.h"

static uint64_t rng_state;

static uint32_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ull) >> 32);
}

static int64_t rnd_range(int64_t lo, int64_t hi) { /* inclusive */
    return lo + (int64_t)(rnd() % (uint32_t)(hi - lo + 1));
}

static int failures = 0;

#define CHECK(cond, ...)                                                              \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                             \
            fprintf(stderr, "\n");                                                    \
            ++failures;                                                               \
        }                                                                             \
    } while (0)

/* docs/design.md §5, one element at a time. */
static int ref_allowed(const uint8_t *valid, const int32_t *image_id, const int32_t *ring, int64_t i,
                       int64_t j, c2rope_mask_mode mode) {
    if (!valid[i]) return j == i;
    if (!valid[j]) return 0;
    if (image_id[i] >= 0 && image_id[j] == image_id[i]) {
        if (mode == C2ROPE_MASK_OUTWARD) return ring[j] <= ring[i];
        if (mode == C2ROPE_MASK_INWARD) return ring[j] >= ring[i];
    }
    return j <= i;
}

static int elsize_of(c2rope_dtype t) { return t == C2ROPE_BOOL ? 1 : t == C2ROPE_F32 ? 4 : 2; }

static uint32_t pattern(c2rope_dtype t, int allowed) {
    if (t == C2ROPE_BOOL) return allowed ? 1u : 0u;
    if (allowed) return 0u;
    return t == C2ROPE_F32 ? 0xFF7FFFFFu : t == C2ROPE_F16 ? 0xFBFFu : 0xFF7Fu;
}

static uint32_t load(const void *out, int elsize, int64_t index) {
    if (elsize == 1) return ((const uint8_t *)out)[index];
    if (elsize == 2) return ((const uint16_t *)out)[index];
    return ((const uint32_t *)out)[index];
}

/* Fill one batch row with text, images of random grids and padding. `scattered`
 * reuses image ids across runs (the kernel's general path). */
static void random_row(uint8_t *valid, int32_t *image_id, int32_t *ring, int64_t K, int scattered) {
    for (int64_t j = 0; j < K; ++j) {
        valid[j] = 1;
        image_id[j] = -1;
        ring[j] = (int32_t)rnd_range(-3, 3); /* text rings must never be read */
    }
    int32_t next_id = 0;
    int64_t pos = rnd_range(0, 3);
    while (pos < K) {
        const int64_t h = rnd_range(1, 6), w = rnd_range(1, 6);
        if (pos + h * w > K) break;
        const int32_t id = scattered ? (int32_t)rnd_range(0, 1) : next_id++;
        for (int64_t t = 0; t < h * w; ++t) {
            const int64_t r = t / w, c = t % w;
            const int64_t dx = 2 * c - (w - 1), dy = (h - 1) - 2 * r;
            const int64_t ax = dx < 0 ? -dx : dx, ay = dy < 0 ? -dy : dy;
            image_id[pos + t] = id;
            ring[pos + t] = (int32_t)((ax > ay ? ax : ay) / 2);
        }
        pos += h * w + rnd_range(0, 4);
    }
    const int kind = (int)rnd_range(0, 3); /* none, left, right, scattered holes */
    const int64_t pad = rnd_range(0, K / 3);
    for (int64_t j = 0; j < K; ++j) {
        if ((kind == 1 && j < pad) || (kind == 2 && j >= K - pad) || (kind == 3 && rnd() % 7 == 0)) {
            valid[j] = 0;
        }
    }
}

static void run_case(int64_t B, int64_t K, int scattered) {
    uint8_t *valid = malloc((size_t)(B * K) + 1);
    int32_t *image_id = malloc(sizeof(int32_t) * (size_t)(B * K) + 4);
    int32_t *ring = malloc(sizeof(int32_t) * (size_t)(B * K) + 4);
    for (int64_t b = 0; b < B; ++b) random_row(valid + b * K, image_id + b * K, ring + b * K, K, scattered);

    const c2rope_dtype dtypes[] = {C2ROPE_BOOL, C2ROPE_F32, C2ROPE_F16, C2ROPE_BF16};
    for (int mode = 0; mode < 3; ++mode) {
        for (int d = 0; d < 4; ++d) {
            const int64_t q_offset = rnd_range(0, K);
            const int64_t Q = rnd_range(0, K - q_offset);
            const int es = elsize_of(dtypes[d]);
            const size_t bytes = (size_t)(B * Q * K) * (size_t)es;
            uint8_t *out = malloc(bytes + 1);
            memset(out, 0xA5, bytes + 1); /* a byte pattern no element may keep */
            c2rope_mask_params p = {B, Q, K, q_offset, valid, image_id, ring,
                                    (c2rope_mask_mode)mode, dtypes[d], out};
            CHECK(c2rope_chebyshev_mask_cpu(&p) == C2ROPE_OK, "B=%lld K=%lld", (long long)B, (long long)K);
            int64_t bad = 0;
            for (int64_t b = 0; b < B; ++b)
                for (int64_t qi = 0; qi < Q; ++qi)
                    for (int64_t j = 0; j < K; ++j) {
                        const int a = ref_allowed(valid + b * K, image_id + b * K, ring + b * K, q_offset + qi, j,
                                                  (c2rope_mask_mode)mode);
                        bad += load(out, es, (b * Q + qi) * K + j) != pattern(dtypes[d], a);
                    }
            CHECK(bad == 0, "%lld wrong elements: B=%lld K=%lld Q=%lld q_offset=%lld mode=%d dtype=%d scattered=%d",
                  (long long)bad, (long long)B, (long long)K, (long long)Q, (long long)q_offset, mode, (int)dtypes[d],
                  scattered);
            CHECK(out[bytes] == 0xA5, "wrote past the end");
            free(out);
        }
    }
    free(valid);
    free(image_id);
    free(ring);
}

static void test_validation(void) {
    uint8_t valid[4] = {1, 1, 1, 1};
    int32_t image_id[4] = {-1, 0, 0, -1}, ring[4] = {0, 0, 0, 0};
    uint8_t out[64];
    memset(out, 0x5A, sizeof out);
    const c2rope_mask_params good = {1, 4, 4, 0, valid, image_id, ring, C2ROPE_MASK_OUTWARD, C2ROPE_BOOL, out};
    c2rope_mask_params p;

    CHECK(c2rope_chebyshev_mask_cpu(NULL) == C2ROPE_ERR_INVALID_ARGUMENT, "NULL params");
    p = good, p.q_len = 5;
    CHECK(c2rope_chebyshev_mask_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "q_len > K");
    p = good, p.q_offset = 1;
    CHECK(c2rope_chebyshev_mask_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "q_offset + q_len > K");
    p = good, p.q_offset = INT64_MAX, p.q_len = 1;
    CHECK(c2rope_chebyshev_mask_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "overflowing q_offset");
    p = good, p.batch = -1;
    CHECK(c2rope_chebyshev_mask_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "negative batch");
    p = good, p.mode = (c2rope_mask_mode)3;
    CHECK(c2rope_chebyshev_mask_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "bad mode");
    p = good, p.out_dtype = C2ROPE_F64;
    CHECK(c2rope_chebyshev_mask_cpu(&p) == C2ROPE_ERR_UNSUPPORTED_DTYPE, "F64 output");
    p = good, p.ring = NULL;
    CHECK(c2rope_chebyshev_mask_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "NULL ring");
    p = good, p.out = NULL;
    CHECK(c2rope_chebyshev_mask_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "NULL out");
    p = good, p.batch = INT64_MAX / 2, p.kv_len = 4;
    CHECK(c2rope_chebyshev_mask_cpu(&p) == C2ROPE_ERR_INVALID_ARGUMENT, "output size overflow");
    for (size_t i = 0; i < sizeof out; ++i) CHECK(out[i] == 0x5A, "an error call wrote to out");

    /* Zero-sized problems succeed without touching anything (NULL pointers allowed). */
    const c2rope_mask_params empty = {0, 0, 0, 0, NULL, NULL, NULL, C2ROPE_MASK_INWARD, C2ROPE_F16, NULL};
    CHECK(c2rope_chebyshev_mask_cpu(&empty) == C2ROPE_OK, "empty problem");
    p = good, p.q_offset = 4, p.q_len = 0, p.out = NULL;
    CHECK(c2rope_chebyshev_mask_cpu(&p) == C2ROPE_OK, "no query rows");
}

int main(void) {
    const char *env = getenv("C2ROPE_TEST_SEED");
    const uint64_t seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
    rng_state = seed * 0x9E3779B97F4A7C15ull + 1;
    printf("test_mask: C2ROPE_TEST_SEED=%llu\n", (unsigned long long)seed);

    test_validation();
    const int64_t sizes[] = {1, 2, 7, 33, 100, 257};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; ++s) {
        for (int scattered = 0; scattered < 2; ++scattered) {
            run_case(rnd_range(1, 3), sizes[s], scattered);
        }
    }
    if (failures) {
        printf("test_mask: %d failures\n", failures);
        return 1;
    }
    printf("test_mask: ok\n");
    return 0;
}
