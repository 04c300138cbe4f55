/* The exact bf16 attention on AMX tiles (included by attention_kernel.c, whose helpers it uses;
 * docs/design.md "Exact bf16"). Same contract as the vector path there: a (query row, head)'s
 * output is a function of its q row and its visible keys in slot order alone, whatever the rows
 * beside it, the key axis' length or where masked keys sit. The tile multiplies fix each
 * element's arithmetic:
 *
 *   score  s = (q . k) * scale + mask     q . k: one TDPBF16PS per 32 head dims, in dim order
 *   weight w = exp(s - max over visible)  float32, then split w = hi + lo, both bf16
 *                                         (hi = bf16(w), lo = bf16(w - hi)): ~16 bits of w
 *   out      = (sum w v) / (sum w)        both sums one accumulation (a column of ones beside
 *                                         the values), 32 keys a TDPBF16PS (hi, then lo), over
 *                                         the row's visible keys *compacted*: chunk c holds its
 *                                         visible keys 32c .. 32c + 31 in slot order
 *
 * Why compacted chunks: a tile multiply adds its 32 products in an order, and with roundings, the
 * ISA does not pin down, so a chunk must hold the same keys in the same places in a tree row
 * (ancestors between masked siblings) as in plain decoding (contiguous). A row's leading run of
 * visible slots [0, lead) is already compacted: its first lead / 32 chunks are read in place from
 * the values packed once per call, in tile multiplies shared by every row of a tile (a row past
 * its own run adds zero weights there: acc + 0 is acc exactly, whatever the rounding); its other
 * visible keys are gathered, 32 a chunk, and added after, in order.
 *
 * Per (row, head) this costs a few tile multiplies per 32 keys where the vector path spends
 * ~100 vector multiply-adds: a 32-node tree's attention over 330 keys on a 135M target took
 * 10.6 ms a forward there (one thread, 30 layers).
 */
#include "amx_tiles.h"
#include <stdlib.h>

enum { TILE = 16, ACC = 5 }; /* (row, head) pairs a tile; accumulator tiles a pass (0-4; 5: B; 6, 7: A hi, lo) */

typedef struct {
    int hd, d32, nt, keys, kb, kc, rows; /* head dim, its chunks of 32 and tiles of 16; keys, their blocks of 16 and chunks of 32; query rows */
} shape_t;

typedef struct { /* one thread's buffers */
    uint16_t *qa, *whi, *wlo, *ta_hi, *ta_lo, *tb;
    float *sc, *acc;
    int *slots;
} scratch_t;

static inline __m512i load32(const uint16_t *p, int n) { /* 32 bf16 from p, zeros past the first n */
    if (n >= 32) return _mm512_loadu_si512(p);
    return n <= 0 ? _mm512_setzero_si512() : _mm512_maskz_loadu_epi16((__mmask32)((1ull << n) - 1), p);
}

static inline __m256i load16h(const uint16_t *p, int n) { /* 16 bf16 from p, zeros past the first n */
    if (n >= 16) return _mm256_loadu_si256((const __m256i *)p);
    return n <= 0 ? _mm256_setzero_si256() : _mm256_maskz_loadu_epi16((__mmask16)((1u << n) - 1), p);
}

