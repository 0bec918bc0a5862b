/* Fused SimHash retrieval for CPU: for each row, look up the packed signature of every behaviour,
 * XOR + popcount against the candidate's signature, and select the k nearest with a counting
 * select over the (small, integer) distances. One pass over the window, no [B, L] temporaries
 * beyond a per-thread distance buffer, rows in parallel.
 *
 * Order of the result: distance ascending, ties to the more recent (higher) position; padding is
 * given a distance above any real one, so it is taken only when a row has fewer than k real
 * behaviours, and comes back with found = 0. Same contract as hamming_top_k() in simhash.py.
 *
 * Two entry points, one body: item ids as int64 or as int32 (the batch builder's windows).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

/* Distances are counted into HISTOGRAMS interleaved histograms, one per position modulo
 * HISTOGRAMS, summed before the select: distances cluster around m / 2, and consecutive
 * increments of one counter wait on each other (store-to-load forwarding). With the 64-bit pass
 * below (no branch on the mask), 256 x 16,384 on 2 threads: 16-22 -> 8 ms. */
#define HISTOGRAMS 4

/* Rows are handed out a few at a time (schedule dynamic), not split in equal halves up front:
 * when another process shares a core, the thread on the free core takes the rows the other
 * cannot get to, instead of the whole pass waiting for the slowed half (the result of a row does
 * not depend on which thread computes it). */

