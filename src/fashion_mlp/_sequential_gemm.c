/* Matrix products that give the same bits on every CPU: fashion_mlp.linalg's kernel.
 *
 * Every element of C = A B (+ bias) is defined as ONE chain of fused multiply-adds over k, in
 * order:
 *
 *     c[i][j] = fma(a[i][K-1], b[K-1][j], ... fma(a[i][1], b[1][j], fma(a[i][0], b[0][j], init)))
 *
 * with init = bias[j] (or 0). An IEEE fused multiply-add rounds once, exactly, on every CPU that
 * has one, so the result is fixed by this formula alone. The kernels below only choose how many
 * of these independent chains run side by side: 8 per AVX2 register, 16 per AVX-512 register,
 * one in the portable C fallback (fmaf). They never split or reorder a chain, so the vector
 * width, the cache blocking (a chain paused at a block edge is stored as a float and resumed
 * from it) and the thread count change nothing. BLAS libraries (MKL, OpenBLAS) instead split
 * the k-sum across vector lanes and blocks that depend on the CPU model and the thread count,
 * which is why their products differ between Intel and AMD machines.
 *
 * Built by setuptools (pyproject.toml) with OpenMP; imported after torch, it shares torch's
 * OpenMP runtime (libgomp.so.1), so its threads and torch's are one pool and do not fight.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Depth of one block of k: a packed B panel (KC x NR floats, 16-32 KiB) stays in L1. */
#ifndef KC
#define KC 256
#endif
/* Most rows of A packed at once (MC x KC floats, at most 384 KiB): stays in L2. */
#ifndef MC_MAX
#define MC_MAX 384
#endif
#define MR_MAX 12
#define NR_MAX 32

enum start { FROM_ZERO, FROM_BIAS, FROM_C };

typedef void (*micro_kernel)(long kc, const float *a, const float *b, float *c, long ldc,
                             enum start start, const float *bias);

typedef struct {
    const char *name;
    int mr, nr; /* the tile of C one call computes: mr rows, nr columns */
    micro_kernel kernel;
} Kernel;

/* ---- The portable kernel: the definition, one chain at a time. --------------------------- */

static void kernel_portable(long kc, const float *a, const float *b, float *c, long ldc,
                            enum start start, const float *bias) {
    for (int i = 0; i < 6; i++) {
        for (int j = 0; j < 16; j++) {
            float acc = start == FROM_C ? c[i * ldc + j] : start == FROM_BIAS ? bias[j] : 0.0f;
            for (long k = 0; k < kc; k++) acc = fmaf(a[k * 6 + i], b[k * 16 + j], acc);
            c[i * ldc + j] = acc;
        }
    }
}

/* ---- AVX2 + FMA: 6 x 16 tile, 12 ymm accumulators. ---------------------------------------- */

