/* Loads and frees a model many times (default 1000) and checks that memory
 * stays flat: resident memory after the last cycle may exceed that after a
 * warm-up by at most a small fraction of one model's weights per hundred
 * cycles. Then as many session new/generate/free cycles, checked the same way.
 *
 * Usage: test_load_cycles [CYCLES [--no-rss-check]]. The RSS check is
 * skipped under valgrind, whose own bookkeeping (the freed-block quarantine)
 * grows the process; there the point is valgrind's leak and error report.
 * Environment: CIDER_TEST_MODEL. Linux (reads /proc/self/statm). */
#include <stdbool.h>
#include <stdint.h>
#include <unistd.h>

#include "cider.h"
#include "test_util.h"

static long rss_bytes(void) {
    long pages_total = 0, pages_resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL || fscanf(f, "%ld %ld", &pages_total, &pages_resident) != 2) {
        fprintf(stderr, "cannot read /proc/self/statm\n");
        exit(2);
    }
    fclose(f);
    return pages_resident * sysconf(_SC_PAGESIZE);
}

/* Growth allowed between the warm-up and the end of the loop. */
static bool g_rss_check = true;

static void check_flat(const char *what, long before, long after, long budget, int cycles) {
    if (!g_rss_check) {
        printf("%s: %d cycles (RSS not checked)\n", what, cycles);
        return;
    }
    printf("%s: %d cycles, RSS after warm-up %.1f MiB, at the end %.1f MiB (growth %+.2f MiB, budget %.2f MiB)\n",
           what, cycles, before / 1048576.0, after / 1048576.0, (after - before) / 1048576.0,
           budget / 1048576.0);
    CHECK(after - before <= budget);
}

int main(int argc, char **argv) {
    const char *dir = env_or_die("CIDER_TEST_MODEL");
    int cycles = argc > 1 ? atoi(argv[1]) : 1000;
    int warmup = cycles / 10 < 20 ? (cycles < 20 ? cycles / 2 : 20) : cycles / 10;
    long before = 0, budget;
    uint64_t weight_bytes = 0;
    int i;
    cider_model *model = NULL;
    cider_session *session = NULL;
    cider_model_info info;
    cider_generate_options opts = cider_generate_options_default();

    g_rss_check = !(argc > 2 && strcmp(argv[2], "--no-rss-check") == 0);
    for (i = 0; i < cycles; i++) {
        model = NULL;
        CHECK_OK(cider_model_load(dir, NULL, &model));
        if (i == 0 && model != NULL) {
            CHECK_OK(cider_model_get_info(model, &info));
            weight_bytes = info.weight_bytes;
        }
        cider_model_free(model);
        if (i + 1 == warmup) {
            before = rss_bytes();
        }
        if (g_rss_check && (i + 1) % 100 == 0) {
            printf("  load/free cycle %d: RSS %.1f MiB\n", i + 1, rss_bytes() / 1048576.0);
        }
    }
    /* A leak of even 1% of the weights per cycle would exceed this. */
    budget = (long)(weight_bytes / 100) * (cycles - warmup) / 10 + 4 * 1048576L;
    check_flat("load/free", before, rss_bytes(), budget, cycles);

    CHECK_OK(cider_model_load(dir, NULL, &model));
    if (model == NULL) {
        return report("test_load_cycles");
    }
    opts.max_tokens = 2;
    opts.ignore_eos = true;
    for (i = 0; i < cycles; i++) {
        cider_generation_result res;
        session = NULL;
        memset(&res, 0, sizeof res);
        CHECK_OK(cider_session_new(model, &session));
        CHECK_OK(cider_session_generate(session, "Hello there", &opts, NULL, NULL, &res));
        cider_generation_result_free(&res);
        cider_session_free(session);
        if (i + 1 == warmup) {
            before = rss_bytes();
        }
    }
    check_flat("session new/generate/free", before, rss_bytes(), 4 * 1048576L, cycles);
    cider_model_free(model);
    return report("test_load_cycles");
}
