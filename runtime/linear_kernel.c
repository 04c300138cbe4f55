/* The linears of specmux at inference on the CPU (docs/design.md "Exact bf16"; loaded by
 * runtime/native_linear.py): bf16 on Intel AMX (amx_linear) and float32 on vector FMAs
 * (f32_linear, any CPU the compiler targets).
 *
 * bf16: out[m, n] = bf16(sum_k x[m, k] w[n, k] + bias[n]): float32 accumulation, one TDPBF16PS per 32
 * values of k in k order, then the bias, then rounding to nearest even. Each output element is a
 * function of its own input row and its weight column alone (a tile multiply computes every
 * element from its row of A and its column of B, in a fixed order), so a row's result is the same
 * bits whatever the rows beside it, the row tile it lands in, or the thread that computes it:
 * a tree node's row equals the row plain decoding computes for the same token, at any row count.
 *
 * Speed: one-token and tree forwards are bound by reading the weights. The weight is packed once
 * (runtime/amx.py) in the order the loop reads it, 4 KB per 32 values of k for 64 outputs, and
 * the next 4 KB is prefetched while the current one is multiplied: reads run near the memory's
 * rate where oneDNN's kernel at a few rows ran at 0.6-0.9 of it (measured 2026-12-05).
 *
 * float32: out[m, n] = (sum_k x[m, k] w[n, k]) + bias[n], one fused multiply-add per k in k order
 * in one lane of a vector; the same per-element order at any row count and any vector width
 * (AVX-512 or AVX2: `f32_block`), so rows are invariant in float32 too. At one row it reads the
 * weight 1.3-1.7x faster than oneDNN's packed float32 kernel did; at 16-32 rows 1.05-1.15x
 * (2026-12-05, AMX VM, one thread).
 *
 * Layouts. bf16 packed: [n_pad / 64][k_pad / 32][4][16][16][2] bf16 (block b, k chunk c, tile t, row r,
 * column j, pair e) = w[64 b + 16 t + j, 32 c + 2 r + e], zero outside w. x: rows of k values
 * with stride x_stride (elements); copied here into a zero-padded buffer of whole tiles.
 * float32 packed: [n_pad / 64][k][64] float = w[64 b + j, i] at [b][i][j], zero past n; x read
 * in place (row stride x_stride).
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#include "amx_tiles.h"
#define HAVE_AMX 1
#else
#define HAVE_AMX 0
#endif

#define PREFETCH_AHEAD 4096 /* bytes: the next k chunk of the block (one chunk ahead measured best) */

/* 1 when this build has the AMX kernel and the OS lets the process use the tile registers. */
int amx_linear_ready(void) {
#if HAVE_AMX
    return amx_permitted();
#else
    return 0;
#endif
}

#if HAVE_AMX
/* acc [rows][64] float32 (+ bias) -> out rows row0.., columns c0..c0+cols, rounded to bf16 */
static void store_rows(const float *acc, int64_t row0, int64_t rows, int64_t c0, int64_t cols, int64_t n,
                       const float *bias, uint16_t *out) {
    for (int64_t r = 0; r < rows; r++) {
        uint16_t *o = out + (row0 + r) * n + c0;
        for (int64_t j = 0; j < cols; j += 16) {
            __mmask16 keep = cols - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (cols - j)) - 1);
            __m512 v = _mm512_load_ps(acc + r * 64 + j);
            if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(keep, bias + c0 + j));
            _mm256_mask_storeu_epi16(o + j, keep, (__m256i)_mm512_cvtneps_pbh(v));
        }
    }
}

/* the next k chunk's `bytes` from w (all 4 KB for block_16, the pass's half for block_32) */
static inline void prefetch_next(const uint16_t *w, int bytes) {
    const char *p = (const char *)w + PREFETCH_AHEAD;
    for (int line = 0; line < bytes; line += 64) _mm_prefetch(p + line, _MM_HINT_T0);
}

