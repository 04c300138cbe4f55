/* A bf16 Llama-family decoder layer around its attention, in two calls (docs/design.md "Exact
 * bf16"; loaded by runtime/native_layer.py, planned by runtime/plan.py):
 *
 *   layer_pre:  x = norm(h); qkv = x @ Wqkv.T (+ b); q, k rotated       -> qkv [rows, heads + 2 kv, hd]
 *   (the attention runs between them: runtime/decoder.py, the cache and the exact kernel)
 *   layer_post: h += attn @ Wo.T (+ b); x = norm(h); g|u = x @ Wgu.T;
 *               h += (silu(g) * u) @ Wdown.T                             -> h, in place
 *   layer_forward: all of it in one call where the rows attend one cache with the exact kernel
 *               (attention_kernel.c's invariant_attention, the same machine code as the
 *               attention library's): pre, k and v written to the cache, attention, post;
 *               also an EAGLE-3 drafter's layer (q|k|v over [norm(emb) | norm(h)])
 *   norm_linear: a drafter's final norm and head
 *
 * Why: a one-token forward of a 135M target on two threads spent ~6 ms of ~21 in the ~30 torch
 * ops a layer runs besides its linears and attention (dispatch, views, bf16 temporaries), more
 * than half as much as reading the weights. Here they are one loop each.
 *
 * Arithmetic. Every element is computed from its own row alone by the same code whatever the row
 * count (the linears are linear_kernel.c's amx_linear): a row's result is the same bits in a
 * one-token forward and in a tree's, so speculative output equals plain decoding. It follows
 * transformers' bf16 ops where that is free: each elementwise op rounds to bf16 as torch's does
 * (x * cos, rolled x * sin, their sum, the residual adds, silu's output, silu * up); the
 * norm's sum of squares (16 lanes in index order, lanes added 0..15) and silu's exp (exp16 below)
 * are this file's own, so a bf16 forward here is close to transformers' bf16 forward, not equal.
 */
#include "linear_kernel.c"
#include "attention_kernel.c"

#include <math.h>

#if HAVE_AMX
static inline __m512 load_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

static inline void store_bf16(uint16_t *p, __m512 v) { _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(v)); }

static inline __m512 round_bf16(__m512 v) { /* v rounded to bf16 and back: torch's bf16 temporaries */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)), 16));
}

/* out = w * bf16(x * rsqrt(mean(x^2) + eps)), per row of d values (d a multiple of 16); out rows
 * at stride out_stride */
static void norm_rows_at(const uint16_t *x, int64_t rows, int64_t d, const uint16_t *w, float eps, uint16_t *out,
                         int64_t out_stride) {
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * d;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t j = 0; j < d; j += 16) {
            __m512 v = load_bf16(xr + j);
            acc = _mm512_add_ps(acc, _mm512_mul_ps(v, v));
        }
        float lanes[16], sum = 0.0f;
        _mm512_storeu_ps(lanes, acc);
        for (int l = 0; l < 16; l++) sum += lanes[l];
        const __m512 scale = _mm512_set1_ps(1.0f / sqrtf(sum / (float)d + eps));
        for (int64_t j = 0; j < d; j += 16)
            store_bf16(out + r * out_stride + j, _mm512_mul_ps(load_bf16(w + j), round_bf16(_mm512_mul_ps(load_bf16(xr + j), scale))));
    }
}

static void norm_rows(const uint16_t *x, int64_t rows, int64_t d, const uint16_t *w, float eps, uint16_t *out) {
    norm_rows_at(x, rows, d, w, eps, out, d);
}

/* h = bf16(h + y), n values (a multiple of 16) */
static void add_into(uint16_t *h, const uint16_t *y, int64_t n) {
    for (int64_t j = 0; j < n; j += 16) store_bf16(h + j, _mm512_add_ps(load_bf16(h + j), load_bf16(y + j)));
}

/* RoPE on the first `rotated` heads of each row of x [rows][heads][hd]: bf16(bf16(x * cos) +
 * bf16(roll(x, hd / 2) * ssin)), cos and ssin (sin with the first half negated) [rows][hd] */
static void rotate_rows(uint16_t *x, int64_t rows, int heads, int rotated, int hd, const uint16_t *cos,
                        const uint16_t *ssin) {
    const int half = hd / 2;
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *c = cos + r * hd, *s = ssin + r * hd;
        for (int h = 0; h < rotated; h++) {
            uint16_t *xh = x + (r * heads + h) * hd;
            __m512 out[16]; /* hd <= 256 */
            for (int j = 0; j < hd; j += 16) {
                __m512 a = round_bf16(_mm512_mul_ps(load_bf16(xh + j), load_bf16(c + j)));
                __m512 b = round_bf16(_mm512_mul_ps(load_bf16(xh + (j + half) % hd), load_bf16(s + j)));
                out[j / 16] = _mm512_add_ps(a, b);
            }
            for (int j = 0; j < hd; j += 16) store_bf16(xh + j, out[j / 16]);
        }
    }
}

