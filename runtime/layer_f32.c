/* A float32 Llama-family decoder layer in compiled calls, for CPUs without native bf16 (AVX2
 * and the like: the target and the drafters run float32 there). The float32 counterpart of
 * layer_kernel.c (docs/design.md "The cost of a step"; loaded by runtime/native_layer.py):
 *
 *   f32_layer_pre:     x = norm(h); qkv = x @ Wqkv.T (+ b); q, k rotated
 *   f32_layer_post:    h += attn @ Wo.T (+ b); x = norm(h); g|u = x @ Wgu.T;
 *                      h += (silu(g) * u) @ Wdown.T                       (h in place)
 *   f32_layer_forward: pre, k and v written to the cache, attention (f32_attention), post; also
 *                      an EAGLE-3 drafter's layer (q|k|v over [norm(emb) | norm(h)])
 *   f32_norm_linear:   a drafter's final norm and head
 *   f32_attention:     the batch-invariant float32 attention (also runtime/invariant.py's, for
 *                      the forwards that attend between pre and post: the server's batches)
 *
 * Why: a one-token float32 forward of SmolLM2-135M on two AVX2 cores spent ~6 ms of ~34 in the
 * ~40 torch ops a layer runs besides its linears and attention (dispatch, views, temporaries),
 * and a drafter's level was almost all of it (2-5 ms for a 7M-parameter layer). And SDPA, the
 * float32 attention before, is not batch-invariant: a tree row moved by ~1e-7 against plain
 * decoding's, so greedy equality held only as long as no near-tie flipped.
 *
 * Arithmetic: every row is computed from its own row and its visible keys alone by the same code
 * at any row count (the linears are linear_kernel.c's f32_linear, one FMA chain per output in k
 * order; the attention below), so a row's result is the same bits in a one-token forward and in
 * a tree's (docs/design.md "Exact float32"). Close to transformers' float32 ops, not equal: the
 * norm's sum of squares (8 lanes, one fixed sum of the lanes), 1 / sqrtf, silu's exp (exp8
 * below) and the compiler's fused multiply-adds are this file's own.
 */
#include "linear_kernel.c"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef float v8f __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#define MASKED_F32 (-1e30f) /* an additive mask at or below this hides the key */

static inline v8f ld8(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void st8(float *p, v8f v) { memcpy(p, &v, sizeof v); }

typedef float v4f __attribute__((vector_size(16)));

static inline float lanes_sum(v8f v) { /* one fixed tree over the lanes: the same for every row and key */
    v4f a = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
    return (a[0] + a[2]) + (a[1] + a[3]);
}

/* e^x for x <= 0 in 8 lanes (Cephes' expf, attention_kernel.c's exp16 at this file's vector width:
 * that one is part of the exact bf16 attention's arithmetic and stays as it is); below -87: 0 */
static inline v8f exp8(v8f x) {
    const v8f lo = (v8f){0} - 87.0f, magic = (v8f){0} + 12582912.0f;
    v8u under = (v8u)(x < lo);
    x = (v8f)((under & (v8u)lo) | (~under & (v8u)x));
    v8f n = (x * 1.44269504088896341f + magic) - magic;
    v8f r = x - n * 0.693359375f + n * 2.12194440e-4f;
    v8f p = (v8f){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    v8u bits = (v8u)(__builtin_convertvector(n, v8i) + 127) << 23;
    v8f y = p * (v8f)bits;
    return (v8f)((v8u)y & ~under);
}

/* out = w * (x / sqrt(mean(x^2) + eps)) per row of d values (d a multiple of 8); out rows at
 * stride out_stride */
static void norm_rows_f32(const float *x, int64_t rows, int64_t d, const float *w, float eps, float *out,
                          int64_t out_stride) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        v8f acc = (v8f){0};
        for (int64_t j = 0; j < d; j += 8) {
            v8f v = ld8(xr + j);
            acc += v * v;
        }
        const float scale = 1.0f / sqrtf(lanes_sum(acc) / (float)d + eps);
        for (int64_t j = 0; j < d; j += 8) st8(out + r * out_stride + j, ld8(w + j) * (ld8(xr + j) * scale));
    }
}