/* up to 16 rows: A one tile, the block's 64 columns in 4 accumulators (C tiles 0-3) */
static void block_16(const uint16_t *xa, int64_t kp, const uint16_t *wb, int64_t chunks, float *acc) {
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    for (int64_t c = 0; c < chunks; c++) {
        const uint16_t *w = wb + c * 2048;
        prefetch_next(w, 4096);
        _tile_loadd(4, xa + c * 32, kp * 2);
        _tile_loadd(5, w, 64);
        _tile_loadd(6, w + 512, 64);
        _tile_dpbf16ps(0, 4, 5);
        _tile_loadd(7, w + 1024, 64);
        _tile_dpbf16ps(1, 4, 6);
        _tile_loadd(5, w + 1536, 64);
        _tile_dpbf16ps(2, 4, 7);
        _tile_dpbf16ps(3, 4, 5);
    }
    _tile_stored(0, acc, 256);
    _tile_stored(1, acc + 16, 256);
    _tile_stored(2, acc + 32, 256);
    _tile_stored(3, acc + 48, 256);
}

/* 32 rows: two A tiles x two column tiles per pass (each loaded B tile serves both row tiles),
 * two passes for the block's 64 columns; acc [32][64]. Each pass prefetches only its own half of
 * the next chunk, so both passes stream from memory while they multiply: when the first pass
 * fetched whole chunks, the second ran its multiplies from L2 with no reads in flight, and a
 * 32-row forward's linears cost the weight stream plus half the multiplies (10.7 vs 9.0 ms best,
 * 30 layers, one thread; docs/results/verify-2026-12-06b). */
static void block_32(const uint16_t *xa, int64_t kp, const uint16_t *wb, int64_t chunks, int prefetch, float *acc) {
    const uint16_t *xb = xa + 16 * kp;
    for (int half = 0; half < 2; half++) {
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        for (int64_t c = 0; c < chunks; c++) {
            const uint16_t *w = wb + c * 2048 + half * 1024;
            if (prefetch) prefetch_next(w, 2048);
            _tile_loadd(4, xa + c * 32, kp * 2);
            _tile_loadd(6, w, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_loadd(5, xb + c * 32, kp * 2);
            _tile_dpbf16ps(2, 5, 6);
            _tile_loadd(7, w + 512, 64);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(3, 5, 7);
        }
        float *a = acc + half * 32;
        _tile_stored(0, a, 256);
        _tile_stored(1, a + 16, 256);
        _tile_stored(2, a + 16 * 64, 256);
        _tile_stored(3, a + 16 * 64 + 16, 256);
    }
}
#endif

/* out [m, n] bf16 = x [m, k] (bf16, row stride x_stride) @ w.T + bias (float32 [n] or NULL), w
 * packed as above with k_pad = k rounded up to 32 and n_pad = n rounded up to 64. Blocks of 64
 * outputs run on `threads` OpenMP threads (torch's pool: runtime/native.py). Returns 0, -1 when
 * memory runs out, -3 when this build has no AMX. */
int amx_linear(const uint16_t *x, int64_t m, int64_t k, int64_t x_stride, const uint16_t *packed, int64_t n,
               const float *bias, uint16_t *out, int threads) {
#if HAVE_AMX
    int64_t kp = (k + 31) / 32 * 32, chunks = kp / 32, blocks = (n + 63) / 64;
    int64_t mp = m <= 16 ? 16 : (m + 31) / 32 * 32;
    uint16_t *xp = aligned_alloc(64, (size_t)(mp * kp * 2 + 64) / 64 * 64);
    if (!xp) return -1;
    for (int64_t r = 0; r < mp; r++) {
        uint16_t *dst = xp + r * kp;
        if (r < m) {
            memcpy(dst, x + r * x_stride, (size_t)k * 2);
            memset(dst + k, 0, (size_t)(kp - k) * 2);
        } else {
            memset(dst, 0, (size_t)kp * 2);
        }
    }
    if (threads < 1) threads = 1;
    if (threads > blocks) threads = (int)blocks;
#pragma omp parallel num_threads(threads)
    {
        float acc[32 * 64] __attribute__((aligned(64)));
        configure_tiles();
#pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks; b++) {
            const uint16_t *wb = packed + b * chunks * 2048;
            int64_t c0 = b * 64, cols = n - c0 < 64 ? n - c0 : 64;
            if (mp == 16) {
                block_16(xp, kp, wb, chunks, acc);
                store_rows(acc, 0, m, c0, cols, n, bias, out);
                continue;
            }
            for (int64_t r0 = 0; r0 < mp; r0 += 32) {
                block_32(xp + r0 * kp, kp, wb, chunks, r0 == 0, acc);
                store_rows(acc, r0, m - r0 < 32 ? m - r0 : 32, c0, cols, n, bias, out);
            }
        }
        _tile_release();
    }
    free(xp);
    return 0;
#else
    (void)x; (void)m; (void)k; (void)x_stride; (void)packed; (void)n; (void)bias; (void)out; (void)threads;
    return -3;
#endif
}

