/* The AMX setup every tile kernel shares (runtime/linear_kernel.c, runtime/attention_amx.c; the
 * compiled layer includes both): the OS permission for the tile registers, and one tile
 * configuration, 8 tiles of 16 rows x 64 bytes (A: 16 rows x 32 bf16; B: 16 pairs of rows x 16
 * columns; C: 16 x 16 float32). Included only where the compiler targets AMX. */
#ifndef SPECMUX_AMX_TILES_H
#define SPECMUX_AMX_TILES_H
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* 1 when the OS lets this process use the tile registers (asked once per process) */
static inline int amx_permitted(void) {
    static int permitted = -1;
    if (permitted < 0) permitted = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    return permitted;
}

/* per thread, before its first tile instruction */
static inline void configure_tiles(void) {
    struct { uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) {
        c.rows[t] = 16;
        c.colsb[t] = 64;
    }
    _tile_loadconfig(&c);
}
#endif