static void add_into_f32(float *h, const float *y, int64_t n) {
    for (int64_t j = 0; j < n; j += 8) st8(h + j, ld8(h + j) + ld8(y + j));
}

/* RoPE on the first `rotated` heads of each row of x [rows][heads][hd]: x * cos + roll(x, hd / 2)
 * * ssin, cos and ssin (sin with the first half negated) [rows][hd]; hd a multiple of 16 */
static void rotate_rows_f32(float *x, int64_t rows, int heads, int rotated, int hd, const float *cos, const float *ssin) {
    const int half = hd / 2;
    for (int64_t r = 0; r < rows; r++) {
        const float *c = cos + r * hd, *s = ssin + r * hd;
        for (int h = 0; h < rotated; h++) {
            float *xh = x + (r * heads + h) * hd;
            v8f out[32]; /* hd <= 256 */
            for (int j = 0; j < hd; j += 8) out[j / 8] = ld8(xh + j) * ld8(c + j) + ld8(xh + (j + half) % hd) * ld8(s + j);
            for (int j = 0; j < hd; j += 8) st8(xh + j, out[j / 8]);
        }
    }
}

/* act[r, j] = silu(g) * u, g = gu[r, j], u = gu[r, inter + j]; silu(g) = g / (1 + e^-g) with
 * e^-|g| only (g >= 0: g / (1 + e), g < 0: g e / (1 + e)); inter a multiple of 8 */
static void silu_mul_f32(const float *gu, int64_t rows, int64_t inter, float *act) {
    for (int64_t r = 0; r < rows; r++) {
        const float *g = gu + r * 2 * inter, *u = g + inter;
        for (int64_t j = 0; j < inter; j += 8) {
            v8f x = ld8(g + j);
            v8u negative = (v8u)(x < 0.0f);
            v8f e = exp8((v8f)((v8u)x | ((v8u){0} + 0x80000000u))); /* e^-|x|: the sign bit set */
            v8f num = (v8f)((negative & (v8u)(x * e)) | (~negative & (v8u)x));
            st8(act + r * inter + j, num / (1.0f + e) * ld8(u + j));
        }
    }
}

/* The scores of 8 keys (rows of k at stride ss; the first `valid` are real, mask NULL: visible):
 * each key's dot over head dims one FMA chain in 8 lanes, then one fixed sum of the lanes; masked
 * and missing keys -inf. Not inlined: every score of every call is this one machine code, so a
 * key's score cannot depend on where the compiler put it (a block of 8 or the last, short one).
 * Returns the largest score. */
__attribute__((noinline)) static float score8(const float *q, const float *k, int64_t ss, const float *mask, int valid,
                                              int hd, float scale, float *score) {
    v8f acc[8];
    for (int j = 0; j < 8; j++) acc[j] = (v8f){0};
    for (int d = 0; d < hd; d += 8) { /* eight independent chains, each q vector loaded once for them */
        v8f qd = ld8(q + d);
        for (int j = 0; j < 8; j++) acc[j] += qd * ld8(k + j * ss + d);
    }
    float top = -INFINITY;
    for (int j = 0; j < 8; j++) {
        float m = j >= valid ? MASKED_F32 : mask ? mask[j] : 0.0f;
        score[j] = m <= MASKED_F32 ? -INFINITY : lanes_sum(acc[j]) * scale + m;
        top = score[j] > top ? score[j] : top;
    }
    return top;
}

/* out [hd] = sum_s w_s v_s / sum_s w_s over the weights w (score), key after key in slot order
 * (a zero weight, a masked key, skipped: x + 0 = x) */