/* ---- float32 ---------------------------------------------------------------------------- */

/* The accumulators must fit the vector registers: 24 of AVX-512's 32 for 6 rows x 64 outputs.
 * With 16 (AVX2) that block spills every step to the stack, and measured 2026-12-06 on an AMD
 * EPYC without AVX-512 a 16-node tree's forward cost 14 one-token forwards (oneDNN's: 1.7). There
 * the block is swept in passes that fit 16 registers: all 64 outputs at one row (the weight loads
 * fold into the multiply-adds), 32 at two rows, 16 at three to six (12 accumulators, 2 weight
 * vectors, a broadcast; 3 rows x 32 outputs spilled and measured 1.25x slower at 16 rows).
 * Four passes over a block read it from memory in the first and from L2 in the other three, so
 * the memory sat idle through three quarters of the multiplies: the first row group's passes
 * now prefetch the next block, a line per k (3-12 rows of SmolLM2's linears 0.71-0.80x the time,
 * 2026-12-06; docs/design.md "Exact float32").
 * Either way each output element is the same chain of fused multiply-adds in k order: only
 * which elements run side by side changes. */
#if defined(__AVX512F__)
#define F32_LANES 16
#else
#define F32_LANES 8
#endif
typedef float vnf __attribute__((vector_size(4 * F32_LANES)));

static inline vnf load_vnf(const float *p) {
    vnf v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* R rows (a constant after inlining) x V vectors of the block's outputs from column `col`: acc [R][64] */
static inline __attribute__((always_inline)) void f32_rows(const int R, const int V, const float *x, int64_t xs,
                                                           const float *wb, int64_t k, int col, int prefetch,
                                                           const float *ahead, float *acc) {
    vnf a[6][64 / F32_LANES];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < V; t++) a[r][t] = (vnf){0};
    for (int64_t i = 0; i < k; i++) {
        const float *w = wb + i * 64;
        if (prefetch) /* the weight row 8 k ahead (2 KB): the first pass streams from memory */
            for (int line = 0; line < 256; line += 64) __builtin_prefetch((const char *)w + 2048 + line, 0, 3);
        if (ahead) /* this pass's share of the next block (V vectors a k): its passes multiply from cache */
            for (int line = 0; line < V * F32_LANES; line += 16) __builtin_prefetch((const char *)(ahead + i * V * F32_LANES + line), 0, 3);
        w += col;
        for (int r = 0; r < R; r++) {
            float s = x[r * xs + i];
            for (int t = 0; t < V; t++) a[r][t] += s * load_vnf(w + t * F32_LANES);
        }
    }
    for (int r = 0; r < R; r++) memcpy(acc + r * 64 + col, a[r], V * sizeof(vnf));
}

/* rows (1..6) x all 64 outputs of the block: one pass where the accumulators fit, else passes
 * of fewer outputs (the first one prefetching) */
static void f32_block(int rows, const float *xr, int64_t xs, const float *wb, int64_t k, int first, const float *next,
                      float *acc) {
#if F32_LANES == 16
    (void)next;
    switch (rows) { /* one specialised loop per row count: the same arithmetic per element */
    case 1: f32_rows(1, 4, xr, xs, wb, k, 0, first, NULL, acc); break;
    case 2: f32_rows(2, 4, xr, xs, wb, k, 0, first, NULL, acc); break;
    case 3: f32_rows(3, 4, xr, xs, wb, k, 0, first, NULL, acc); break;
    case 4: f32_rows(4, 4, xr, xs, wb, k, 0, first, NULL, acc); break;
    case 5: f32_rows(5, 4, xr, xs, wb, k, 0, first, NULL, acc); break;
    default: f32_rows(6, 4, xr, xs, wb, k, 0, first, NULL, acc);
    }
#else
    if (rows == 1) {
        f32_rows(1, 8, xr, xs, wb, k, 0, first, NULL, acc);
        return;
    }
    if (rows == 2) {
        for (int col = 0; col < 64; col += 32) /* each pass fetches half the next block */
            f32_rows(2, 4, xr, xs, wb, k, col, first && col == 0, first && next ? next + col * k : NULL, acc);
        return;
    }
    for (int col = 0; col < 64; col += 16) {
        int fetch = first && col == 0;
        /* the first row group's four passes fetch the next block, a quarter each */
        const float *ahead = first && next ? next + col * k : NULL;
        switch (rows) {
        case 3: f32_rows(3, 2, xr, xs, wb, k, col, fetch, ahead, acc); break;
        case 4: f32_rows(4, 2, xr, xs, wb, k, col, fetch, ahead, acc); break;
        case 5: f32_rows(5, 2, xr, xs, wb, k, col, fetch, ahead, acc); break;
        default: f32_rows(6, 2, xr, xs, wb, k, col, fetch, ahead, acc);
        }
    }
#endif
}

