/* The exact bf16 attention of specmux (docs/design.md "Exact bf16"; loaded by runtime/native.py).
 *
 * Each (query row, head) is computed by the same scalar-order code from its own q row and its
 * visible keys in slot order alone: no blocking or reduction order here depends on how many rows
 * a call holds, how long its key axis is, or where masked keys sit between the visible ones.
 * That is what makes a tree node's row bit-identical to the row plain decoding computes for the
 * same token (masked keys weigh exactly 0, which changes no bit of the sums; the visible ones
 * are the same keys in the same order).
 *
 *   score_s = (q . k_s) * scale + mask_s            float32; the dot over head dims one multiply-add
 *                                                   per dim, in dim order (16 keys side by side in
 *                                                   the lanes, from keys transposed once per call)
 *   w_s     = exp(score_s - max over visible s)     float32 (exp16)
 *   out     = (sum_s w_s v_s) / (sum_s w_s)         float32, summed key after key in slot order,
 *                                                   then rounded to bf16 (nearest even)
 *
 * Compiled on first use for the running CPU (-O3 -march=native -fopenmp, no fast-math: the
 * compiler may not reassociate these sums).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

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

static inline v16f lane_index(void) {
    return (v16f){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
}

static inline void store_lanes(float *p, v16f x) { memcpy(p, &x, sizeof x); }

static inline v16f load_floats(const float *p) {
    v16f x;
    memcpy(&x, p, sizeof x);
    return x;
}

/* 16 mask entries from p on (fewer than 16 left: the rest masked) */
static inline v16f load_mask(const uint16_t *p, int left) {
    if (left >= 16) return load16(p);
    uint16_t tmp[16];
    for (int j = 0; j < 16; j++) tmp[j] = j < left ? p[j] : 0xff80; /* bf16 -inf */
    return load16(tmp);
}

/* Load 16 dims of a bf16 row from dim 16c on; past hd, zeros (the last chunk of an odd head size). */
static inline v16f load_chunk(const uint16_t *row, int c, const int hd) {
    if (16 * c + 16 <= hd) return load16(row + 16 * c);
    uint16_t tmp[16] = {0};
    for (int j = 0; 16 * c + j < hd; j++) tmp[j] = row[16 * c + j];
    return load16(tmp);
}

enum { MAXC = 16, BLOCK = 8, VBLOCK = 4 }; /* head dims up to 256; BLOCK (row, head) pairs of one kv head per task, VBLOCK of them per value pass */

/* The score pass of attend_block over R pairs (a constant after inlining: 4 for small blocks,
 * BLOCK else; pairs past count compute zeros that nothing reads). */
static inline __attribute__((always_inline)) void score_pass(const int R, int count, float qf[][16 * MAXC],
        const uint16_t *const *ms, const float *kt, int keys, const int hd, float scale, float *score, v16f *tops) {
    const int stride = keys + 16;
    for (int s0 = 0; s0 < keys; s0 += 16) {
        v16f acc[BLOCK];
        for (int r = 0; r < R; r++) acc[r] = (v16f){0};
        for (int d = 0; d < hd; d++) {
            v16f k = load_floats(kt + (int64_t)d * stride + s0);
            for (int r = 0; r < R; r++) acc[r] += qf[r][d] * k;
        }
        v16u inside = (v16u)(lane_index() < (float)(keys - s0));
        for (int r = 0; r < count; r++) {
            v16f m = ms[r] ? load_mask(ms[r] + s0, keys - s0) : (v16f){0};
            v16u visible = (v16u)(m > MASKED) & inside;
            v16f sc = acc[r] * scale + m;
            sc = (v16f)((visible & (v16u)sc) | (~visible & (v16u)((v16f){0} - INFINITY)));
            store_lanes(score + r * stride + s0, sc);
            v16u more = (v16u)(sc > tops[r]); /* max: exact in any order */
            tops[r] = (v16f)((more & (v16u)sc) | (~more & (v16u)tops[r]));
        }
    }
}

/* Up to BLOCK (query row, head) pairs of one kv head: q rows qs[r], masks ms[r] (NULL: all
 * visible), outputs os[r]; the kv head's keys transposed and widened to float32, kt[d][s] (row
 * stride keys + 16), and its values widened, vf[s][d] (row stride width) (`widen_keys`,
 * `widen_values`). Each key's loads are shared by the block; every pair's arithmetic is its own
 * and the same whichever pairs share its block. score: BLOCK * (keys + 16) floats. Inlined with
 * a constant hd for the common head sizes. */
