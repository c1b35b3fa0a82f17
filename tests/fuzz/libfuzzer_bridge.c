/*
 * Preloaded ahead of gcc's libasan.so when a fuzz target runs under AddressSanitizer.
 *
 * libasan defines weak no-op versions of the SanitizerCoverage callbacks
 * (__sanitizer_cov_8bit_counters_init, __sanitizer_cov_trace_cmp8, ...). Preloaded, it comes first
 * in the symbol lookup order, so the libFuzzer inside atheris (atheris/core_with_libfuzzer, loaded
 * privately when fuzzing starts) would register its Python coverage counters with libasan, where
 * nobody reads them: the fuzzer runs blind. This library, first in LD_PRELOAD, defines those
 * callbacks and forwards each to the definition in atheris' core, found the first time one is
 * called. Tail calls keep the caller's return address, which libFuzzer reads as the PC.
 *
 * Needs ASAN_OPTIONS=verify_asan_link_order=0 (libasan is no longer the first preloaded library;
 * it still intercepts malloc and friends, which this library does not define).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdint.h>
#include <string.h>

#define CORE_NAME "atheris/core_with_libfuzzer"

static void *core;
static int looked;

static int find_core(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    if (info->dlpi_name && strstr(info->dlpi_name, CORE_NAME)) {
        *(void **)data = dlopen(info->dlpi_name, RTLD_NOW | RTLD_NOLOAD);
        return 1;
    }
    return 0;
}

static void *real(const char *name) {
    if (!core) {
        void *handle = NULL;
        dl_iterate_phdr(find_core, &handle);
        if (!handle) return NULL; /* not loaded yet: nothing is fuzzing, the call is dropped */
        core = handle;
        looked = 1;
    }
    return dlsym(core, name);
}

#define FORWARD(name, params, args)                                   \
    void name params {                                                \
        static void (*fn) params;                                     \
        if (!fn && !(fn = (void (*) params)real(#name))) return;     \
        fn args;                                                      \
    }

FORWARD(__sanitizer_cov_8bit_counters_init, (uint8_t *a, uint8_t *b), (a, b))
FORWARD(__sanitizer_cov_pcs_init, (const uintptr_t *a, const uintptr_t *b), (a, b))
FORWARD(__sanitizer_cov_trace_cmp1, (uint8_t a, uint8_t b), (a, b))
FORWARD(__sanitizer_cov_trace_cmp2, (uint16_t a, uint16_t b), (a, b))
FORWARD(__sanitizer_cov_trace_cmp4, (uint32_t a, uint32_t b), (a, b))
FORWARD(__sanitizer_cov_trace_cmp8, (uint64_t a, uint64_t b), (a, b))
FORWARD(__sanitizer_cov_trace_const_cmp1, (uint8_t a, uint8_t b), (a, b))
FORWARD(__sanitizer_cov_trace_const_cmp2, (uint16_t a, uint16_t b), (a, b))
FORWARD(__sanitizer_cov_trace_const_cmp4, (uint32_t a, uint32_t b), (a, b))
FORWARD(__sanitizer_cov_trace_const_cmp8, (uint64_t a, uint64_t b), (a, b))
FORWARD(__sanitizer_cov_trace_switch, (uint64_t a, uint64_t *b), (a, b))
FORWARD(__sanitizer_cov_trace_div4, (uint32_t a), (a))
FORWARD(__sanitizer_cov_trace_div8, (uint64_t a), (a))
FORWARD(__sanitizer_cov_trace_gep, (uintptr_t a), (a))
FORWARD(__sanitizer_cov_trace_pc_indir, (uintptr_t a), (a))

/* 1 once atheris' core was found (for a check from Python through ctypes). */
int fuzz_bridge_active(void) { return looked; }