static inline __attribute__((always_inline)) void weigh_values(const float *v, int64_t ss, const float *w, int keys,
                                                               const int hd, float *out) {
    v8f acc[32];
    for (int c = 0; c < hd / 8; c++) acc[c] = (v8f){0};
    float total = 0.0f;
    for (int s = 0; s < keys; s++) {
        if (w[s] == 0.0f) continue;
        for (int c = 0; c < hd / 8; c++) acc[c] += w[s] * ld8(v + s * ss + 8 * c);
        total += w[s];
    }
    for (int c = 0; c < hd / 8; c++) st8(out + 8 * c, acc[c] / total);
}

/* One (row, head): q [hd] against keys / values [keys][hd] at row stride ss, additive mask
 * [keys] (NULL: all visible); scores in `score` [keys + 8]; out [hd]. Returns -1 when no key is
 * visible. Each score is its q and key's alone (score8); the weights exp(score - max over the
 * visible keys) are added key after key in slot order, the values likewise; a masked key weighs
 * exactly 0 and is skipped (x + 0 = x: skipped or not alike). So a row's result is a function of
 * its own q and visible keys in slot order alone, whatever the rows beside it, the key axis'
 * length or where masked keys sit. */
static int attend_one(const float *q, const float *k, const float *v, int64_t ss, const float *mask, int keys, int hd,
                      float scale, float *score, float *out) {
    float top = -INFINITY, tail[8 * 256];
    for (int s = 0; s < keys; s += 8) {
        const int valid = keys - s < 8 ? keys - s : 8;
        const float *kb = k + s * ss;
        int64_t stride = ss;
        if (valid < 8) { /* the last keys, copied beside zeros: the same code scores them */
            memset(tail, 0, sizeof(float) * 8 * (size_t)hd);
            for (int j = 0; j < valid; j++) memcpy(tail + j * hd, kb + j * ss, sizeof(float) * (size_t)hd);
            kb = tail, stride = hd;
        }
        float t = score8(q, kb, stride, mask ? mask + s : NULL, valid, hd, scale, score + s);
        top = t > top ? t : top;
    }
    if (top == -INFINITY) return -1;
    for (int s = keys; s < keys + 8; s++) score[s] = -INFINITY;
    for (int s = 0; s < keys; s += 8) st8(score + s, exp8(ld8(score + s) - top));
    switch (hd) { /* a constant head size keeps the accumulators in registers: the same arithmetic */
    case 64: weigh_values(v, ss, score, keys, 64, out); break;
    case 128: weigh_values(v, ss, score, keys, 128, out); break;
    default: weigh_values(v, ss, score, keys, hd, out);
    }
    return 0;
}

/* The float32 attention: q[h, i, d] at q + h * q_sh + i * q_sn + d; k, v[g, s, d] at
 * k + g * kv_sg + s * kv_ss + d; mask[i, s] at mask + i * mask_sn + s (float32 additive, or NULL:
 * all visible); out[i, h, d] at out + (i * heads + h) * hd + d. Head h reads kv head
 * h / (heads / kv_heads); hd a multiple of 8, at most 256. The (row, head) pairs run on up to
 * `threads` OpenMP threads (the caller's choice: runtime/native.py PARALLEL_WORK, as for the bf16
 * attention); which thread computes a pair changes nothing in it. Returns 0, -1
 * when a row sees no key, -2 for a head dim it does not take, -4 when memory runs out. */