/* e^x for x <= 0, 16 lanes (attention_kernel.c's exp16: Cephes' expf, within 2 ulp) */
static inline __m512 exp_nonpositive(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.0f);
    __mmask16 tiny = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_max_ps(x, lo);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512 e = _mm512_scalef_ps(p, n);
    return _mm512_maskz_mov_ps((__mmask16)~tiny, e);
}

/* act[r, j] = bf16(bf16(silu(g)) * u), g = gu[r, j], u = gu[r, inter + j]; silu(g) = g / (1 + e^-g)
 * with e^-|g| only (x >= 0: g / (1 + e), x < 0: g e / (1 + e)) */
static void silu_mul(const uint16_t *gu, int64_t rows, int64_t inter, uint16_t *act) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *g = gu + r * 2 * inter, *u = g + inter;
        for (int64_t j = 0; j < inter; j += 16) {
            __m512 x = load_bf16(g + j);
            __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
            __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
            __m512 num = _mm512_mask_mul_ps(x, negative, x, e);
            __m512 silu = round_bf16(_mm512_div_ps(num, _mm512_add_ps(one, e)));
            store_bf16(act + r * inter + j, _mm512_mul_ps(silu, load_bf16(u + j)));
        }
    }
}
#endif

/* The weights of one layer, resolved once (runtime/native_layer.py's LayerWeights). norm_emb:
 * NULL for a target layer; an EAGLE-3 drafter layer's norm of the token embedding, whose q|k|v
 * read [norm_emb(emb) | norm1(h)] (2 d wide). */
typedef struct {
    const uint16_t *norm1, *qkv_w, *o_w, *norm2, *gu_w, *down_w;
    const float *qkv_b, *o_b, *down_b;
    float eps1, eps2, scale;
    int64_t d, inter;
    int heads, kv_heads, hd;
    const uint16_t *norm_emb;
} layer_weights;

#if HAVE_AMX
/* layer_pre over the layer's weights; emb [rows][d] (with w->norm_emb) or NULL */
static int pre_rows(const uint16_t *h, const uint16_t *emb, int64_t rows, const layer_weights *w, const uint16_t *cos,
                    const uint16_t *ssin, uint16_t *qkv, int threads) {
    const int64_t d = w->d, in = emb ? 2 * d : d;
    uint16_t *x = malloc((size_t)(rows * in) * 2);
    if (!x) return -1;
    if (emb) {
        norm_rows_at(emb, rows, d, w->norm_emb, w->eps1, x, in);
        norm_rows_at(h, rows, d, w->norm1, w->eps1, x + d, in);
    } else {
        norm_rows(h, rows, d, w->norm1, w->eps1, x);
    }
    int status = amx_linear(x, rows, in, in, w->qkv_w, (int64_t)(w->heads + 2 * w->kv_heads) * w->hd, w->qkv_b, qkv, threads);
    free(x);
    if (!status) rotate_rows(qkv, rows, w->heads + 2 * w->kv_heads, w->heads + w->kv_heads, w->hd, cos, ssin);
    return status;
}
#endif

/* qkv [rows][heads + 2 kv_heads][hd] = norm(h) @ Wqkv.T (+ bias), the first heads + kv_heads
 * heads of each row rotated. h [rows][d]; cos, ssin [rows][hd]. d, hd: multiples of 32 (hd <=
 * 256). Returns 0, -1 when memory runs out, -3 without AMX. */
int layer_pre(const uint16_t *h, int64_t rows, int64_t d, const uint16_t *norm_w, float eps,
              const uint16_t *qkv_w, const float *qkv_b, int heads, int kv_heads, int hd,
              const uint16_t *cos, const uint16_t *ssin, uint16_t *qkv, int threads) {
#if HAVE_AMX
    layer_weights w = {0};
    w.norm1 = norm_w, w.eps1 = eps, w.qkv_w = qkv_w, w.qkv_b = qkv_b, w.d = d, w.heads = heads, w.kv_heads = kv_heads, w.hd = hd;
    return pre_rows(h, NULL, rows, &w, cos, ssin, qkv, threads);
#else
    (void)h; (void)rows; (void)d; (void)norm_w; (void)eps; (void)qkv_w; (void)qkv_b; (void)heads; (void)kv_heads;
    (void)hd; (void)cos; (void)ssin; (void)qkv; (void)threads;
    return -3;
#endif
}

/* h [rows][d] += (attn @ Wo.T + o_b), then h += down(silu(g) * u) with g|u = norm(h) @ Wgu.T
 * (gate rows first, then up: [2 inter][d]), in place. attn [rows][width] (row stride
 * attn_stride). d and inter: multiples of 16. Returns 0, -1 when memory runs out, -3 without AMX. */