/* ---- float32 over weights stored in fewer bits, exactly ------------------------------------ */

/* A float32 weight whose every value is exactly a bf16, or q * d + m on a grid of 2^bits integers
 * q per 32 values of k (d, m float32 per output and group; d * q exact, so the value is one
 * rounding of q * d + m, fused or not) is stored that way (runtime/native_linear.py finds the
 * encoding and checks every value; docs/design.md "Weights in fewer bits, exactly"). The kernel
 * rebuilds each weight vector from it and runs the float32 kernel's multiply-adds on it: the
 * same float32 weights, the same chain of fused multiply-adds in k order, the same bits as
 * `f32_rows` on the float32 copy. A one-token forward is bound by reading the weights, and
 * SmolLM2's linears (a Q4_1 GGUF) are read in 0.75 bytes a value instead of 4.
 * Layouts per block of 64 outputs (block b at b * k * bytes-per-k): bf16 [k][64]; grid8 int8
 * [k][64]; grid4 [k][32] bytes, two vectors' q per F32_LANES bytes (vector pair p: byte p L + j =
 * q[2 p L + j] | q[2 p L + L + j] << 4, L = F32_LANES: `f32_lanes()`); scales [k / 32][2][64]
 * float (d, then m) per block. */
enum { W_F32 = 0, W_BF16 = 1, W_GRID8 = 2, W_GRID4 = 3 };

typedef struct {
    int64_t format;      /* W_* */
    const void *data;    /* the packed values */
    const float *scales; /* grid formats: [n_pad / 64][k / 32][2][64] */
} f32_weight;

int f32_lanes(void) { return F32_LANES; }

typedef uint32_t vnu __attribute__((vector_size(4 * F32_LANES)));
typedef int32_t vni __attribute__((vector_size(4 * F32_LANES)));
typedef uint8_t vnu8 __attribute__((vector_size(F32_LANES)));
typedef int8_t vni8 __attribute__((vector_size(F32_LANES)));
typedef uint16_t vnu16 __attribute__((vector_size(2 * F32_LANES)));

/* F32_LANES stored values at p widened to 32-bit lanes (one vpmovzx / vpmovsx where the CPU has
 * it: GCC builds the generic conversion from scalar inserts) */
#if defined(__AVX2__)
#include <immintrin.h>
#endif
static inline vnu widen_u8(const void *p) {
#if F32_LANES == 16
    return (vnu)_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
#elif defined(__AVX2__)
    return (vnu)_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
#else
    vnu8 b;
    memcpy(&b, p, sizeof b);
    return __builtin_convertvector(b, vnu);
#endif
}
static inline vni widen_i8(const void *p) {
#if F32_LANES == 16
    return (vni)_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p));
#elif defined(__AVX2__)
    return (vni)_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
#else
    vni8 b;
    memcpy(&b, p, sizeof b);
    return __builtin_convertvector(b, vni);
#endif
}
static inline vnu widen_u16(const void *p) {
#if F32_LANES == 16
    return (vnu)_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
#elif defined(__AVX2__)
    return (vnu)_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
#else
    vnu16 h;
    memcpy(&h, p, sizeof h);
    return __builtin_convertvector(h, vnu);
#endif
}

