/* The exact bf16 attention of specmux (docs/design.md "Exact bf16"; loaded by runtime/native.py).
 *
 * Each (query row, head) is computed by the same scalar-order code from its own q row and its
 * visible keys in slot order alone: no blocking or reduction order here depends on how many rows
 * a call holds, how long its key axis is, or where masked keys sit between the visible ones.
 * That is what makes a tree node's row bit-identical to the row plain decoding computes for the
 * same token (masked keys are skipped; the visible ones are the same keys in the same order).
 *
 *   score_s = (q . k_s) * scale + mask_s            float32; the dot over head dims in lanes of 16
 *                                                   (lane j sums dims j, j+16, ...), lanes added in a
 *                                                   fixed tree
 *   w_s     = expf(score_s - max over visible s)    float32
 *   out     = (sum_s w_s v_s) / (sum_s w_s)         float32, summed key after key in slot order,
 *                                                   then rounded to bf16 (nearest even)
 *
 * Compiled on first use for the running CPU (-O3 -march=native, no fast-math: the compiler may
 * not reassociate these sums).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef float v16f __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint16_t v16h __attribute__((vector_size(32)));

#define MASKED (-1e30f) /* an additive mask at or below this hides the key */

static inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t float_to_bf16(float f) { /* round to nearest even, as torch rounds */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline v16f load16(const uint16_t *p) {
    v16h h;
    memcpy(&h, p, sizeof h);
    v16u u = __builtin_convertvector(h, v16u) << 16;
    v16f f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float lanes_sum(v16f a) { /* a fixed tree over the 16 lanes */
    float s8[8], s4[4];
    for (int j = 0; j < 8; j++) s8[j] = a[j] + a[j + 8];
    for (int j = 0; j < 4; j++) s4[j] = s8[j] + s8[j + 4];
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

/* e^x for x <= 0 in 16 lanes (Cephes' expf: 2^n e^r, |r| <= ln2 / 2, degree-6 polynomial; within
 * 2 ulp of expf); -inf and anything below -87 give exactly 0. */
static inline v16f exp16(v16f x) {
    const v16f lo = (v16f){0} - 87.0f, magic = (v16f){0} + 12582912.0f; /* 1.5 * 2^23: rounds to an integer */
    v16u under = (v16u)(x < lo);
    x = (v16f)((under & (v16u)lo) | (~under & (v16u)x));
    v16f n = (x * 1.44269504088896341f + magic) - magic;
    v16f r = x - n * 0.693359375f + n * 2.12194440e-4f;
    v16f p = (v16f){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    v16u bits = (v16u)(__builtin_convertvector(n, __attribute__((vector_size(64))) int32_t) + 127) << 23;
    v16f y = p * (v16f)bits;
    return (v16f)((v16u)y & ~under);
}

/* One (query row, head): q row qi, its kv head's keys kh and values vh (slot stride kv_ss), the
 * row's additive mask mi (or NULL), into o[0:hd]. score: keys + 16 floats. Inlined with a
 * constant hd for the common head sizes (the accumulators stay in registers); the arithmetic is
 * the same code whatever hd is. */
static inline void attend_row(const uint16_t *qi, const uint16_t *kh, const uint16_t *vh, int64_t kv_ss,
                              const uint16_t *mi, int keys, const int hd, float scale, float *score, uint16_t *o) {
    enum { MAXC = 16 };              /* head dims up to 256 */
    const int nc = (hd + 15) / 16;   /* 16-dim chunks; the last one zero-padded */
    v16f qv[MAXC], acc[MAXC];
    for (int c = 0; c < nc; c++) {
        uint16_t tmp[16] = {0};
        memcpy(tmp, qi + 16 * c, sizeof(uint16_t) * (hd - 16 * c < 16 ? hd - 16 * c : 16));
        qv[c] = load16(tmp);
        acc[c] = (v16f){0};
    }
    /* scores: the dot over head dims in 16 lanes (lane j sums dims j, j + 16, ...), lanes in a fixed tree */
    float top = -INFINITY;
    for (int s = 0; s < keys; s++) {
        float m = mi ? bf16_to_float(mi[s]) : 0.0f;
        if (m <= MASKED) {
            score[s] = -INFINITY;
            continue;
        }
        const uint16_t *ks = kh + s * kv_ss;
        v16f d = {0};
        for (int c = 0; c < nc; c++) {
            if (16 * c + 16 <= hd) {
                d += qv[c] * load16(ks + 16 * c);
            } else {
                uint16_t tmp[16] = {0};
                memcpy(tmp, ks + 16 * c, sizeof(uint16_t) * (hd - 16 * c));
                d += qv[c] * load16(tmp);
            }
        }
        score[s] = lanes_sum(d) * scale + m;
        top = score[s] > top ? score[s] : top;
    }
    for (int s = keys; s < keys + 16; s++) score[s] = -INFINITY;
    /* weights (masked keys: exactly 0) */
    for (int s = 0; s < keys; s += 16) {
        v16f x;
        memcpy(&x, score + s, sizeof x);
        x = exp16(x - top);
        memcpy(score + s, &x, sizeof x);
    }
    /* the weighted sum, key after key in slot order (a zero weight adds nothing: skipped) */
    float total = 0.0f;
    for (int s = 0; s < keys; s++) {
        float w = score[s];
        if (w == 0.0f) continue;
        total += w;
        const uint16_t *vs = vh + s * kv_ss;
        for (int c = 0; c < nc; c++) {
            if (16 * c + 16 <= hd) {
                acc[c] += w * load16(vs + 16 * c);
            } else {
                uint16_t tmp[16] = {0};
                memcpy(tmp, vs + 16 * c, sizeof(uint16_t) * (hd - 16 * c));
                acc[c] += w * load16(tmp);
            }
        }
    }
    for (int c = 0; c < nc; c++) {
        v16f y = acc[c] / total;
        for (int j = 0; j < 16 && 16 * c + j < hd; j++) o[16 * c + j] = float_to_bf16(y[j]);
    }
}

/* q[h, i, d]      at q + h * q_sh + i * q_sn + d            (bf16)
 * k, v[g, s, d]   at k + g * kv_sg + s * kv_ss + d          (bf16, the same strides for both)
 * mask[i, s]      at mask + i * mask_sn + s                 (bf16 additive, or NULL: all visible)
 * out[i, h, d]    at out + (i * heads + h) * hd + d         (bf16, contiguous)
 * work: keys + 16 floats; head h reads kv head h / (heads / kv_heads). Returns 0; -1 when a
 * row sees no key, -2 for a head dim over 256. */
int invariant_attention(const uint16_t *q, int64_t q_sh, int64_t q_sn,
                        const uint16_t *k, const uint16_t *v, int64_t kv_sg, int64_t kv_ss,
                        const uint16_t *mask, int64_t mask_sn, uint16_t *out,
                        int heads, int kv_heads, int rows, int keys, int hd, float scale, float *work) {
    if (hd > 256) return -2;
    int group = heads / kv_heads;
    for (int i = 0; i < rows; i++) {
        const uint16_t *mi = mask ? mask + i * mask_sn : NULL;
        if (mi) {
            int seen = 0;
            for (int s = 0; s < keys && !seen; s++) seen = bf16_to_float(mi[s]) > MASKED;
            if (!seen) return -1;
        }
        for (int h = 0; h < heads; h++) {
            const uint16_t *kh = k + (int64_t)(h / group) * kv_sg, *vh = v + (int64_t)(h / group) * kv_sg;
            const uint16_t *qi = q + h * q_sh + i * q_sn;
            uint16_t *o = out + ((int64_t)i * heads + h) * hd;
            switch (hd) { /* constant head sizes: the same arithmetic, registers instead of memory */
            case 64: attend_row(qi, kh, vh, kv_ss, mi, keys, 64, scale, work, o); break;
            case 128: attend_row(qi, kh, vh, kv_ss, mi, keys, 128, scale, work, o); break;
            default: attend_row(qi, kh, vh, kv_ss, mi, keys, hd, scale, work, o);
            }
        }
    }
    return 0;
}