__attribute__((noinline)) /* one machine code for the layer's call and the decoder's (runtime/invariant.py) */
int f32_attention(const float *q, int64_t q_sh, int64_t q_sn, const float *k, const float *v, int64_t kv_sg,
                  int64_t kv_ss, const float *mask, int64_t mask_sn, float *out, int heads, int kv_heads, int rows,
                  int keys, int hd, float scale, int threads) {
    if (hd % 8 || hd > 256 || hd < 8) return -2;
    const int group = heads / kv_heads, pairs = rows * heads;
    if (threads < 1) threads = 1;
    if (threads > pairs) threads = pairs;
    float *scores = malloc(sizeof(float) * (size_t)threads * (size_t)(keys + 8));
    if (!scores) return -4;
    int failed = 0;
    #pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static) reduction(| : failed)
    for (int p = 0; p < pairs; p++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        const int i = p / heads, h = p % heads, g = h / group;
        failed |= attend_one(q + h * q_sh + (int64_t)i * q_sn, k + g * kv_sg, v + g * kv_sg, kv_ss,
                             mask ? mask + (int64_t)i * mask_sn : NULL, keys, hd, scale,
                             scores + (int64_t)tid * (keys + 8), out + ((int64_t)i * heads + h) * hd);
    }
    free(scores);
    return failed ? -1 : 0;
}

/* The weights of one layer: layer_kernel.c's layer_weights with float32 norms and biases and the
 * packed weights f32_linear reads (runtime/native_layer.py's LayerWeights). */
typedef struct {
    const float *norm1;
    const f32_weight *qkv_w, *o_w;
    const float *norm2;
    const f32_weight *gu_w, *down_w;
    const float *qkv_b, *o_b, *down_b;
    float eps1, eps2, scale;
    int64_t d, inter;
    int heads, kv_heads, hd;
    const float *norm_emb;
} layer_weights_f32;

static int pre_rows_f32(const float *h, const float *emb, int64_t rows, const layer_weights_f32 *w, const float *cos,
                        const float *ssin, float *qkv, int threads) {
    const int64_t d = w->d, in = emb ? 2 * d : d;
    float *x = malloc(sizeof(float) * (size_t)(rows * in));
    if (!x) return -1;
    if (emb) {
        norm_rows_f32(emb, rows, d, w->norm_emb, w->eps1, x, in);
        norm_rows_f32(h, rows, d, w->norm1, w->eps1, x + d, in);
    } else {
        norm_rows_f32(h, rows, d, w->norm1, w->eps1, x, in);
    }
    const int all = w->heads + 2 * w->kv_heads;
    int status = f32_linear(x, rows, in, in, w->qkv_w, (int64_t)all * w->hd, w->qkv_b, qkv, threads);
    free(x);
    if (status) return status;
    rotate_rows_f32(qkv, rows, all, w->heads + w->kv_heads, w->hd, cos, ssin);
    return 0;
}

/* qkv [rows][heads + 2 kv_heads][hd] = norm(h) @ Wqkv.T (+ bias), the first heads + kv_heads
 * heads of each row rotated. h [rows][d]; cos, ssin [rows][hd]. d a multiple of 8, hd of 16
 * (<= 256). Returns 0, -1 when memory runs out. */
int f32_layer_pre(const float *h, int64_t rows, int64_t d, const float *norm_w, float eps, const f32_weight *qkv_w,
                  const float *qkv_b, int heads, int kv_heads, int hd, const float *cos, const float *ssin, float *qkv,
                  int threads) {
    layer_weights_f32 w = {0};
    w.norm1 = norm_w, w.eps1 = eps, w.qkv_w = qkv_w, w.qkv_b = qkv_b, w.d = d, w.heads = heads, w.kv_heads = kv_heads, w.hd = hd;
    return pre_rows_f32(h, NULL, rows, &w, cos, ssin, qkv, threads);
}

/* h [rows][d] += attn @ Wo.T (+ o_b), then h += down(silu(g) * u) with g|u = norm(h) @ Wgu.T
 * (gate rows first), in place. attn [rows][width] at row stride attn_stride. d, inter: multiples
 * of 8. Returns 0, -1 when memory runs out. */
