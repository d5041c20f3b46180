/* Host time per MLX primitive, from MLX's own NVTX ranges.
 *
 * MLX's CUDA backend wraps each primitive's eval_gpu (and the command
 * encoder's commit, and each array's gpu::eval) in an NVTX range. NVTX loads
 * the library named by NVTX_INJECTION64_PATH at the first range and hands it
 * the range calls; this one times them on the host (CLOCK_MONOTONIC) and, at
 * exit, prints per range name: calls; time exclusive of nested ranges, in
 * all and over the calls under 1 ms (leaving out one-off costs such as a
 * kernel's first compile); and the median and p90 of the inclusive time. Nsight Systems would do this, but the
 * lent GPU machines have no working nsys (.library/device/KINDS.md).
 *
 * Build (where CUDA's nvtx3 headers are, e.g. /usr/local/cuda/include, or
 * the nvidia-nvtx-cu12 wheel's include/):
 *   gcc -O2 -shared -fPIC -I/usr/local/cuda/include bench/nvtx_host.c -o /tmp/nvtx_host.so -lpthread
 * Use:
 *   NVTX_INJECTION64_PATH=/tmp/nvtx_host.so NVTX_HOST_OUT=/tmp/ranges.txt cider bench ...
 * NVTX_HOST_OUT defaults to stderr. Only the thread that calls MLX's eval
 * matters here; ranges are kept per thread and summed over all.
 */
#include <nvtx3/nvToolsExt.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_NAMES 256
#define MAX_DEPTH 64
#define MAX_SAMPLES (1 << 20)

typedef struct {
    const char *name;
    uint64_t calls, total_ns, self_ns, steady_self_ns;
    uint32_t *samples; /* inclusive durations in ns, the first MAX_SAMPLES */
} Stat;

static Stat stats[MAX_NAMES];
static int n_stats;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

typedef struct {
    const char *name;
    uint64_t start, child_ns;
} Frame;
static __thread Frame stack[MAX_DEPTH];
static __thread int depth;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static const char *attr_name(const nvtxEventAttributes_t *a) {
    if (!a) return "?";
    /* Registered strings are the strdup'd text itself (register_string). */
    if (a->messageType == NVTX_MESSAGE_TYPE_ASCII || a->messageType == NVTX_MESSAGE_TYPE_REGISTERED)
        return a->message.ascii ? a->message.ascii : "?";
    return "?";
}

static void push(const char *name) {
    if (depth < MAX_DEPTH) {
        stack[depth].name = name;
        stack[depth].child_ns = 0;
        stack[depth].start = now_ns();
    }
    depth++;
}

static void pop(void) {
    uint64_t end = now_ns();
    if (depth == 0) return;
    depth--;
    if (depth >= MAX_DEPTH) return;
    Frame f = stack[depth];
    uint64_t dur = end - f.start;
    if (depth > 0 && depth - 1 < MAX_DEPTH) stack[depth - 1].child_ns += dur;
    pthread_mutex_lock(&lock);
    Stat *s = NULL;
    for (int i = 0; i < n_stats; i++)
        if (stats[i].name == f.name || strcmp(stats[i].name, f.name) == 0) { s = &stats[i]; break; }
    if (!s && n_stats < MAX_NAMES) {
        s = &stats[n_stats++];
        s->name = strdup(f.name);
        s->samples = malloc(sizeof(uint32_t) * MAX_SAMPLES);
    }
    if (s) {
        if (s->calls < MAX_SAMPLES && s->samples) s->samples[s->calls] = dur > UINT32_MAX ? UINT32_MAX : (uint32_t)dur;
        s->calls++;
        s->total_ns += dur;
        s->self_ns += dur - f.child_ns;
        if (dur < 1000000) s->steady_self_ns += dur - f.child_ns;
    }
    pthread_mutex_unlock(&lock);
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static int cmp_total(const void *a, const void *b) {
    const Stat *x = a, *y = b;
    return (x->self_ns < y->self_ns) - (x->self_ns > y->self_ns);
}

static void report(void) {
    const char *path = getenv("NVTX_HOST_OUT");
    FILE *out = path ? fopen(path, "w") : stderr;
    if (!out) out = stderr;
    pthread_mutex_lock(&lock);
    qsort(stats, n_stats, sizeof(Stat), cmp_total);
    fprintf(out, "%-44s %9s %11s %11s %11s %9s %9s\n", "range", "calls", "self ms", "<1ms self", "total ms",
            "med us", "p90 us");
    for (int i = 0; i < n_stats; i++) {
        Stat *s = &stats[i];
        uint64_t n = s->calls < MAX_SAMPLES ? s->calls : MAX_SAMPLES;
        double med = 0, p90 = 0;
        if (n && s->samples) {
            qsort(s->samples, n, sizeof(uint32_t), cmp_u32);
            med = s->samples[n / 2] / 1e3;
            p90 = s->samples[n * 9 / 10] / 1e3;
        }
        fprintf(out, "%-44s %9llu %11.3f %11.3f %11.3f %9.2f %9.2f\n", s->name, (unsigned long long)s->calls,
                s->self_ns / 1e6, s->steady_self_ns / 1e6, s->total_ns / 1e6, med, p90);
    }
    pthread_mutex_unlock(&lock);
    if (out != stderr) fclose(out);
}

static int NVTX_API range_push_ex(const nvtxEventAttributes_t *a) { push(attr_name(a)); return depth - 1; }
static int NVTX_API range_push_a(const char *m) { push(m ? m : "?"); return depth - 1; }
static int NVTX_API range_pop(void) { pop(); return depth; }
static int NVTX_API domain_push_ex(nvtxDomainHandle_t d, const nvtxEventAttributes_t *a) { (void)d; return range_push_ex(a); }
static int NVTX_API domain_pop(nvtxDomainHandle_t d) { (void)d; return range_pop(); }
static nvtxStringHandle_t NVTX_API register_string(nvtxDomainHandle_t d, const char *s) {
    (void)d;
    return (nvtxStringHandle_t)strdup(s ? s : "?");
}

static void set(NvtxFunctionTable table, unsigned int size, unsigned int id, NvtxFunctionPointer f) {
    if (id < size && table[id]) *table[id] = f;
}

int NVTX_API InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get) {
    const NvtxExportTableCallbacks *cb = (const NvtxExportTableCallbacks *)get(NVTX_ETID_CALLBACKS);
    if (!cb) return 0;
    NvtxFunctionTable t;
    unsigned int n;
    if (cb->GetModuleFunctionTable(NVTX_CB_MODULE_CORE, &t, &n)) {
        set(t, n, NVTX_CBID_CORE_RangePushEx, (NvtxFunctionPointer)range_push_ex);
        set(t, n, NVTX_CBID_CORE_RangePushA, (NvtxFunctionPointer)range_push_a);
        set(t, n, NVTX_CBID_CORE_RangePop, (NvtxFunctionPointer)range_pop);
    }
    if (cb->GetModuleFunctionTable(NVTX_CB_MODULE_CORE2, &t, &n)) {
        set(t, n, NVTX_CBID_CORE2_DomainRangePushEx, (NvtxFunctionPointer)domain_push_ex);
        set(t, n, NVTX_CBID_CORE2_DomainRangePop, (NvtxFunctionPointer)domain_pop);
        set(t, n, NVTX_CBID_CORE2_DomainRegisterStringA, (NvtxFunctionPointer)register_string);
    }
    atexit(report);
    return 1;
}