#define HAMMING_TOPK(NAME, ID_TYPE) \
int NAME(const ID_TYPE *history,   /* [B, L] item ids */                                                \
                        const uint64_t *table,    /* [V, W] packed signatures */                        \
                        const uint64_t *query,    /* [B, W] */                                          \
                        const uint8_t *mask,      /* [B, L] 1 = real behaviour */                       \
                        int64_t rows, int64_t length, int64_t words, int64_t k, int64_t num_items,      \
                        int threads,                                                                    \
                        int64_t *out_index,       /* [B, k] */                                          \
                        uint8_t *out_found)       /* [B, k] */                                          \
{                                                                                                       \
    const int64_t pad = 64 * words + 1;                                                                 \
    const int64_t bins = pad + 2;                                                                       \
    int failed = 0;                                                                                     \
_Pragma("omp parallel num_threads(threads)")                                                               \
    {                                                                                                   \
        uint16_t *distance = malloc(sizeof(uint16_t) * length);                                         \
        int64_t *start = malloc(sizeof(int64_t) * bins * HISTOGRAMS);                                           \
        if (!distance || !start) {                                                                      \
_Pragma("omp atomic write")                                                                                \
            failed = 1;                                                                                 \
        } else {                                                                                        \
_Pragma("omp for schedule(dynamic, 8)")                                                                        \
            for (int64_t b = 0; b < rows; b++) {                                                        \
                const ID_TYPE *ids = history + b * length;                                              \
                const uint8_t *real = mask + b * length;                                                \
                const uint64_t *q = query + b * words;                                                  \
                memset(start, 0, sizeof(int64_t) * bins * HISTOGRAMS);                                \
                if (words == 1) { /* the common 64-bit signature: no branch on the mask, 4 positions a round */\
                    const uint64_t q0 = q[0];                                                           \
                    int64_t j = 0;                                                                      \
                    for (; j + HISTOGRAMS <= length; j += HISTOGRAMS) {                                 \
                        for (int64_t u = 0; u < HISTOGRAMS; u++) {                                      \
                            int64_t id = ids[j + u];                                                    \
                            int ok = real[j + u] && id >= 0 && id < num_items;                          \
                            int64_t d = ok ? __builtin_popcountll(table[ok ? id : 0] ^ q0) : pad;       \
                            distance[j + u] = (uint16_t)d;                                              \
                            start[u * bins + d + 1]++;                                                  \
                        }                                                                               \
                    }                                                                                   \
                    for (; j < length; j++) {                                                           \
                        int64_t id = ids[j];                                                            \
                        int ok = real[j] && id >= 0 && id < num_items;                                  \
                        int64_t d = ok ? __builtin_popcountll(table[ok ? id : 0] ^ q0) : pad;           \
                        distance[j] = (uint16_t)d;                                                      \
                        start[d + 1]++;                                                                 \
                    }                                                                                   \
                } else {                                                                                \
                    for (int64_t j = 0; j < length; j++) {                                              \
                        int64_t d = pad;                                                                \
                        int64_t id = ids[j];                                                            \
                        if (real[j] && id >= 0 && id < num_items) {                                     \
                            const uint64_t *code = table + id * words;                                  \
                            d = 0;                                                                      \
                            for (int64_t w = 0; w < words; w++) d += __builtin_popcountll(code[w] ^ q[w]);\
                        }                                                                               \
                        distance[j] = (uint16_t)d;                                                      \
                        start[(j % HISTOGRAMS) * bins + d + 1]++;                                       \
                    }                                                                                   \
                }                                                                                       \
                for (int64_t h = 1; h < HISTOGRAMS; h++)                                                \
                    for (int64_t d = 0; d < bins; d++) start[d] += start[h * bins + d];                 \
                /* start[d] = how many positions are nearer than d; t = the distance of the k-th */     \
                int64_t t = 0;                                                                          \
                for (int64_t d = 1; d <= pad + 1; d++) start[d] += start[d - 1];                        \
                while (start[t + 1] < k) t++;                                                           \
                int64_t ties_left = k - start[t];                                                       \
                int64_t *out = out_index + b * k;                                                       \
                uint8_t *found = out_found + b * k;                                                     \
                /* newest first, placed into per-distance slots: distance, then recency, in one pass */ \
                for (int64_t j = length - 1; j >= 0; j--) {                                             \
                    int64_t d = distance[j];                                                            \
                    if (d > t || (d == t && ties_left == 0)) continue;                                  \
                    if (d == t) ties_left--;                                                            \
                    int64_t slot = start[d]++;                                                          \
                    out[slot] = j;                                                                      \
                    found[slot] = d < pad;                                                              \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
        free(distance);                                                                                 \
        free(start);                                                                                    \
    }                                                                                                   \
    return failed;                                                                                      \
}

HAMMING_TOPK(etarec_hamming_topk, int64_t)
HAMMING_TOPK(etarec_hamming_topk_i32, int32_t)

/* category_of[ids[j]] = categories[j] for every j with 0 <= ids[j] < num_items: the scatter of
 * distinct_items() (nn/embeddings.py) in one sequential pass, 3-5x faster than torch's index_put
 * over the 4M ids of a 256 x 16,384 window. One category per item, so the write order is moot. */
#define CATEGORY_OF(NAME, ID_TYPE)                                                                \
void NAME(const ID_TYPE *ids, const ID_TYPE *categories, int64_t n, int64_t num_items,            \
          int64_t *category_of)                                                                  \
{                                                                                                 \
    for (int64_t j = 0; j < n; j++) {                                                             \
        int64_t id = ids[j];                                                                      \
        if (id >= 0 && id < num_items) category_of[id] = categories[j];                           \
    }                                                                                             \
}

CATEGORY_OF(etarec_category_of, int64_t)
CATEGORY_OF(etarec_category_of_i32, int32_t)

/* out[r, w] = the bits of x[r, 64 w + j] (+ y[rows_of[r], 64 w + j] where y is given) > 0,
 * j = 0..63, packed: SimHash's sign(x . H) > 0 and pack_bits() in one pass over the projections,
 * rows in parallel; with y, a whole item table's signatures from its item-row products x [V, m]
 * and category-row products y [C, m] (rows_of = each item's category). The sum is the float32 add
 * torch's does, and the compare is ordered (NaN and -0.0 give 0), so the bits are torch's. Four
 * compares per instruction where SSE is there (x86-64 always), one at a time elsewhere. */
void etarec_sign_pack(const float *x, const float *y, const int64_t *rows_of, int64_t rows, int64_t bits,
                      int threads, uint64_t *out)
{
    const int64_t words = (bits + 63) / 64;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1024)
    for (int64_t r = 0; r < rows; r++) {
        const float *v = x + r * bits;
        const float *u = y ? y + rows_of[r] * bits : NULL;
        for (int64_t w = 0; w < words; w++) {
            const int64_t first = 64 * w, end = bits - first < 64 ? bits - first : 64;
            uint64_t word = 0;
            int64_t j = 0;
#if defined(__SSE__) || defined(_M_X64)
            const __m128 zero = _mm_setzero_ps();
            if (u) {
                for (; j + 4 <= end; j += 4) {
                    __m128 sum = _mm_add_ps(_mm_loadu_ps(v + first + j), _mm_loadu_ps(u + first + j));
                    word |= (uint64_t)_mm_movemask_ps(_mm_cmpgt_ps(sum, zero)) << j;
                }
            } else {
                for (; j + 4 <= end; j += 4)
                    word |= (uint64_t)_mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(v + first + j), zero)) << j;
            }
#endif
            for (; j < end; j++) word |= (uint64_t)((u ? v[first + j] + u[first + j] : v[first + j]) > 0.0f) << j;
            out[r * words + w] = word;
        }
    }
}