__attribute__((target("avx2,fma"))) static void kernel_avx2(long kc, const float *a,
                                                            const float *b, float *c, long ldc,
                                                            enum start start,
                                                            const float *bias) {
    __m256 acc[6][2];
#pragma GCC unroll 6
    for (int i = 0; i < 6; i++) {
        if (start == FROM_C) {
            acc[i][0] = _mm256_loadu_ps(c + i * ldc);
            acc[i][1] = _mm256_loadu_ps(c + i * ldc + 8);
        } else if (start == FROM_BIAS) {
            acc[i][0] = _mm256_loadu_ps(bias);
            acc[i][1] = _mm256_loadu_ps(bias + 8);
        } else {
            acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        }
    }
    for (long k = 0; k < kc; k++) {
        const __m256 b0 = _mm256_load_ps(b + k * 16), b1 = _mm256_load_ps(b + k * 16 + 8);
#pragma GCC unroll 6
        for (int i = 0; i < 6; i++) {
            const __m256 ai = _mm256_broadcast_ss(a + k * 6 + i);
            acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < 6; i++) {
        _mm256_storeu_ps(c + i * ldc, acc[i][0]);
        _mm256_storeu_ps(c + i * ldc + 8, acc[i][1]);
    }
}

/* ---- AVX-512F: 12 x 32 tile, 24 zmm accumulators. ----------------------------------------- */

__attribute__((target("avx512f"))) static void kernel_avx512(long kc, const float *a,
                                                             const float *b, float *c, long ldc,
                                                             enum start start,
                                                             const float *bias) {
    __m512 acc[12][2];
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) {
        if (start == FROM_C) {
            acc[i][0] = _mm512_loadu_ps(c + i * ldc);
            acc[i][1] = _mm512_loadu_ps(c + i * ldc + 16);
        } else if (start == FROM_BIAS) {
            acc[i][0] = _mm512_loadu_ps(bias);
            acc[i][1] = _mm512_loadu_ps(bias + 16);
        } else {
            acc[i][0] = acc[i][1] = _mm512_setzero_ps();
        }
    }
    for (long k = 0; k < kc; k++) {
        const __m512 b0 = _mm512_load_ps(b + k * 32), b1 = _mm512_load_ps(b + k * 32 + 16);
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) {
            const __m512 ai = _mm512_set1_ps(a[k * 12 + i]);
            acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) {
        _mm512_storeu_ps(c + i * ldc, acc[i][0]);
        _mm512_storeu_ps(c + i * ldc + 16, acc[i][1]);
    }
}

static const Kernel KERNELS[] = {
    {"avx512", 12, 32, kernel_avx512},
    {"avx2", 6, 16, kernel_avx2},
    {"portable", 6, 16, kernel_portable},
};

/* The widest kernel this CPU runs; FASHION_MLP_GEMM_KERNEL=avx2|portable narrows it (tests use
 * it to show that every kernel gives the same bits). */
static const Kernel *chosen_kernel(void) {
    static const Kernel *chosen = NULL;
    if (chosen) return chosen;
    const char *forced = getenv("FASHION_MLP_GEMM_KERNEL");
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f");
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    for (size_t n = 0; n < sizeof KERNELS / sizeof *KERNELS; n++) {
        const Kernel *kernel = &KERNELS[n];
        int runs = kernel->kernel == kernel_avx512 ? avx512
                   : kernel->kernel == kernel_avx2 ? avx2
                                                   : 1;
        if (!runs) continue;
        if (forced && *forced && strcmp(forced, kernel->name) != 0) continue;
        return chosen = kernel;
    }
    return chosen = &KERNELS[sizeof KERNELS / sizeof *KERNELS - 1];
}

/* ---- Packing: copy blocks of A and B into the order the kernels read, zero-padded. -------- */

/* Rows [i0, i0+mr) of A, columns [k0, k0+kc), as kc groups of mr floats. */
static void pack_a(const float *a, long rsa, long csa, long m, long i0, long k0, long kc, int mr,
                   float *out) {
    long rows = m - i0 < mr ? m - i0 : mr;
    if (rows < mr) memset(out, 0, sizeof(float) * kc * mr);
    for (long i = 0; i < rows; i++) {
        const float *row = a + (i0 + i) * rsa + k0 * csa;
        for (long k = 0; k < kc; k++) out[k * mr + i] = row[k * csa];
    }
}

/* Columns [j0, j0+nr) of B, rows [k0, k0+kc), as kc groups of nr floats. */
static void pack_b(const float *b, long rsb, long csb, long n, long j0, long k0, long kc, int nr,
                   float *out) {
    long cols = n - j0 < nr ? n - j0 : nr;
    if (cols < nr) memset(out, 0, sizeof(float) * kc * nr);
    if (csb == 1) {
        for (long k = 0; k < kc; k++)
            memcpy(out + k * nr, b + (k0 + k) * rsb + j0, sizeof(float) * cols);
    } else {
        for (long j = 0; j < cols; j++) {
            const float *column = b + k0 * rsb + (j0 + j) * csb;
            for (long k = 0; k < kc; k++) out[k * nr + j] = column[k * rsb];
        }
    }
}

