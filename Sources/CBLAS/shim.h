// OpenBLAS's CBLAS interface (Debian: libopenblas-dev; header under openblas-pthread/).
#include <cblas.h>

// Not declared by cblas.h, exported by OpenBLAS's pthreads build (driver/others/openblas_env.c,
// blas_server.c): re-read the OPENBLAS_* environment, stop the thread pool (it restarts on the
// next threaded call with the settings read), and the spin timeout in effect (log2 of cycles).
void openblas_read_env(void);
int blas_thread_shutdown_(void);
int openblas_thread_timeout(void);

// CPU feature bits for choosing an OpenBLAS kernel (Sources/Tensor/BLASKernel.swift): what the
// CPU has *and* the OS saves (XCR0), read with cpuid, so a kernel is never offered to a CPU or OS
// that would fault on its instructions. Zero on other architectures.
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

enum {
    SAMDISTILL_CPU_AVX = 1 << 0,        // AVX with ymm state saved by the OS
    SAMDISTILL_CPU_AVX2 = 1 << 1,
    SAMDISTILL_CPU_FMA = 1 << 2,
    SAMDISTILL_CPU_AVX512F = 1 << 3,    // with opmask/zmm state saved by the OS
    SAMDISTILL_CPU_AVX512DQ = 1 << 4,
    SAMDISTILL_CPU_AVX512BW = 1 << 5,
    SAMDISTILL_CPU_AVX512VL = 1 << 6,
    SAMDISTILL_CPU_AVX512BF16 = 1 << 7,
    SAMDISTILL_CPU_AVX512FP16 = 1 << 8,
    SAMDISTILL_CPU_AMX = 1 << 9,        // AMX-TILE and AMX-BF16 with tile state in XCR0
};

static inline uint32_t samdistill_cpu_features(void) {
    uint32_t f = 0;
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
    if (!osxsave) return 0;
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    uint64_t xcr0 = ((uint64_t)hi << 32) | lo;
    int ymm = (xcr0 & 0x6) == 0x6, zmm = ymm && (xcr0 & 0xE0) == 0xE0, tiles = (xcr0 & 0x60000) == 0x60000;
    if (!(avx && ymm)) return 0;
    f |= SAMDISTILL_CPU_AVX;
    if (fma) f |= SAMDISTILL_CPU_FMA;
    unsigned max = __get_cpuid_max(0, 0);
    if (max < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    if ((b >> 5) & 1) f |= SAMDISTILL_CPU_AVX2;
    if (zmm) {
        if ((b >> 16) & 1) f |= SAMDISTILL_CPU_AVX512F;
        if ((b >> 17) & 1) f |= SAMDISTILL_CPU_AVX512DQ;
        if ((b >> 30) & 1) f |= SAMDISTILL_CPU_AVX512BW;
        if ((b >> 31) & 1) f |= SAMDISTILL_CPU_AVX512VL;
        if ((d >> 23) & 1) f |= SAMDISTILL_CPU_AVX512FP16;
    }
    if (tiles && ((d >> 24) & 1) && ((d >> 22) & 1)) f |= SAMDISTILL_CPU_AMX;
    unsigned a1, b1, c1, d1;
    __cpuid_count(7, 1, a1, b1, c1, d1);
    if (zmm && ((a1 >> 5) & 1)) f |= SAMDISTILL_CPU_AVX512BF16;
#endif
    return f;
}

// cpuid leaf 1's EAX (stepping, model, family; 0 elsewhere) and the brand string (empty elsewhere).
static inline uint32_t samdistill_cpu_signature(void) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d)) return a;
#endif
    return 0;
}

static inline void samdistill_cpu_brand(char out[49]) {
    memset(out, 0, 49);
#if defined(__x86_64__)
    unsigned r[12];
    if (__get_cpuid_max(0x80000000, 0) < 0x80000004) return;
    for (unsigned i = 0; i < 3; i++) __cpuid(0x80000002 + i, r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]);
    memcpy(out, r, 48);
#endif
}
