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

/* ---- Packing: copy blocks of A and B into the order the kernels read, zero-padded. Copies
 * only: how they are done changes no bit of a result. ---------------------------------------- */

/* dst[c * ld_dst + r] = src[r * ld_src + c] for an 8 x 8 block. */
__attribute__((target("avx2"))) static void transpose_8x8(const float *src, long ld_src,
                                                          float *dst, long ld_dst) {
    __m256 r[8], t[8], s[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * ld_src);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        s[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        _mm256_storeu_ps(dst + i * ld_dst, _mm256_permute2f128_ps(s[i], s[i + 4], 0x20));
        _mm256_storeu_ps(dst + (i + 4) * ld_dst, _mm256_permute2f128_ps(s[i], s[i + 4], 0x31));
    }
}

/* dst[c * ld_dst + r] = src[r * ld_src + c] for r < rows, c < cols: what packing a row-major
 * A, or a B given as the transpose of a row-major matrix (a Linear's weight), amounts to. */
static void transpose(const float *src, long ld_src, long rows, long cols, float *dst,
                      long ld_dst, int vector) {
    long r0 = 0;
    if (vector) {
        for (; r0 + 8 <= rows; r0 += 8) {
            long c0 = 0;
            for (; c0 + 8 <= cols; c0 += 8)
                transpose_8x8(src + r0 * ld_src + c0, ld_src, dst + c0 * ld_dst + r0, ld_dst);
            for (long r = r0; r < r0 + 8; r++)
                for (long c = c0; c < cols; c++) dst[c * ld_dst + r] = src[r * ld_src + c];
        }
    }
    for (long r = r0; r < rows; r++)
        for (long c = 0; c < cols; c++) dst[c * ld_dst + r] = src[r * ld_src + c];
}

/* Rows [i0, i0+mr) of A, columns [k0, k0+kc), as kc groups of mr floats. */
static void pack_a(const float *a, long rsa, long csa, long m, long i0, long k0, long kc, int mr,
                   int vector, float *out) {
    long rows = m - i0 < mr ? m - i0 : mr;
    if (rows < mr) memset(out, 0, sizeof(float) * kc * mr);
    const float *corner = a + i0 * rsa + k0 * csa;
    if (rsa == 1) { /* column-major (a transposed view): each group is contiguous */
        for (long k = 0; k < kc; k++) memcpy(out + k * mr, corner + k * csa, sizeof(float) * rows);
    } else if (csa == 1) {
        transpose(corner, rsa, rows, kc, out, mr, vector);
    } else {
        for (long i = 0; i < rows; i++)
            for (long k = 0; k < kc; k++) out[k * mr + i] = corner[i * rsa + k * csa];
    }
}

/* Columns [j0, j0+nr) of B, rows [k0, k0+kc), as kc groups of nr floats. */
static void pack_b(const float *b, long rsb, long csb, long n, long j0, long k0, long kc, int nr,
                   int vector, float *out) {
    long cols = n - j0 < nr ? n - j0 : nr;
    if (cols < nr) memset(out, 0, sizeof(float) * kc * nr);
    const float *corner = b + k0 * rsb + j0 * csb;
    if (csb == 1) { /* row-major: each group is contiguous */
        for (long k = 0; k < kc; k++) memcpy(out + k * nr, corner + k * rsb, sizeof(float) * cols);
    } else if (rsb == 1) {
        transpose(corner, csb, cols, kc, out, nr, vector);
    } else {
        for (long j = 0; j < cols; j++)
            for (long k = 0; k < kc; k++) out[k * nr + j] = corner[k * rsb + j * csb];
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

static long ceil_div(long value, long step) { return (value + step - 1) / step; }

/* C (m x n, row stride ldc) = A (m x k) B (k x n) [+ bias (n)], with A and B given by pointer and
 * (row, column) strides in elements, so transposed views need no copy.
 *
 * The work runs in steps, one per block of k (outer) and block of rows of A (inner): the
 * threads pack that step's panels together, meet once, then compute its tiles, taking them as
 * they come. Packed panels are double-buffered, so the step after packs while stragglers
 * still compute: one barrier per step (a training's products take 1 to 4 steps). The k-blocks
 * of one tile run in order because a barrier separates consecutive steps. */
static int sequential_gemm(long m, long n, long k, const float *a, long rsa, long csa,
                           const float *b, long rsb, long csb, float *c, long ldc,
                           const float *bias, int threads) {
    if (m == 0 || n == 0) return 0; /* no element to compute */
    const Kernel *kernel = chosen_kernel();
    const int mr = kernel->mr, nr = kernel->nr, vector = kernel->kernel != kernel_portable;
    const long n_padded = round_up(n, nr), b_panels = n_padded / nr;
    const long m_blocks = m > 0 ? ceil_div(m, MC_MAX) : 1;
    const long mc = round_up(ceil_div(m, m_blocks), mr);
    /* k in equal blocks of at most KC: a short last block would reload C for little work. */
    const long k_blocks = k > 0 ? ceil_div(k, KC) : 0;
    const long depth = k_blocks ? ceil_div(k, k_blocks) : 1;
    const long b_size = round_up(depth * n_padded, 16), a_size = round_up(depth * mc, 16);
    float *buffers = aligned_alloc(64, sizeof(float) * (2 * b_size + 2 * a_size + n_padded));
    if (!buffers) return -1;
    float *b_packed[2] = {buffers, buffers + b_size};
    float *a_packed[2] = {buffers + 2 * b_size, buffers + 2 * b_size + a_size};
    float *bias_padded = buffers + 2 * b_size + 2 * a_size;
    memset(bias_padded, 0, sizeof(float) * n_padded);
    if (bias) memcpy(bias_padded, bias, sizeof(float) * n);
    if (k == 0) /* an empty sum: every chain is just its start */
        for (long i = 0; i < m; i++) memcpy(c + i * ldc, bias_padded, sizeof(float) * n);
    const long steps = k_blocks * m_blocks;
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    for (long step = 0; step < steps; step++) {
        const long kb = step / m_blocks, k0 = kb * depth, i0 = (step % m_blocks) * mc;
        const long kc = k - k0 < depth ? k - k0 : depth;
        const long rows = m - i0 < mc ? m - i0 : mc, a_panels = ceil_div(rows, mr);
        const long packs = a_panels + (i0 == 0 ? b_panels : 0);
        float *const bp = b_packed[kb & 1], *const ap = a_packed[step & 1];
        const enum start start = k0 > 0 ? FROM_C : bias ? FROM_BIAS : FROM_ZERO;
        /* B panels (nr wide) first, then A panels (mr high), handed out one at a time: a
         * static split would give one thread most of the larger B panels and make the other
         * wait at the barrier. */
        const long b_packs = packs - a_panels;
#pragma omp for schedule(dynamic, 1)
        for (long p = 0; p < packs; p++) {
            if (p < b_packs)
                pack_b(b, rsb, csb, n, p * nr, k0, kc, nr, vector, bp + p * kc * nr);
            else
                pack_a(a, rsa, csa, m, i0 + (p - b_packs) * mr, k0, kc, mr, vector,
                       ap + (p - b_packs) * kc * mr);
        }
        /* Consecutive tiles share a B panel, which stays in L1 while A panels stream. */
#pragma omp for schedule(dynamic, 4) nowait
        for (long t = 0; t < b_panels * a_panels; t++) {
            const long pb = t / a_panels, pa = t % a_panels;
            tile(kernel, kc, ap + pa * kc * mr, bp + pb * kc * nr, c, ldc, m, n, i0 + pa * mr,
                 pb * nr, start, bias_padded);
        }
    }
    free(buffers);
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