/* the two weight vectors at outputs col .. col + 2 F32_LANES - 1 of the block, k index i */
static inline __attribute__((always_inline)) void weight_pair(const int fmt, const void *data, const float *scales,
                                                              int64_t i, int col, vnf *w0, vnf *w1) {
    if (fmt == W_BF16) {
        const uint16_t *p = (const uint16_t *)data + i * 64 + col;
        *w0 = (vnf)(widen_u16(p) << 16);
        *w1 = (vnf)(widen_u16(p + F32_LANES) << 16);
        return;
    }
    vnf q0, q1;
    if (fmt == W_GRID8) {
        const int8_t *p = (const int8_t *)data + i * 64 + col;
        q0 = __builtin_convertvector(widen_i8(p), vnf);
        q1 = __builtin_convertvector(widen_i8(p + F32_LANES), vnf);
    } else {
        vnu u = widen_u8((const uint8_t *)data + i * 32 + col / 2);
        q0 = __builtin_convertvector((vni)(u & 15), vnf);
        q1 = __builtin_convertvector((vni)(u >> 4), vnf);
    }
    const float *s = scales + (i / 32) * 128 + col;
    *w0 = q0 * load_vnf(s) + load_vnf(s + 64);
    *w1 = q1 * load_vnf(s + F32_LANES) + load_vnf(s + 64 + F32_LANES);
}

/* `f32_rows` over a stored weight: R rows x V (even) vectors from column col over k values i0 .. i1 - 1,
 * acc [R][64] (zeros when i0 is 0, else the chains so far: a float32 saved and reloaded is the
 * same float32, so chunking k changes no bit) */
static inline __attribute__((always_inline)) void stored_rows(const int fmt, const int R, const int V, const float *x,
                                                              int64_t xs, const void *data, const float *scales,
                                                              int64_t i0, int64_t i1, int col, float *acc) {
    vnf a[6][64 / F32_LANES];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < V; t++) a[r][t] = i0 ? load_vnf(acc + r * 64 + col + t * F32_LANES) : (vnf){0};
    for (int64_t i = i0; i < i1; i++)
        for (int t = 0; t < V; t += 2) { /* each pair used as soon as it is rebuilt: fewer live registers */
            vnf w0, w1;
            weight_pair(fmt, data, scales, i, col + t * F32_LANES, &w0, &w1);
            for (int r = 0; r < R; r++) {
                float s = x[r * xs + i];
                a[r][t] += s * w0;
                a[r][t + 1] += s * w1;
            }
        }
    for (int r = 0; r < R; r++) memcpy(acc + r * 64 + col, a[r], V * sizeof(vnf));
}

/* k values a chunk of the four-pass sweeps below: one scale group. Four passes over all of k (the
 * float32 kernel's order) each read a quarter of every line of the block, so the first waited
 * on memory for the whole block while doing a quarter of its multiplies; four passes over a
 * chunk use its lines while they are in L1, and the block streams from memory once, in order
 * (4 rows 0.81-0.92x the time on SmolLM2's linears; chunking the one- and two-pass sweeps,
 * which read their lines whole or in halves, measured 1.0-1.1x, so they run over all of k). */
#define STORED_CHUNK 32
#define STORED_FUSED_ROWS 24 /* up to this many rows rebuild the weights in every group of 6 */

/* rows (1..6) x the block's outputs lo .. hi - 1 (0, 64: all; 0, 32 or 32, 64: a half, for the
 * thread split in f32_linear): passes of as many outputs as the accumulators allow. Each output's
 * chain is the same whatever range it is computed in. */
