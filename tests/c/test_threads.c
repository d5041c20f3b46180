/* 8 threads share one model, each with its own session, and must produce
 * the same greedy tokens as one thread alone. Each thread also checks that
 * error messages are per thread.
 *
 * Environment: CIDER_TEST_MODEL (a tiny model folder). */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "cider.h"
#include "test_util.h"

#define N_THREADS 8
#define N_PROMPTS 2
#define MAX_TOKENS 16

static const char *const PROMPTS[N_PROMPTS] = {"The quick brown fox", "Once upon a time in a land"};

typedef struct {
    const cider_model *model;
    int index;
    int32_t tokens[MAX_TOKENS];
    size_t n_tokens;
    cider_status status;
    bool own_error_ok;
} worker;

static cider_status generate(const cider_model *model, const char *prompt, int32_t *tokens, size_t *n) {
    cider_session *session = NULL;
    cider_generation_result res;
    cider_generate_options opts = cider_generate_options_default();
    cider_status st;
    opts.max_tokens = MAX_TOKENS;
    opts.ignore_eos = true;
    st = cider_session_new(model, &session);
    if (st != CIDER_STATUS_OK) {
        return st;
    }
    memset(&res, 0, sizeof res);
    st = cider_session_generate(session, prompt, &opts, NULL, NULL, &res);
    if (st == CIDER_STATUS_OK) {
        *n = res.n_tokens;
        memcpy(tokens, res.tokens, res.n_tokens * sizeof *tokens);
    }
    cider_generation_result_free(&res);
    cider_session_free(session);
    return st;
}

static void *run_worker(void *arg) {
    worker *w = (worker *)arg;
    char path[64];
    cider_model *m = NULL;
    /* A failure whose message names this thread's index... */
    snprintf(path, sizeof path, "/nonexistent/thread-%d", w->index);
    (void)cider_model_load(path, NULL, &m);
    w->status = generate(w->model, PROMPTS[w->index % N_PROMPTS], w->tokens, &w->n_tokens);
    /* ...is replaced by this thread's successful call, not by others'. */
    w->own_error_ok = w->status == CIDER_STATUS_OK && strcmp(cider_last_error_message(), "") == 0;
    (void)cider_model_load(path, NULL, &m);
    w->own_error_ok = w->own_error_ok && strstr(cider_last_error_message(), path) != NULL;
    return NULL;
}

int main(void) {
    const char *dir = env_or_die("CIDER_TEST_MODEL");
    cider_model *model = NULL;
    int32_t reference[N_PROMPTS][MAX_TOKENS];
    size_t n_ref[N_PROMPTS] = {0, 0};
    pthread_t threads[N_THREADS];
    static worker workers[N_THREADS];
    int i;

    CHECK_OK(cider_model_load(dir, NULL, &model));
    if (model == NULL) {
        return report("test_threads");
    }
    for (i = 0; i < N_PROMPTS; i++) {
        CHECK_OK(generate(model, PROMPTS[i], reference[i], &n_ref[i]));
        CHECK(n_ref[i] == MAX_TOKENS);
    }
    for (i = 0; i < N_THREADS; i++) {
        workers[i].model = model;
        workers[i].index = i;
        CHECK(pthread_create(&threads[i], NULL, run_worker, &workers[i]) == 0);
    }
    for (i = 0; i < N_THREADS; i++) {
        CHECK(pthread_join(threads[i], NULL) == 0);
    }
    for (i = 0; i < N_THREADS; i++) {
        const worker *w = &workers[i];
        int p = i % N_PROMPTS;
        CHECK(w->status == CIDER_STATUS_OK);
        CHECK(w->own_error_ok);
        CHECK(w->n_tokens == n_ref[p] && memcmp(w->tokens, reference[p], n_ref[p] * sizeof(int32_t)) == 0);
    }
    cider_model_free(model);
    return report("test_threads");
}