/* One mr x nr tile of C, rows from i0, columns from j0; edge tiles go through a full-size
 * scratch tile, so the kernels always compute whole tiles (padding lanes are discarded). */
static void tile(const Kernel *kernel, long kc, const float *a_panel, const float *b_panel,
                 float *c, long ldc, long m, long n, long i0, long j0, enum start start,
                 const float *bias) {
    const int mr = kernel->mr, nr = kernel->nr;
    float *corner = c + i0 * ldc + j0;
    if (i0 + mr <= m && j0 + nr <= n) {
        kernel->kernel(kc, a_panel, b_panel, corner, ldc, start, bias + j0);
        return;
    }
    float scratch[MR_MAX * NR_MAX] __attribute__((aligned(64)));
    long rows = m - i0 < mr ? m - i0 : mr, cols = n - j0 < nr ? n - j0 : nr;
    if (start == FROM_C)
        for (long i = 0; i < rows; i++) memcpy(scratch + i * nr, corner + i * ldc, 4 * cols);
    kernel->kernel(kc, a_panel, b_panel, scratch, nr, start, bias + j0);
    for (long i = 0; i < rows; i++) memcpy(corner + i * ldc, scratch + i * nr, 4 * cols);
}

static long round_up(long value, long step) { return (value + step - 1) / step * step; }

/* C (m x n, row stride ldc) = A (m x k) B (k x n) [+ bias (n)], with A and B given by pointer and
 * (row, column) strides in elements, so transposed views need no copy. */
static int sequential_gemm(long m, long n, long k, const float *a, long rsa, long csa,
                           const float *b, long rsb, long csb, float *c, long ldc,
                           const float *bias, int threads) {
    const Kernel *kernel = chosen_kernel();
    const int mr = kernel->mr, nr = kernel->nr;
    const long n_padded = round_up(n, nr), b_panels = n_padded / nr;
    const long blocks_of_m = (m + MC_MAX - 1) / MC_MAX;
    const long mc = round_up((m + blocks_of_m - 1) / blocks_of_m, mr);
    /* k in equal blocks of at most KC: a short last block would reload C for little work. */
    const long blocks_of_k = k > 0 ? (k + KC - 1) / KC : 1;
    const long depth = (k + blocks_of_k - 1) / blocks_of_k > 0 ? (k + blocks_of_k - 1) / blocks_of_k : 1;
    float *b_packed = aligned_alloc(64, sizeof(float) * round_up(depth * n_padded, 16));
    float *a_packed = aligned_alloc(64, sizeof(float) * round_up(depth * mc, 16));
    float *bias_padded = aligned_alloc(64, sizeof(float) * n_padded);
    if (!b_packed || !a_packed || !bias_padded) {
        free(b_packed), free(a_packed), free(bias_padded);
        return -1;
    }
    memset(bias_padded, 0, sizeof(float) * n_padded);
    if (bias) memcpy(bias_padded, bias, sizeof(float) * n);
    if (k == 0) { /* an empty sum: every chain is just its start */
        for (long i = 0; i < m; i++) memcpy(c + i * ldc, bias_padded, sizeof(float) * n);
    }
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    for (long k0 = 0; k0 < k; k0 += depth) {
        const long kc = k - k0 < depth ? k - k0 : depth;
        const enum start start = k0 > 0 ? FROM_C : bias ? FROM_BIAS : FROM_ZERO;
#pragma omp for schedule(static)
        for (long p = 0; p < b_panels; p++)
            pack_b(b, rsb, csb, n, p * nr, k0, kc, nr, b_packed + p * kc * nr);
        for (long i0 = 0; i0 < m; i0 += mc) {
            const long rows = m - i0 < mc ? m - i0 : mc, a_panels = (rows + mr - 1) / mr;
#pragma omp for schedule(static)
            for (long p = 0; p < a_panels; p++)
                pack_a(a, rsa, csa, m, i0 + p * mr, k0, kc, mr, a_packed + p * kc * mr);
            /* Consecutive tiles share a B panel, which stays in L1 while A panels stream. */
#pragma omp for schedule(static)
            for (long t = 0; t < b_panels * a_panels; t++) {
                const long pb = t / a_panels, pa = t % a_panels;
                tile(kernel, kc, a_packed + pa * kc * mr, b_packed + pb * kc * nr, c, ldc, m, n,
                     i0 + pa * mr, pb * nr, start, bias_padded);
            }
        }
    }
    free(b_packed), free(a_packed), free(bias_padded);
    return 0;
}