static inline __m512i interleave(__m256i a, __m256i b) { /* [a0 b0 a1 b1 ...]: a B tile row's key pairs */
    return _mm512_or_si512(_mm512_cvtepu16_epi32(a), _mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

/* 16 float32 weights -> hi, lo bf16 (hi = bf16(w), lo = bf16(w - hi)), the one split every path uses */
static inline void split16(__m512 w, uint16_t *hi, uint16_t *lo) {
    __m256i h = (__m256i)_mm512_cvtneps_pbh(w);
    __m512 back = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    _mm256_storeu_si256((__m256i *)hi, h);
    _mm256_storeu_si256((__m256i *)lo, (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(w, back)));
}

/* the scores' B tiles: kp[j][c] = K[16 j + n][32 c + 2 r + e] at [r][n][e] (a 16 x 16 transpose of dim pairs) */
static void pack_keys(const uint16_t *k, int64_t ss, const shape_t *s, uint16_t *kp) {
    for (int j = 0; j < s->kb; j++)
        for (int c = 0; c < s->d32; c++) {
            v16f t[16];
            for (int n = 0; n < 16; n++) {
                __m512i x = 16 * j + n < s->keys ? load32(k + (16 * j + n) * ss + 32 * c, s->hd - 32 * c) : _mm512_setzero_si512();
                memcpy(&t[n], &x, sizeof x);
            }
            transpose16(t);
            memcpy(kp + ((int64_t)j * s->d32 + c) * 512, t, sizeof t);
        }
}

/* one values B tile: [r][n][e] = V[slot(2 r + e)][16 t + n], zeros where slot < 0 */
static void gather_values(const uint16_t *v, int64_t ss, const shape_t *s, const int *slot, int t, uint16_t *tile) {
    for (int r = 0; r < 16; r++) {
        int a = slot[2 * r], b = slot[2 * r + 1];
        __m256i va = a >= 0 ? load16h(v + a * ss + 16 * t, s->hd - 16 * t) : _mm256_setzero_si256();
        __m256i vb = b >= 0 ? load16h(v + b * ss + 16 * t, s->hd - 16 * t) : _mm256_setzero_si256();
        _mm512_storeu_si512(tile + r * 32, interleave(va, vb));
    }
}

/* the values' B tiles in slot order: vp[c][t] holds slots 32 c .. 32 c + 31 (zeros past keys) */
static void pack_values(const uint16_t *v, int64_t ss, const shape_t *s, uint16_t *vp) {
    int slot[32];
    for (int c = 0; c < s->kc; c++) {
        for (int j = 0; j < 32; j++) slot[j] = 32 * c + j < s->keys ? 32 * c + j : -1;
        for (int t = 0; t < s->nt; t++) gather_values(v, ss, s, slot, t, vp + ((int64_t)c * s->nt + t) * 512);
    }
}

static uint16_t ones_tile[512] __attribute__((aligned(64))); /* [r][0][e] = 1.0: the weights' sum in lane 0 */

__attribute__((constructor)) static void fill_ones_tile(void) {
    for (int r = 0; r < 16; r++) ones_tile[r * 32] = ones_tile[r * 32 + 1] = 0x3f80;
}

/* mask row -> ext[0]: its visible run from slot 0 (lead); ext[1]: one past its last visible slot
 * (end); ext[2]: its run of exact zeros from slot 0 (there the mask changes no score) */
static void row_extent(const uint16_t *m, int keys, int *ext) {
    if (!m) {
        ext[0] = ext[1] = ext[2] = keys;
        return;
    }
    const __m512 hidden = _mm512_set1_ps(MASKED);
    const __m256i magnitude = _mm256_set1_epi16(0x7fff);
    int s = 0, e = keys, z = 0;
    while (z + 16 <= keys && _mm256_testz_si256(_mm256_loadu_si256((const __m256i *)(m + z)), magnitude)) z += 16;
    while (z < keys && !(m[z] & 0x7fff)) z++;
    for (s = z; s + 16 <= keys && _mm512_cmp_ps_mask((__m512)load16(m + s), hidden, _CMP_GT_OQ) == 0xffff;) s += 16;
    while (s < keys && bf16_to_float(m[s]) > MASKED) s++;
    while (e >= 16 && _mm512_cmp_ps_mask((__m512)load16(m + e - 16), hidden, _CMP_GT_OQ) == 0) e -= 16;
    while (e > 0 && !(bf16_to_float(m[e - 1]) > MASKED)) e--;
    ext[0] = s;
    ext[1] = e;
    ext[2] = z;
}

#define ACC_TILES(X) X(0) X(1) X(2) X(3) X(4) /* tile numbers must be constants */

/* tiles 0..m-1 += A (hi: tile 6, lo: tile 7) x B[u] (tile 5 in turn), hi then lo */
static inline void multiply_into(int m, const uint16_t *const *b) {
#define STEP(U) if (U < m) { _tile_loadd(5, b[U], 64); _tile_dpbf16ps(U, 6, 5); _tile_dpbf16ps(U, 7, 5); }
    ACC_TILES(STEP)
#undef STEP
}

static inline void load_acc(int m, const float *acc, int64_t stride) {
#define LOAD(U) if (U < m) _tile_loadd(U, acc + 16 * U, stride * 4);
    ACC_TILES(LOAD)
#undef LOAD
}

static inline void store_acc(int m, float *acc, int64_t stride) {
#define STORE(U) if (U < m) _tile_stored(U, acc + 16 * U, stride * 4);
    ACC_TILES(STORE)
#undef STORE
}

/* scores of the tile's pairs (A: qa) against key blocks 0..nb-1, four blocks a pass -> sc [16][stride] */
static void score_tiles(const shape_t *s, const uint16_t *qa, const uint16_t *kp, int nb, float *sc, int64_t stride) {
    for (int j0 = 0; j0 < nb; j0 += 4) {
        int m = nb - j0 < 4 ? nb - j0 : 4;
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        for (int c = 0; c < s->d32; c++) {
            const uint16_t *b = kp + ((int64_t)j0 * s->d32 + c) * 512;
            const int64_t next = (int64_t)s->d32 * 512;
            _tile_loadd(4, qa + 32 * c, s->d32 * 64);
            _tile_loadd(5, b, 64);
            _tile_dpbf16ps(0, 4, 5);
            if (m > 1) { _tile_loadd(6, b + next, 64); _tile_dpbf16ps(1, 4, 6); }
            if (m > 2) { _tile_loadd(7, b + 2 * next, 64); _tile_dpbf16ps(2, 4, 7); }
            if (m > 3) { _tile_loadd(5, b + 3 * next, 64); _tile_dpbf16ps(3, 4, 5); }
        }
        _tile_stored(0, sc + 16 * j0, stride * 4);
        if (m > 1) _tile_stored(1, sc + 16 * (j0 + 1), stride * 4);
        if (m > 2) _tile_stored(2, sc + 16 * (j0 + 2), stride * 4);
        if (m > 3) _tile_stored(3, sc + 16 * (j0 + 3), stride * 4);
    }
}

/* One row of scores (nb blocks) -> weights: scale, mask, w = exp(s - max); below `full` (a
 * multiple of 32) split into hi, lo, past it kept in row as float32. `zero`: the mask's run of
 * exact zeros (x + 0 is x, so those blocks skip it). */
static void softmax_row(float *row, const uint16_t *m, int keys, int nb, float scale, int zero, int full,
                        uint16_t *hi, uint16_t *lo) {
    v16f tops = (v16f){0} - INFINITY;
    for (int s0 = 0; s0 < 16 * nb; s0 += 16) {
        v16f x = load_floats(row + s0) * scale;
        if (s0 + 16 > zero) {
            v16f mk = m ? load_mask(m + s0, keys - s0) : (v16f){0};
            v16u visible = (v16u)(mk > MASKED) & (v16u)(lane_index() < (float)(keys - s0));
            x = x + mk;
            x = (v16f)((visible & (v16u)x) | (~visible & (v16u)((v16f){0} - INFINITY)));
        }
        store_lanes(row + s0, x);
        tops = (v16f)_mm512_max_ps((__m512)x, (__m512)tops); /* the max: exact in any order */
    }
    float top = _mm512_reduce_max_ps((__m512)tops);
    for (int s0 = 0; s0 < 16 * nb; s0 += 16) {
        v16f w = exp16(load_floats(row + s0) - top);
        if (s0 < full) split16((__m512)w, hi + s0, lo + s0);
        else store_lanes(row + s0, w);
    }
}

/* One tile: kv head g's pairs first .. first + count - 1 (row-major over (row, head of the group)). */
static void amx_tile(const shape_t *s, int g, int first, int count, int group, int heads, const uint16_t *q,
                     int64_t q_sh, int64_t q_sn, const uint16_t *mask, int64_t mask_sn, const int *ext,
                     float scale, const uint16_t *kp, const uint16_t *vp, const uint16_t *v, int64_t v_ss,
                     uint16_t *out, scratch_t *w) {
    const int64_t qs = (int64_t)s->d32 * 32, ss = 16 * (int64_t)s->kb, ws = 32 * (int64_t)s->kc, as = 16 * (int64_t)(s->nt + 1);
    const int ntiles = s->nt + 1; /* the values' tiles, then the ones */
    const int *lead = ext, *end = ext + s->rows, *zero = ext + 2 * s->rows;
    int kend = 0, fmax = 0;
    for (int r = 0; r < TILE; r++) {
        int i = (first + r) / group, h = g * group + (first + r) % group;
        for (int c = 0; c < s->d32; c++)
            _mm512_storeu_si512(w->qa + r * qs + 32 * c,
                                r < count ? load32(q + h * q_sh + i * q_sn + 32 * c, s->hd - 32 * c) : _mm512_setzero_si512());
        if (r < count) {
            kend = end[i] > kend ? end[i] : kend;
            fmax = lead[i] / 32 > fmax ? lead[i] / 32 : fmax;
        }
    }
    const int nb = (kend + 15) / 16;
    score_tiles(s, w->qa, kp, nb, w->sc, ss);
    for (int r = 0; r < count; r++) { /* the in-place chunks' A rows (zero past the row's own) */
        int i = (first + r) / group, full = 32 * (lead[i] / 32);
        softmax_row(w->sc + r * ss, mask ? mask + i * mask_sn : NULL, s->keys, nb, scale, zero[i], full,
                    w->whi + r * ws, w->wlo + r * ws);
        memset(w->whi + r * ws + full, 0, 2 * (size_t)(32 * fmax - full));
        memset(w->wlo + r * ws + full, 0, 2 * (size_t)(32 * fmax - full));
    }
    for (int r = count; r < TILE; r++) {
        memset(w->whi + r * ws, 0, 64 * (size_t)fmax);
        memset(w->wlo + r * ws, 0, 64 * (size_t)fmax);
    }
    /* the chunks every row reads in place, ACC output tiles a pass */
    for (int t0 = 0; t0 < ntiles; t0 += ACC) {
        int m = ntiles - t0 < ACC ? ntiles - t0 : ACC;
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3); _tile_zero(4);
        for (int c = 0; c < fmax; c++) {
            const uint16_t *b[ACC];
            for (int u = 0; u < m; u++) b[u] = t0 + u < s->nt ? vp + ((int64_t)c * s->nt + t0 + u) * 512 : ones_tile;
            _tile_loadd(6, w->whi + 32 * c, ws * 2);
            _tile_loadd(7, w->wlo + 32 * c, ws * 2);
            multiply_into(m, b);
        }
        store_acc(m, w->acc + 16 * t0, as);
    }
    /* each row's other visible keys, gathered 32 a chunk, after its in-place ones */
    for (int r0 = 0; r0 < count;) {
        int i = (first + r0) / group, r1 = r0, n = 0;
        while (r1 < count && (first + r1) / group == i) r1++;
        const uint16_t *mrow = mask ? mask + i * mask_sn : NULL;
        for (int sl = 32 * (lead[i] / 32); sl < end[i]; sl++)
            if (!mrow || bf16_to_float(mrow[sl]) > MASKED) w->slots[n++] = sl;
        for (int c0 = 0; c0 < n; c0 += 32) {
            int *slot = w->slots + c0, have = n - c0 < 32 ? n - c0 : 32;
            for (int j = have; j < 32; j++) slot[j] = -1;
            /* the A rows of this query row's pairs: their weights at the chunk's slots (zero where
             * none); the tile's other rows zero, so the other pairs' accumulators pass unchanged */
            const __m512i i0 = _mm512_loadu_si512(slot), i1 = _mm512_loadu_si512(slot + 16);
            const __mmask16 k0 = _mm512_cmpge_epi32_mask(i0, _mm512_setzero_si512());
            const __mmask16 k1 = _mm512_cmpge_epi32_mask(i1, _mm512_setzero_si512());
            for (int u = 0; u < r1 - r0; u++) {
                const float *row = w->sc + (r0 + u) * ss;
                split16(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), k0, i0, row, 4), w->ta_hi + u * 32, w->ta_lo + u * 32);
                split16(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), k1, i1, row, 4), w->ta_hi + u * 32 + 16,
                        w->ta_lo + u * 32 + 16);
            }
            memset(w->ta_hi + (r1 - r0) * 32, 0, 64 * (size_t)(TILE - (r1 - r0)));
            memset(w->ta_lo + (r1 - r0) * 32, 0, 64 * (size_t)(TILE - (r1 - r0)));
            for (int t0 = 0; t0 < ntiles; t0 += ACC) {
                int m = ntiles - t0 < ACC ? ntiles - t0 : ACC;
                const uint16_t *b[ACC];
                for (int u = 0; u < m; u++) {
                    if (t0 + u == s->nt) {
                        b[u] = ones_tile;
                    } else {
                        gather_values(v, v_ss, s, slot, t0 + u, w->tb + u * 512);
                        b[u] = w->tb + u * 512;
                    }
                }
                load_acc(m, w->acc + r0 * as + 16 * t0, as);
                _tile_loadd(6, w->ta_hi, 64);
                _tile_loadd(7, w->ta_lo, 64);
                multiply_into(m, b);
                store_acc(m, w->acc + r0 * as + 16 * t0, as);
            }
        }
        r0 = r1;
    }
    for (int r = 0; r < count; r++) {
        int i = (first + r) / group, h = g * group + (first + r) % group;
        const float *a = w->acc + r * as;
        __m512 total = _mm512_set1_ps(a[16 * s->nt]);
        uint16_t *o = out + ((int64_t)i * heads + h) * s->hd;
        for (int t = 0; t < s->nt; t++) {
            int left = s->hd - 16 * t;
            __m256i y = (__m256i)_mm512_cvtneps_pbh(_mm512_div_ps(_mm512_loadu_ps(a + 16 * t), total));
            _mm256_mask_storeu_epi16(o + 16 * t, left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1), y);
        }
    }
}