int layer_post(uint16_t *h, int64_t rows, int64_t d, const uint16_t *attn, int64_t width, int64_t attn_stride,
               const uint16_t *o_w, const float *o_b, const uint16_t *norm_w, float eps,
               const uint16_t *gu_w, int64_t inter, const uint16_t *down_w, const float *down_b, int threads) {
#if HAVE_AMX
    uint16_t *y = malloc((size_t)(rows * (d + 3 * inter)) * 2);
    if (!y) return -1;
    uint16_t *gu = y + rows * d, *act = gu + rows * 2 * inter;
    int status = amx_linear(attn, rows, width, attn_stride, o_w, d, o_b, y, threads);
    if (!status) {
        add_into(h, y, rows * d);
        norm_rows(h, rows, d, norm_w, eps, y);
        status = amx_linear(y, rows, d, d, gu_w, 2 * inter, NULL, gu, threads);
    }
    if (!status) {
        silu_mul(gu, rows, inter, act);
        status = amx_linear(act, rows, inter, inter, down_w, d, down_b, y, threads);
    }
    if (!status) add_into(h, y, rows * d);
    free(y);
    return status;
#else
    (void)h; (void)rows; (void)d; (void)attn; (void)width; (void)attn_stride; (void)o_w; (void)o_b; (void)norm_w;
    (void)eps; (void)gu_w; (void)inter; (void)down_w; (void)down_b; (void)threads;
    return -3;
#endif
}


/* One whole layer over h [rows][d] (in place) after `length` cached entries: layer_pre; each
 * row's k and v to cache slot length + row (k, v [g][s][hd] at strides kv_sg, kv_ss); the exact
 * attention over the length + rows slots (mask [rows][length + rows] bf16 additive at row stride
 * mask_sn, or NULL: every slot visible); layer_post. Returns 0, -1 (memory), -2 (a row sees no
 * key or head dim over 256), -3 (no AMX). */
int layer_forward(uint16_t *h, const uint16_t *emb, int64_t rows, const layer_weights *w, const uint16_t *cos,
                  const uint16_t *ssin, uint16_t *cache_k, uint16_t *cache_v, int64_t kv_sg, int64_t kv_ss, int64_t length,
                  const uint16_t *mask, int64_t mask_sn, int threads, int attention_threads) {
#if HAVE_AMX
    const int heads = w->heads, kv = w->kv_heads, hd = w->hd, width = (hd + 15) / 16 * 16, all = heads + 2 * kv;
    const int64_t keys = length + rows;
    uint16_t *qkv = malloc((size_t)(rows * all * hd + rows * heads * hd) * 2);
    const int tiles = attention_on_amx(); /* the tile path keeps its own buffers: no vector work area */
    float *work = tiles ? NULL : malloc(sizeof(float) * (size_t)((2 * kv * width + BLOCK * (attention_threads < 1 ? 1 : attention_threads)) * (keys + 16)));
    int status = qkv && (work || tiles) ? 0 : -1;
    uint16_t *attn = qkv ? qkv + rows * all * hd : NULL;
    if (!status) status = pre_rows(h, emb, rows, w, cos, ssin, qkv, threads);
    if (!status) {
        for (int64_t r = 0; r < rows; r++)
            for (int g = 0; g < kv; g++) {
                memcpy(cache_k + g * kv_sg + (length + r) * kv_ss, qkv + (r * all + heads + g) * hd, (size_t)hd * 2);
                memcpy(cache_v + g * kv_sg + (length + r) * kv_ss, qkv + (r * all + heads + kv + g) * hd, (size_t)hd * 2);
            }
        status = invariant_attention(qkv, hd, (int64_t)all * hd, cache_k, cache_v, kv_sg, kv_ss, mask, mask_sn, attn,
                                     heads, kv, (int)rows, (int)keys, hd, w->scale, attention_threads, work);
        status = status == -4 ? -1 : status ? -2 : 0;
    }
    if (!status)
        status = layer_post(h, rows, w->d, attn, (int64_t)heads * hd, (int64_t)heads * hd, w->o_w, w->o_b, w->norm2, w->eps2,
                            w->gu_w, w->inter, w->down_w, w->down_b, threads);
    free(qkv);
    free(work);
    return status;
#else
    (void)h; (void)emb; (void)rows; (void)w; (void)cos; (void)ssin; (void)cache_k; (void)cache_v; (void)kv_sg; (void)kv_ss;
    (void)length; (void)mask; (void)mask_sn; (void)threads; (void)attention_threads;
    return -3;
#endif
}

/* out [rows][n] = norm(h) @ W.T (a drafter's final norm and head): h [rows][d]. Returns 0, -1, -3. */
int norm_linear(const uint16_t *h, int64_t rows, int64_t d, const uint16_t *norm_w, float eps, const uint16_t *w,
                int64_t n, uint16_t *out, int threads) {
#if HAVE_AMX
    uint16_t *x = malloc((size_t)(rows * d) * 2);
    if (!x) return -1;
    norm_rows(h, rows, d, norm_w, eps, x);
    int status = amx_linear(x, rows, d, d, w, n, NULL, out, threads);
    free(x);
    return status;
#else
    (void)h; (void)rows; (void)d; (void)norm_w; (void)eps; (void)w; (void)n; (void)out; (void)threads;
    return -3;
#endif
}