/* ---- Column sums (bias gradients, batch statistics): out[j] = (((0 + x[0][j]) + x[1][j]) + ...
 * + x[m-1][j], row by row in order; columns are independent, so threads split them. */

static void column_sums(long m, long n, const float *restrict x, long rsx, long csx,
                        float *restrict out,
                        int threads) {
    const long block = 64; /* columns per task: one task's partial sums stay in L1 */
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1) if (m * n > 32768)
    for (long j0 = 0; j0 < n; j0 += block) {
        const long j1 = j0 + block < n ? j0 + block : n;
        for (long j = j0; j < j1; j++) out[j] = 0.0f;
        if (csx == 1) { /* contiguous rows: the compiler vectorizes across columns */
            for (long i = 0; i < m; i++) {
                const float *row = x + i * rsx;
                for (long j = j0; j < j1; j++) out[j] += row[j];
            }
        } else {
            for (long i = 0; i < m; i++) {
                const float *row = x + i * rsx;
                for (long j = j0; j < j1; j++) out[j] += row[j * csx];
            }
        }
    }
}

/* ---- Python entry points: raw pointers and strides from fashion_mlp.linalg. --------------- */

static PyObject *py_gemm(PyObject *self, PyObject *args) {
    long m, n, k, rsa, csa, rsb, csb, ldc;
    unsigned long long a, b, c, bias;
    int threads, status;
    if (!PyArg_ParseTuple(args, "lllKllKllKlKi", &m, &n, &k, &a, &rsa, &csa, &b, &rsb, &csb, &c,
                          &ldc, &bias, &threads))
        return NULL;
    Py_BEGIN_ALLOW_THREADS;
    status = sequential_gemm(m, n, k, (const float *)(uintptr_t)a, rsa, csa,
                             (const float *)(uintptr_t)b, rsb, csb, (float *)(uintptr_t)c, ldc,
                             (const float *)(uintptr_t)bias, threads);
    Py_END_ALLOW_THREADS;
    if (status != 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_column_sums(PyObject *self, PyObject *args) {
    long m, n, rsx, csx;
    unsigned long long x, out;
    int threads;
    if (!PyArg_ParseTuple(args, "llKllKi", &m, &n, &x, &rsx, &csx, &out, &threads)) return NULL;
    Py_BEGIN_ALLOW_THREADS;
    column_sums(m, n, (const float *)(uintptr_t)x, rsx, csx, (float *)(uintptr_t)out, threads);
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

static PyObject *py_kernel_name(PyObject *self, PyObject *unused) {
    return PyUnicode_FromString(chosen_kernel()->name);
}

static PyMethodDef METHODS[] = {
    {"gemm", py_gemm, METH_VARARGS,
     "gemm(m, n, k, a, rsa, csa, b, rsb, csb, c, ldc, bias, threads): C = A B [+ bias]"},
    {"column_sums", py_column_sums, METH_VARARGS, "column_sums(m, n, x, rsx, csx, out, threads)"},
    {"kernel_name", py_kernel_name, METH_NOARGS, "the kernel this CPU runs"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_sequential_gemm", NULL, -1, METHODS};

PyMODINIT_FUNC PyInit__sequential_gemm(void) { return PyModule_Create(&MODULE); }
