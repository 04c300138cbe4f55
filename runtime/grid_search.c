/* The exact-grid search of runtime/weight_formats.py (`_grid_rows`, the reference) in one pass
 * over the weight (docs/design.md "Weights in fewer bits, exactly").
 *
 * Each group of GROUP values gets q * d + m with q in [0, 15] (bits 4, m the group's least value)
 * or [-128, 127] (bits 8, m = 0), d an fp16 value: the guesses are fp16(span / levels) and its fp16
 * neighbours, tried in the reference's order, and the first whose rebuilt values give every
 * float32 bit back is kept. The same IEEE operations in the same order as the reference (a
 * subtraction, a division, round half to even, a clamp; q * d is exact, so q * d + m rounds once,
 * fused or not), so the same q, d and m, bit for bit (tests/test_weight_formats.py).
 *
 * The torch reference ran ~10 elementwise passes of many small tensors over every weight: the
 * default target's 211 weights took 2.9-4.1 s a process; one pass here reads each value once or
 * twice while it is in L1.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define GROUP 32
#define NEIGHBOURS 2

static inline uint32_t bits_of(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

/* fp16 bits of a non-negative float (round to nearest even; over 65504 to inf, 0x7C00) */
static inline int32_t f16_bits(float x) {
    _Float16 h = (_Float16)x;
    uint16_t u;
    memcpy(&u, &h, sizeof u);
    return u;
}

static inline float f16_value(int32_t bits) {
    uint16_t u = (uint16_t)bits;
    _Float16 h;
    memcpy(&h, &u, sizeof h);
    return (float)h;
}

/* One group: 1 and q, d, m written where a guess rebuilds every value; 0 where none does (or a
 * value is not finite). */
static int search_group(const float *g, int bits, float *q, float *d_out, float *m_out) {
    float m, spans[2], q_lo, q_hi;
    int n_spans;
    for (int i = 0; i < GROUP; i++)
        if (!isfinite(g[i]))
            return 0;  /* the reference's span or least value is then not finite: refused */
    if (bits == 4) {
        float lo = g[0], hi = g[0];
        for (int i = 1; i < GROUP; i++)
            lo = g[i] < lo ? g[i] : lo, hi = g[i] > hi ? g[i] : hi;
        m = lo, spans[0] = (hi - lo) / 15.0f, n_spans = 1, q_lo = 0.0f, q_hi = 15.0f;
    } else {
        float absmax = 0.0f;
        for (int i = 0; i < GROUP; i++)
            absmax = fabsf(g[i]) > absmax ? fabsf(g[i]) : absmax;
        m = 0.0f, spans[0] = absmax / 127.0f, spans[1] = absmax / 128.0f, n_spans = 2, q_lo = -128.0f, q_hi = 127.0f;
    }
    if (!isfinite(spans[0]))
        return 0;  /* values too far apart for a float32 span */
    for (int s = 0; s < n_spans; s++) {
        int32_t guess = f16_bits(spans[s]);
        for (int j = 0; j <= 2 * NEIGHBOURS; j++) {
            int32_t step = (j + 1) / 2 * (j % 2 ? 1 : -1);  /* 0, 1, -1, 2, -2 */
            int32_t b = guess + step;
            b = b < 0 ? 0 : (b > 0x7BFF ? 0x7BFF : b);  /* non-negative finite fp16 values */
            float cand = f16_value(b);
            int ok = 1;
            for (int i = 0; i < GROUP && ok; i++) {
                float qq = 0.0f;
                if (cand > 0.0f) {
                    qq = nearbyintf((g[i] - m) / cand);
                    qq = qq < q_lo ? q_lo : (qq > q_hi ? q_hi : qq);
                }
                q[i] = qq;
                ok = bits_of(qq * cand + m) == bits_of(g[i]);
            }
            if (ok) {
                *d_out = cand, *m_out = m;
                return 1;
            }
        }
    }
    return 0;
}

/* w [n, k] float32 (rows at stride k, k a multiple of GROUP) -> q [n, k] (uint8 for bits 4, int8
 * for bits 8), d and m [n, k / GROUP]. Returns 0 where every group has a grid, 1 where some group
 * has none (the outputs are then partial). */
int grid_search(const float *w, int64_t n, int64_t k, int bits, void *q_out, float *d, float *m, int threads) {
    int64_t groups = k / GROUP;
    int failed = 0;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < n; r++) {
        float q[GROUP];
        for (int64_t c = 0; c < groups && !__atomic_load_n(&failed, __ATOMIC_RELAXED); c++) {
            int64_t at = r * k + c * GROUP;
            if (!search_group(w + at, bits, q, d + r * groups + c, m + r * groups + c)) {
                __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
                break;
            }
            for (int i = 0; i < GROUP; i++) {
                if (bits == 4)
                    ((uint8_t *)q_out)[at + i] = (uint8_t)q[i];
                else
                    ((int8_t *)q_out)[at + i] = (int8_t)q[i];
            }
        }
    }
    return failed;
}