static inline __attribute__((always_inline)) void stored_block(const int fmt, int rows, const float *xr, int64_t xs,
                                                               const void *data, const float *scales, int64_t k,
                                                               int lo, int hi, float *acc) {
#if F32_LANES == 16
    if (hi - lo == 64) {
        switch (rows) {
        case 1: stored_rows(fmt, 1, 4, xr, xs, data, scales, 0, k, 0, acc); break;
        case 2: stored_rows(fmt, 2, 4, xr, xs, data, scales, 0, k, 0, acc); break;
        case 3: stored_rows(fmt, 3, 4, xr, xs, data, scales, 0, k, 0, acc); break;
        case 4: stored_rows(fmt, 4, 4, xr, xs, data, scales, 0, k, 0, acc); break;
        case 5: stored_rows(fmt, 5, 4, xr, xs, data, scales, 0, k, 0, acc); break;
        default: stored_rows(fmt, 6, 4, xr, xs, data, scales, 0, k, 0, acc);
        }
        return;
    }
    switch (rows) {
    case 1: stored_rows(fmt, 1, 2, xr, xs, data, scales, 0, k, lo, acc); break;
    case 2: stored_rows(fmt, 2, 2, xr, xs, data, scales, 0, k, lo, acc); break;
    case 3: stored_rows(fmt, 3, 2, xr, xs, data, scales, 0, k, lo, acc); break;
    case 4: stored_rows(fmt, 4, 2, xr, xs, data, scales, 0, k, lo, acc); break;
    case 5: stored_rows(fmt, 5, 2, xr, xs, data, scales, 0, k, lo, acc); break;
    default: stored_rows(fmt, 6, 2, xr, xs, data, scales, 0, k, lo, acc);
    }
#else
    if (rows == 1) {
        if (hi - lo == 64)
            stored_rows(fmt, 1, 8, xr, xs, data, scales, 0, k, 0, acc);
        else
            stored_rows(fmt, 1, 4, xr, xs, data, scales, 0, k, lo, acc);
        return;
    }
    if (rows <= 3) { /* 8 or 12 accumulators */
        for (int col = lo; col < hi; col += 32) {
            if (rows == 2)
                stored_rows(fmt, 2, 4, xr, xs, data, scales, 0, k, col, acc);
            else
                stored_rows(fmt, 3, 4, xr, xs, data, scales, 0, k, col, acc);
        }
        return;
    }
    for (int64_t i0 = 0; i0 < k; i0 += STORED_CHUNK) {
        const int64_t i1 = k - i0 < STORED_CHUNK ? k : i0 + STORED_CHUNK;
        for (int col = lo; col < hi; col += 16) {
            switch (rows) {
            case 4: stored_rows(fmt, 4, 2, xr, xs, data, scales, i0, i1, col, acc); break;
            case 5: stored_rows(fmt, 5, 2, xr, xs, data, scales, i0, i1, col, acc); break;
            default: stored_rows(fmt, 6, 2, xr, xs, data, scales, i0, i1, col, acc);
            }
        }
    }
#endif
}

/* the block's float32 weights [k][64] rebuilt into out: for more rows than one group of 6,
 * whose passes then multiply from cache as the float32 kernel's do */
static inline __attribute__((always_inline)) void unpack_block(const int fmt, const void *data, const float *scales,
                                                               int64_t k, float *out) {
    for (int64_t i = 0; i < k; i++)
        for (int col = 0; col < 64; col += 2 * F32_LANES) {
            vnf w0, w1;
            weight_pair(fmt, data, scales, i, col, &w0, &w1);
            memcpy(out + i * 64 + col, &w0, sizeof w0);
            memcpy(out + i * 64 + col + F32_LANES, &w1, sizeof w1);
        }
}

static __attribute__((noinline)) void unpack_any(int64_t fmt, const void *data, const float *scales, int64_t k,
                                                 float *out) {
    if (fmt == W_BF16)
        unpack_block(W_BF16, data, scales, k, out);
    else if (fmt == W_GRID8)
        unpack_block(W_GRID8, data, scales, k, out);
    else
        unpack_block(W_GRID4, data, scales, k, out);
}

static __attribute__((noinline)) void bf16_block(int rows, const float *xr, int64_t xs, const void *d, const float *s, int64_t k, int lo, int hi, float *acc) {
    stored_block(W_BF16, rows, xr, xs, d, s, k, lo, hi, acc);
}
static __attribute__((noinline)) void grid8_block(int rows, const float *xr, int64_t xs, const void *d, const float *s, int64_t k, int lo, int hi, float *acc) {
    stored_block(W_GRID8, rows, xr, xs, d, s, k, lo, hi, acc);
}
static __attribute__((noinline)) void grid4_block(int rows, const float *xr, int64_t xs, const void *d, const float *s, int64_t k, int lo, int hi, float *acc) {
    stored_block(W_GRID4, rows, xr, xs, d, s, k, lo, hi, acc);
}

/* bytes of one packed block's values (64 outputs x k) */
static int64_t block_bytes(int64_t format, int64_t k) {
    return format == W_F32 ? k * 256 : format == W_BF16 ? k * 128 : format == W_GRID8 ? k * 64 : k * 32;
}

/* One block of 64 outputs (b), its outputs lo .. hi - 1, for all m rows: out and bias as in
 * f32_linear. `rebuilt`: the block's weights unpacked to float32 (many rows), else NULL. */
