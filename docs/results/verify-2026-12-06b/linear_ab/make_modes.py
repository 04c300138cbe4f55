"""Writes /tmp/linear_kernel_modes.c: runtime/linear_kernel.c as it was before the change (commit
562f991, read from git) with a runtime switch of its 32-row prefetch, for run.sh's A/B:
nb_bytes 0 = the first pass prefetches whole 4 KB chunks (before), -1 = each pass prefetches its
own half of the next chunk (after), 1024 = before plus 1 KB of the next block prefetched to L2
per chunk of the second pass."""
import subprocess
from pathlib import Path

root = Path(__file__).resolve().parents[4]
src = subprocess.run(["git", "show", "562f991:runtime/linear_kernel.c"], cwd=root, check=True,
                     capture_output=True, text=True).stdout
old = "            if (prefetch && half == 0) prefetch_chunk(wb + c * 2048);\n"
new = """            if (nb_bytes == -1) {
                if (prefetch) { const char *p = (const char *)w + 4096; for (int line = 0; line < 2048; line += 64) _mm_prefetch(p + line, _MM_HINT_T0); }
            } else if (prefetch && half == 0) prefetch_chunk(wb + c * 2048);
            if (prefetch && half == 1 && next && nb_bytes > 0) {
                const char *p = (const char *)(next) + c * nb_bytes;
                for (int line = 0; line < nb_bytes; line += 64) _mm_prefetch(p + line, _MM_HINT_T2);
            }
"""
for a, b in ((old, new),
             ("static void block_32(const uint16_t *xa, int64_t kp, const uint16_t *wb, int64_t chunks, int prefetch, float *acc) {",
              "static void block_32(const uint16_t *xa, int64_t kp, const uint16_t *wb, int64_t chunks, int prefetch, float *acc, const uint16_t *next) {"),
             ("block_32(xp + r0 * kp, kp, wb, chunks, r0 == 0, acc);",
              "block_32(xp + r0 * kp, kp, wb, chunks, r0 == 0, acc, b + 1 < blocks ? wb + chunks * 2048 : 0);"),
             ("#define PREFETCH_AHEAD", "int nb_bytes = 0, nb_hint = 2;\n#define PREFETCH_AHEAD")):
    assert a in src, a
    src = src.replace(a, b)
Path("/tmp/linear_kernel_modes.c").write_text(src)