static void free_scratch(scratch_t *w) {
    free(w->qa); free(w->whi); free(w->wlo); free(w->ta_hi); free(w->ta_lo); free(w->tb);
    free(w->sc); free(w->acc); free(w->slots);
}

static int alloc_scratch(const shape_t *s, scratch_t *w) {
    size_t a = 64;
#define ALLOC(n) aligned_alloc(a, ((size_t)(n) + a - 1) / a * a)
    w->qa = ALLOC(2 * TILE * s->d32 * 32);
    w->whi = ALLOC(2 * TILE * 32 * s->kc);
    w->wlo = ALLOC(2 * TILE * 32 * s->kc);
    w->ta_hi = ALLOC(2 * TILE * 32);
    w->ta_lo = ALLOC(2 * TILE * 32);
    w->tb = ALLOC(2 * 512 * ACC);
    w->sc = ALLOC(4 * TILE * 16 * s->kb);
    w->acc = ALLOC(4 * 2 * TILE * 16 * (s->nt + 1)); /* 32 rows: a gathered chunk's 16-row tiles start at any pair */
    w->slots = ALLOC(sizeof(int) * (32 * (size_t)s->kc + 32));
#undef ALLOC
    if (!(w->qa && w->whi && w->wlo && w->ta_hi && w->ta_lo && w->tb && w->sc && w->acc && w->slots)) return -1;
    memset(w->acc, 0, 4 * 2 * TILE * 16 * (size_t)(s->nt + 1)); /* rows no pair owns stay finite */
    return 0;
}