static void f32_linear_block(const float *x, int64_t m, int64_t k, int64_t x_stride, const f32_weight *w, int64_t n,
                             int64_t blocks, int64_t b, int lo, int hi, const float *bias, float *out,
                             const float *rebuilt) {
    const int64_t format = w->format;
    const float *wb = (const float *)((const char *)w->data + b * block_bytes(format, k));
    const float *sb = w->scales ? w->scales + b * (k / 32) * 128 : NULL;
    int64_t c0 = b * 64, cols = n - c0 < 64 ? n - c0 : 64, end = cols < hi ? cols : hi;
    float acc[6 * 64];
    for (int64_t r0 = 0; r0 < m; r0 += 6) {
        int rows = m - r0 < 6 ? (int)(m - r0) : 6, first = r0 == 0;
        const float *xr = x + r0 * x_stride;
        if (rebuilt)
            f32_block(rows, xr, x_stride, rebuilt, k, 0, NULL, acc);
        else if (format == W_F32)
            f32_block(rows, xr, x_stride, wb, k, first, b + 1 < blocks ? wb + k * 64 : NULL, acc);
        else if (format == W_BF16)
            bf16_block(rows, xr, x_stride, wb, sb, k, lo, hi, acc);
        else if (format == W_GRID8)
            grid8_block(rows, xr, x_stride, wb, sb, k, lo, hi, acc);
        else
            grid4_block(rows, xr, x_stride, wb, sb, k, lo, hi, acc);
        for (int r = 0; r < rows; r++) {
            float *o = out + (r0 + r) * n + c0;
            for (int64_t j = lo; j < end; j++) o[j] = bias ? acc[r * 64 + j] + bias[c0 + j] : acc[r * 64 + j];
        }
    }
}

/* out [m, n] float32 = x [m, k] (row stride x_stride) @ w.T + bias (float32 [n] or NULL), w
 * packed as above (any format; grid formats need k % 32 == 0). Rows go 6 at a time over each
 * block of 64 outputs (`f32_block`); blocks run on `threads` OpenMP threads. A stored weight whose
 * blocks do not divide evenly among the threads (SmolLM2's 576 outputs: 9 blocks, 5 and 4 on two
 * threads) is split in half blocks of 32 outputs instead, each thread a run of whole blocks and at
 * most a half at either end (every output's chain unchanged). Returns 0, -1 when memory runs out,
 * -3 for a format this build does not know. */
int f32_linear(const float *x, int64_t m, int64_t k, int64_t x_stride, const f32_weight *w, int64_t n,
               const float *bias, float *out, int threads) {
    int64_t blocks = (n + 63) / 64;
    if (w->format < W_F32 || w->format > W_GRID4) return -3;
    if (threads < 1) threads = 1;
    if (threads > blocks) threads = (int)blocks;
    const int64_t format = w->format, bytes = block_bytes(format, k);
    /* many rows (prefills): each block's weights rebuilt once, into float32, which the float32
     * kernel multiplies from cache; fewer rebuild them in each group of 6 rows as they go (8-16
     * rows 0.8-0.9x the time of rebuilding once, 32 even, 64 1.15x: SmolLM2's linears) */
    const int unpack = format != W_F32 && m > STORED_FUSED_ROWS;
    if (format != W_F32 && !unpack && blocks % threads != 0) {
        const int64_t halves = 2 * blocks;
#pragma omp parallel num_threads(threads)
        {
            const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
            for (int64_t h = halves * t / T, h1 = halves * (t + 1) / T; h < h1;) {
                const int whole = h % 2 == 0 && h + 1 < h1;
                f32_linear_block(x, m, k, x_stride, w, n, blocks, h / 2, whole ? 0 : (int)(h % 2) * 32,
                                 whole ? 64 : (int)(h % 2) * 32 + 32, bias, out, NULL);
                h += whole ? 2 : 1;
            }
        }
        return 0;
    }
    int failed = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : failed)
    for (int64_t b = 0; b < blocks; b++) {
        float *rebuilt = NULL;
        if (unpack) {
            rebuilt = malloc(sizeof(float) * (size_t)(k * 64));
            if (!rebuilt) {
                failed = 1;
                continue;
            }
            unpack_any(format, (const char *)w->data + b * bytes, w->scales ? w->scales + b * (k / 32) * 128 : NULL,
                       k, rebuilt);
        }
        f32_linear_block(x, m, k, x_stride, w, n, blocks, b, 0, 64, bias, out, rebuilt);
        free(rebuilt);
    }
    return failed ? -1 : 0;
}