int f32_layer_post(float *h, int64_t rows, int64_t d, const float *attn, int64_t width, int64_t attn_stride,
                   const f32_weight *o_w, const float *o_b, const float *norm_w, float eps, const f32_weight *gu_w,
                   int64_t inter, const f32_weight *down_w, const float *down_b, int threads) {
    float *y = malloc(sizeof(float) * (size_t)(rows * (d + 3 * inter)));
    if (!y) return -1;
    float *gu = y + rows * d, *act = gu + rows * 2 * inter;
    int status = f32_linear(attn, rows, width, attn_stride, o_w, d, o_b, y, threads);
    if (!status) {
        add_into_f32(h, y, rows * d);
        norm_rows_f32(h, rows, d, norm_w, eps, y, d);
        status = f32_linear(y, rows, d, d, gu_w, 2 * inter, NULL, gu, threads);
    }
    if (!status) {
        silu_mul_f32(gu, rows, inter, act);
        status = f32_linear(act, rows, inter, inter, down_w, d, down_b, y, threads);
    }
    if (!status) add_into_f32(h, y, rows * d);
    free(y);
    return status;
}

/* One whole layer over h [rows][d] (in place) after `length` cached entries: pre; each row's k
 * and v to cache slot length + row (k, v [g][s][hd] at strides kv_sg, kv_ss); attention over the
 * length + rows slots (mask [rows][length + rows] float32 additive at row stride mask_sn, or
 * NULL: every slot visible) on attention_threads threads; post. emb [rows][d] with w->norm_emb
 * (an EAGLE-3 drafter) or NULL. Returns 0, -1 (memory), -2 (a row sees no key): layer_forward's
 * arguments in float32. */
int f32_layer_forward(float *h, const float *emb, int64_t rows, const layer_weights_f32 *w, const float *cos,
                      const float *ssin, float *cache_k, float *cache_v, int64_t kv_sg, int64_t kv_ss, int64_t length,
                      const float *mask, int64_t mask_sn, int threads, int attention_threads) {
    const int64_t keys = length + rows;
    const int heads = w->heads, kv = w->kv_heads, hd = w->hd, all = heads + 2 * kv;
    float *qkv = malloc(sizeof(float) * (size_t)(rows * all * hd + rows * heads * hd));
    if (!qkv) return -1;
    float *attn = qkv + rows * all * hd;
    int status = pre_rows_f32(h, emb, rows, w, cos, ssin, qkv, threads);
    if (!status) {
        for (int64_t r = 0; r < rows; r++)
            for (int g = 0; g < kv; g++) {
                memcpy(cache_k + g * kv_sg + (length + r) * kv_ss, qkv + (r * all + heads + g) * hd, sizeof(float) * (size_t)hd);
                memcpy(cache_v + g * kv_sg + (length + r) * kv_ss, qkv + (r * all + heads + kv + g) * hd, sizeof(float) * (size_t)hd);
            }
        status = f32_attention(qkv, hd, (int64_t)all * hd, cache_k, cache_v, kv_sg, kv_ss, mask, mask_sn, attn, heads, kv,
                               (int)rows, (int)keys, hd, w->scale, attention_threads);
        status = status == -4 ? -1 : status ? -2 : 0;
    }
    if (!status)
        status = f32_layer_post(h, rows, w->d, attn, (int64_t)heads * hd, (int64_t)heads * hd, w->o_w, w->o_b, w->norm2,
                                w->eps2, w->gu_w, w->inter, w->down_w, w->down_b, threads);
    free(qkv);
    return status;
}

/* out [rows][n] = norm(h) @ W.T (a drafter's final norm and head): h [rows][d]. Returns 0, -1. */
int f32_norm_linear(const float *h, int64_t rows, int64_t d, const float *norm_w, float eps, const f32_weight *w, int64_t n,
                    float *out, int threads) {
    float *x = malloc(sizeof(float) * (size_t)(rows * d));
    if (!x) return -1;
    norm_rows_f32(h, rows, d, norm_w, eps, x, d);
    int status = f32_linear(x, rows, d, d, w, n, NULL, out, threads);
    free(x);
    return status;
}
