/*
 * Edge coverage of a gcc-built extension for libFuzzer (as linked into atheris).
 *
 * gcc has no -fsanitize-coverage=inline-8bit-counters, only trace-pc: a call to
 * __sanitizer_cov_trace_pc() in every basic block. This file, linked into the fuzzing copy of
 * the extension, answers those calls itself (hidden symbol, so they never reach the deprecated
 * handler libFuzzer exports) by bumping an 8-bit counter picked by the caller's address, and
 * hands the counters to libFuzzer once the fuzz driver passes in libFuzzer's registration
 * functions (fuzz_cov_register, called through ctypes). Before that the counters are bumped but
 * nobody reads them.
 */
#include <stdint.h>

#define COV_BITS 14
#define COV_SLOTS (1u << COV_BITS)

static uint8_t counters[COV_SLOTS];
static uintptr_t pc_table[2 * COV_SLOTS];

__attribute__((visibility("hidden"), no_sanitize_address, no_sanitize_undefined))
void __sanitizer_cov_trace_pc(void) {
    uintptr_t pc = (uintptr_t)__builtin_return_address(0);
    uint64_t h = (uint64_t)pc * 0x9E3779B97F4A7C15ull;
    counters[h >> (64 - COV_BITS)]++;
}

typedef void (*counters_init_fn)(uint8_t *, uint8_t *);
typedef void (*pcs_init_fn)(const uintptr_t *, const uintptr_t *);

/* Returns the number of counters registered (0: already registered or no function given). */
__attribute__((visibility("default")))
int fuzz_cov_register(void *counters_init, void *pcs_init) {
    static int done;
    if (done || !counters_init) return 0;
    done = 1;
    for (uintptr_t i = 0; i < COV_SLOTS; i++) {
        pc_table[2 * i] = (uintptr_t)counters + i; /* a stand-in "PC" per slot, unique */
        pc_table[2 * i + 1] = 0;
    }
    ((counters_init_fn)counters_init)(counters, counters + COV_SLOTS);
    if (pcs_init) ((pcs_init_fn)pcs_init)(pc_table, pc_table + 2 * COV_SLOTS);
    return (int)COV_SLOTS;
}