static inline void attend_block(int count, const uint16_t *const *qs, const uint16_t *const *ms, uint16_t *const *os,
                                const float *kt, const float *vf, int keys, const int hd, float scale, float *score) {
    const int nc = (hd + 15) / 16, width = 16 * nc, stride = keys + 16;
    float qf[BLOCK][16 * MAXC], top[BLOCK];
    v16f tops[BLOCK];
    for (int r = 0; r < BLOCK; r++) {
        tops[r] = (v16f){0} - INFINITY;
        for (int d = 0; d < hd; d++) qf[r][d] = r < count ? bf16_to_float(qs[r][d]) : 0.0f;
    }
    /* scores, 16 keys at a time in the lanes: each key's dot over head dims, dim after dim
     * (one multiply-add per dim, in dim order); a key's score depends on its q and k alone */
    if (count <= 4)
        score_pass(4, count, qf, ms, kt, keys, hd, scale, score, tops);
    else
        score_pass(BLOCK, count, qf, ms, kt, keys, hd, scale, score, tops);
    for (int r = 0; r < count; r++) {
        top[r] = -INFINITY;
        for (int j = 0; j < 16; j++) top[r] = tops[r][j] > top[r] ? tops[r][j] : top[r];
    }
    /* weights, over the blocks of 16 the score pass wrote (masked keys and those past the end: exactly 0) */
    for (int r = 0; r < count; r++) {
        float *sc = score + r * stride;
        for (int s = 0; s < keys; s += 16) {
            v16f x;
            memcpy(&x, sc + s, sizeof x);
            x = exp16(x - top[r]);
            memcpy(sc + s, &x, sizeof x);
        }
    }
    /* the weighted sums, key after key in slot order, VBLOCK pairs at a time. A zero weight (a
     * masked key) changes no bit of a sum that starts at +0 (x + 0 = x; a sum of finite terms is
     * never -0 in round-to-nearest), so keys whose weights are all zero are skipped or not alike. */
    for (int r0 = 0; r0 < count; r0 += VBLOCK) {
        int n = count - r0 < VBLOCK ? count - r0 : VBLOCK;
        v16f acc[VBLOCK][MAXC];
        float total[VBLOCK];
        for (int r = 0; r < VBLOCK; r++) {
            total[r] = 0.0f;
            for (int c = 0; c < nc; c++) acc[r][c] = (v16f){0};
        }
        const float *w = score + r0 * stride;
        for (int s = 0; s < keys; s++) {
            int any = 0;
            for (int r = 0; r < n; r++) any |= w[r * stride + s] != 0.0f;
            if (!any) continue;
            for (int c = 0; c < nc; c++) {
                v16f v = load_floats(vf + (int64_t)s * width + 16 * c);
                for (int r = 0; r < VBLOCK; r++) acc[r][c] += w[(r < n ? r : 0) * stride + s] * v;
            }
            for (int r = 0; r < n; r++) total[r] += w[r * stride + s];
        }
        for (int r = 0; r < n; r++) {
            for (int c = 0; c < nc; c++) {
                v16f y = acc[r][c] / total[r];
                for (int j = 0; j < 16 && 16 * c + j < hd; j++) os[r0 + r][16 * c + j] = float_to_bf16(y[j]);
            }
        }
    }
}

/* x[0..15] (16 rows of 16 floats) transposed in place: four stages, each swapping bit B between
 * the row and the column index (rows i and i + B exchange the halves LO and HI pick out) */
#define SWAP_BIT(B, LO, HI)                                  \
    for (int i = 0; i < 16; i++) {                           \
        if (i & B) continue;                                 \
        v16f a = x[i], c = x[i + B];                         \
        x[i] = __builtin_shufflevector(a, c, LO);            \
        x[i + B] = __builtin_shufflevector(a, c, HI);        \
    }
#define LO8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define HI8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define LO4 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define HI4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define LO2 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define HI2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define LO1 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define HI1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
static inline void transpose16(v16f *x) {
    SWAP_BIT(8, LO8, HI8)
    SWAP_BIT(4, LO4, HI4)
    SWAP_BIT(2, LO2, HI2)
    SWAP_BIT(1, LO1, HI1)
}

/* keys [keys, hd] of bf16 (row stride ss) -> float [width][keys + 16], transposed 16 x 16 at a
 * time (zeros past hd and past keys: the score pass reads keys in blocks of 16) */
static void widen_keys(const uint16_t *x, int64_t ss, int keys, int hd, int width, float *out) {
    const int64_t stride = keys + 16;
    for (int s0 = 0; s0 < keys + 16; s0 += 16) { /* the last block: the zeros past keys */
        for (int c = 0; 16 * c < width; c++) {
            v16f t[16];
            for (int j = 0; j < 16; j++) t[j] = s0 + j < keys ? load_chunk(x + (s0 + j) * ss, c, hd) : (v16f){0};
            transpose16(t);
            for (int j = 0; j < 16; j++)
                if (s0 + 16 <= stride) memcpy(out + (16 * c + j) * stride + s0, &t[j], sizeof t[j]);
                else memcpy(out + (16 * c + j) * stride + s0, &t[j], sizeof(float) * (size_t)(stride - s0));
        }
    }
}

/* values [keys, hd] of bf16 (row stride ss) -> float rows [keys + 16, width] (zeros past hd and keys) */
static void widen_values(const uint16_t *x, int64_t ss, int keys, int hd, int width, float *out) {
    for (int s = 0; s < keys; s++) {
        for (int c = 0; 16 * c < width; c++) {
            v16f f = load_chunk(x + s * ss, c, hd);
            memcpy(out + (int64_t)s * width + 16 * c, &f, sizeof f);
        }
    }
    memset(out + (int64_t)keys * width, 0, sizeof(float) * 16 * width);
}