/* invariant_attention's arguments (attention_kernel.c), on AMX. Returns 0, or -4 when memory runs out. */
static int amx_attention(const uint16_t *q, int64_t q_sh, int64_t q_sn, const uint16_t *k, const uint16_t *v,
                         int64_t kv_sg, int64_t kv_ss, const uint16_t *mask, int64_t mask_sn, uint16_t *out,
                         int heads, int kv_heads, int rows, int keys, int hd, float scale, int threads) {
    if (threads < 1) threads = 1;
    shape_t s = {hd, (hd + 31) / 32, (hd + 15) / 16, keys, (keys + 15) / 16, (keys + 31) / 32, rows};
    const int group = heads / kv_heads, tiles = (rows * group + TILE - 1) / TILE;
    const int64_t kps = (int64_t)s.kb * s.d32 * 512, vps = (int64_t)s.kc * s.nt * 512;
    uint16_t *packed = aligned_alloc(64, (size_t)(kv_heads * (kps + vps)) * 2);
    int *extent = malloc(sizeof(int) * 3 * (size_t)rows), ext[3], failed = !packed || !extent;
    scratch_t *scratch = calloc((size_t)threads, sizeof(scratch_t));
    failed |= !scratch;
    for (int t = 0; !failed && t < threads; t++) failed |= alloc_scratch(&s, scratch + t);
    if (!failed) {
        for (int i = 0; i < rows; i++) {
            row_extent(mask ? mask + i * mask_sn : NULL, keys, ext);
            for (int j = 0; j < 3; j++) extent[j * rows + i] = ext[j];
        }
        #pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
        for (int t = 0; t < 2 * kv_heads; t++) {
            uint16_t *base = packed + (int64_t)(t / 2) * (kps + vps);
            if (t % 2) pack_values(v + (t / 2) * kv_sg, kv_ss, &s, base + kps);
            else pack_keys(k + (t / 2) * kv_sg, kv_ss, &s, base);
        }
        #pragma omp parallel num_threads(threads) if (threads > 1)
        {
            int me = 0;
#ifdef _OPENMP
            me = omp_get_thread_num();
#endif
            configure_tiles();
            #pragma omp for schedule(static)
            for (int t = 0; t < kv_heads * tiles; t++) {
                int g = t / tiles, first = (t % tiles) * TILE, count = rows * group - first < TILE ? rows * group - first : TILE;
                const uint16_t *base = packed + (int64_t)g * (kps + vps);
                amx_tile(&s, g, first, count, group, heads, q, q_sh, q_sn, mask, mask_sn, extent, scale,
                         base, base + kps, v + g * kv_sg, kv_ss, out, scratch + me);
            }
            _tile_release();
        }
    }
    for (int t = 0; scratch && t < threads; t++) free_scratch(scratch + t);
    free(scratch);
    free(packed);
    free(extent);
    return failed ? -4 : 0;
}