/* One task: kv head g's pairs first .. first + BLOCK - 1 (row-major over (row, head of the group)). */
static void run_block(int g, int first, const uint16_t *q, int64_t q_sh, int64_t q_sn, const uint16_t *mask,
                      int64_t mask_sn, uint16_t *out, int heads, int group, int rows, int keys, int hd,
                      float scale, const float *kf, const float *vf, float *score) {
    const uint16_t *qs[BLOCK], *ms[BLOCK];
    uint16_t *os[BLOCK];
    int pairs = rows * group, count = pairs - first < BLOCK ? pairs - first : BLOCK;
    for (int r = 0; r < count; r++) {
        int i = (first + r) / group, h = g * group + (first + r) % group;
        qs[r] = q + h * q_sh + i * q_sn;
        ms[r] = mask ? mask + i * mask_sn : NULL;
        os[r] = out + ((int64_t)i * heads + h) * hd;
    }
    switch (hd) { /* constant head sizes: the same arithmetic, fewer loads and stores */
    case 64: attend_block(count, qs, ms, os, kf, vf, keys, 64, scale, score); break;
    case 128: attend_block(count, qs, ms, os, kf, vf, keys, 128, scale, score); break;
    default: attend_block(count, qs, ms, os, kf, vf, keys, hd, scale, score);
    }
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#include "attention_amx.c"
#define ATTENTION_AMX 1
#else
#define ATTENTION_AMX 0
#endif

/* 1: the tile path (attention_amx.c) where this build has it and the OS allows it; 0: the vector
 * path above. A process must not switch between calls whose rows it compares (tests set it). */
int attention_use_amx = 1;

/* 1 when calls take the tile path */
int attention_on_amx(void) {
#if ATTENTION_AMX
    return attention_use_amx && amx_permitted();
#else
    return 0;
#endif
}

/* q[h, i, d]      at q + h * q_sh + i * q_sn + d            (bf16)
 * k, v[g, s, d]   at k + g * kv_sg + s * kv_ss + d          (bf16, the same strides for both)
 * mask[i, s]      at mask + i * mask_sn + s                 (bf16 additive, or NULL: all visible)
 * out[i, h, d]    at out + (i * heads + h) * hd + d         (bf16, contiguous)
 * work: (2 * kv_heads * width + threads * BLOCK) * (keys + 16) floats, width = hd rounded up to
 * 16; head h reads kv head h / (heads / kv_heads). threads > 1: the blocks run on that many
 * OpenMP threads (torch's own pool: runtime/native.py links the same libgomp); which thread
 * computes a block changes nothing in it. On AMX (attention_on_amx) the tile path runs instead
 * and `work` is not read. Returns 0; -1 when a row sees no key, -2 for a head dim over 256, -4
 * when memory runs out. */
__attribute__((noinline)) /* one machine code wherever it is called from (layer_kernel.c includes this file) */
int invariant_attention(const uint16_t *q, int64_t q_sh, int64_t q_sn,
                        const uint16_t *k, const uint16_t *v, int64_t kv_sg, int64_t kv_ss,
                        const uint16_t *mask, int64_t mask_sn, uint16_t *out,
                        int heads, int kv_heads, int rows, int keys, int hd, float scale, int threads, float *work) {
    if (hd > 256) return -2;
    for (int i = 0; mask && i < rows; i++) {
        int seen = 0;
        for (int s = 0; s < keys && !seen; s++) seen = bf16_to_float(mask[i * mask_sn + s]) > MASKED;
        if (!seen) return -1;
    }
#if ATTENTION_AMX
    if (attention_on_amx())
        return amx_attention(q, q_sh, q_sn, k, v, kv_sg, kv_ss, mask, mask_sn, out, heads, kv_heads, rows, keys, hd, scale, threads);
#endif
    const int group = heads / kv_heads, width = (hd + 15) / 16 * 16, blocks = (rows * group + BLOCK - 1) / BLOCK;
    const int64_t plane = (int64_t)(keys + 16) * width; /* one kv head's widened keys (or values) */
    float *widened = work, *scores = work + 2 * kv_heads * plane;
    (void)threads;
    /* every kv head's keys and values widened to float32 once, for all its rows */
    #pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (int t = 0; t < 2 * kv_heads; t++)
        (t % 2 ? widen_values : widen_keys)((t % 2 ? v : k) + (t / 2) * kv_sg, kv_ss, keys, hd, width, widened + t * plane);
    #pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (int t = 0; t < kv_heads * blocks; t++) {
        int g = t / blocks, tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        run_block(g, (t % blocks) * BLOCK, q, q_sh, q_sn, mask, mask_sn, out, heads, group, rows, keys, hd, scale,
                  widened + 2 * g * plane, widened + (2 * g + 1) * plane, scores + (int64_t)tid * BLOCK * (keys + 16));
    }
    return 0;
}
