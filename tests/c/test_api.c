/* The whole C API from C: loading (with progress and cancellation), model
 * info, tokenize/detokenize, chat templates, streaming generation with
 * cancellation, greedy parity with mlx-lm and the Rust CLI, stop strings,
 * options, and misuse: every NULL argument, missing and corrupt models, a
 * too-small buffer, invalid UTF-8, bad ids, re-entrant sessions.
 *
 * Environment (set by tests/c/run.sh):
 *   CIDER_TEST_MODEL       a tiny llama model folder
 *   CIDER_TEST_WORK        folder with truncated/, bad_json/, no_template/,
 *                          not_a_folder, expected_mlx_lm.txt, expected_cli.txt
 *   CIDER_TEST_PROMPT      prompt of the expected files
 *   CIDER_TEST_MAX_TOKENS  tokens in the expected files */
#include "cider.h"
#include "cider.h" /* twice on purpose: the include guard must hold */

#include <stdbool.h>
#include <stdint.h>

#include "test_util.h"

#define MAX_IDS 4096

static char g_path[4096];

static const char *work_path(const char *name) {
    snprintf(g_path, sizeof g_path, "%s/%s", env_or_die("CIDER_TEST_WORK"), name);
    return g_path;
}

/* ---- version and statuses ---- */

static void test_version(void) {
    char expected[64];
    CHECK(strcmp(cider_version(), CIDER_VERSION_STRING) == 0);
    snprintf(expected, sizeof expected, "%d.%d.%d", CIDER_VERSION_MAJOR, CIDER_VERSION_MINOR,
             CIDER_VERSION_PATCH);
    CHECK(strncmp(cider_version(), expected, strlen(expected)) == 0);
}

static void test_status_strings(void) {
    CHECK(strcmp(cider_status_string(CIDER_STATUS_OK), "CIDER_STATUS_OK") == 0);
    CHECK(strcmp(cider_status_string(CIDER_STATUS_INVALID_ARGUMENT), "CIDER_STATUS_INVALID_ARGUMENT") == 0);
    CHECK(strcmp(cider_status_string(CIDER_STATUS_NOT_FOUND), "CIDER_STATUS_NOT_FOUND") == 0);
    CHECK(strcmp(cider_status_string(CIDER_STATUS_INVALID_MODEL), "CIDER_STATUS_INVALID_MODEL") == 0);
    CHECK(strcmp(cider_status_string(CIDER_STATUS_UNSUPPORTED), "CIDER_STATUS_UNSUPPORTED") == 0);
    CHECK(strcmp(cider_status_string(CIDER_STATUS_BUFFER_TOO_SMALL), "CIDER_STATUS_BUFFER_TOO_SMALL") == 0);
    CHECK(strcmp(cider_status_string(CIDER_STATUS_CANCELLED), "CIDER_STATUS_CANCELLED") == 0);
    CHECK(strcmp(cider_status_string(CIDER_STATUS_OUT_OF_MEMORY), "CIDER_STATUS_OUT_OF_MEMORY") == 0);
    CHECK(strcmp(cider_status_string(CIDER_STATUS_BACKEND), "CIDER_STATUS_BACKEND") == 0);
    CHECK(strcmp(cider_status_string(CIDER_STATUS_PANIC), "CIDER_STATUS_PANIC") == 0);
    /* The numbers are ABI: pin them. */
    CHECK(CIDER_STATUS_OK == 0 && CIDER_STATUS_INVALID_ARGUMENT == 1 && CIDER_STATUS_NOT_FOUND == 2 &&
          CIDER_STATUS_INVALID_MODEL == 3 && CIDER_STATUS_UNSUPPORTED == 4 &&
          CIDER_STATUS_BUFFER_TOO_SMALL == 5 && CIDER_STATUS_CANCELLED == 6 &&
          CIDER_STATUS_OUT_OF_MEMORY == 7 && CIDER_STATUS_BACKEND == 8 && CIDER_STATUS_PANIC == 9);
    CHECK(strcmp(cider_status_string((cider_status)42), "CIDER_STATUS_UNKNOWN") == 0);
    CHECK(strcmp(cider_status_string((cider_status)-1), "CIDER_STATUS_UNKNOWN") == 0);
}

/* ---- loading ---- */

typedef struct {
    int calls;
    float last;
    bool monotonic;
    int cancel_at; /* cancel on this call (1-based); 0 = never */
} progress_state;

static bool on_progress(float fraction, void *user_data) {
    progress_state *p = (progress_state *)user_data;
    p->calls++;
    if (fraction < p->last || fraction < 0.0f || fraction > 1.0f) {
        p->monotonic = false;
    }
    p->last = fraction;
    return p->cancel_at == 0 || p->calls < p->cancel_at;
}

static cider_model *const SENTINEL_MODEL = (cider_model *)(uintptr_t)0x1234;

static cider_model *test_load(const char *dir) {
    cider_model *model = NULL;
    progress_state p = {0, 0.0f, true, 0};
    cider_load_options opts = cider_load_options_default();
    CHECK(opts.progress == NULL && opts.user_data == NULL && opts.compute_dtype == NULL && opts.cpu_threads == 0);
    opts.progress = on_progress;
    opts.user_data = &p;
    CHECK_OK(cider_model_load(dir, &opts, &model));
    CHECK(model != NULL);
    CHECK(p.calls >= 2);
    CHECK(p.monotonic);
    CHECK(p.last == 1.0f);
    CHECK(strcmp(cider_last_error_message(), "") == 0);
    return model;
}

static void test_load_failures(const char *dir) {
    cider_model *model = SENTINEL_MODEL;
    progress_state p = {0, 0.0f, true, 3};
    cider_load_options opts = cider_load_options_default();

    /* Cancelled by the progress callback on its third call. */
    opts.progress = on_progress;
    opts.user_data = &p;
    CHECK_STATUS(cider_model_load(dir, &opts, &model), CIDER_STATUS_CANCELLED);
    CHECK(p.calls == 3);
    CHECK(model == SENTINEL_MODEL);
    CHECK_MESSAGE_NAMES("cider_model_load");

    /* A compute dtype that is not a float type. */
    opts = cider_load_options_default();
    opts.compute_dtype = "int8";
    CHECK_STATUS(cider_model_load(dir, &opts, &model), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(model == SENTINEL_MODEL);
    CHECK(strstr(cider_last_error_message(), "int8") != NULL);

    /* A negative CPU stream count. */
    opts = cider_load_options_default();
    opts.cpu_threads = -2;
    CHECK_STATUS(cider_model_load(dir, &opts, &model), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(model == SENTINEL_MODEL);
    CHECK(strstr(cider_last_error_message(), "cpu_threads") != NULL);

    /* float32 compute, split over two CPU streams: the model reports float32
       and still generates. */
    opts.cpu_threads = 2;
    opts.compute_dtype = "float32";
    CHECK_OK(cider_model_load(dir, &opts, &model));
    {
        cider_model_info info;
        cider_session *s = NULL;
        cider_generate_options g = cider_generate_options_default();
        cider_generation_result r;
        CHECK_OK(cider_model_get_info(model, &info));
        CHECK(strcmp(info.dtype, "float32") == 0);
        g.max_tokens = 3;
        g.ignore_eos = true;
        CHECK_OK(cider_session_new(model, &s));
        CHECK_OK(cider_session_generate(s, "Hello", &g, NULL, NULL, &r));
        CHECK(r.n_tokens == 3);
        cider_generation_result_free(&r);
        cider_session_free(s);
        cider_model_free(model);
        model = SENTINEL_MODEL;
    }

    CHECK_STATUS(cider_model_load("/nonexistent/cider/model", NULL, &model), CIDER_STATUS_NOT_FOUND);
    CHECK(model == SENTINEL_MODEL);
    CHECK(strstr(cider_last_error_message(), "/nonexistent/cider/model") != NULL);

    CHECK_STATUS(cider_model_load(work_path("truncated"), NULL, &model), CIDER_STATUS_INVALID_MODEL);
    CHECK(model == SENTINEL_MODEL);
    CHECK(strstr(cider_last_error_message(), "safetensors") != NULL);

    CHECK_STATUS(cider_model_load(work_path("bad_json"), NULL, &model), CIDER_STATUS_INVALID_MODEL);
    CHECK(model == SENTINEL_MODEL);
    CHECK(strstr(cider_last_error_message(), "config.json") != NULL);

    CHECK_STATUS(cider_model_load(work_path("not_a_folder"), NULL, &model), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(model == SENTINEL_MODEL);

    CHECK_STATUS(cider_model_load("", NULL, &model), CIDER_STATUS_NOT_FOUND);
    CHECK(model == SENTINEL_MODEL);

    /* The message of a failure stays until the next status-returning call... */
    CHECK(strlen(cider_last_error_message()) > 0);
    CHECK(strlen(cider_last_error_message()) > 0);
    /* ...and cider_status_string does not touch it. */
    (void)cider_status_string(CIDER_STATUS_OK);
    CHECK(strlen(cider_last_error_message()) > 0);
}

static void test_info(const cider_model *model) {
    cider_model_info info;
    size_t i;
    bool has_eos2 = false;
    memset(&info, 0, sizeof info);
    CHECK_OK(cider_model_get_info(model, &info));
    CHECK(strcmp(info.model_type, "llama") == 0);
    CHECK(info.dtype != NULL && strlen(info.dtype) > 0);
    CHECK(info.parameters > 0);
    CHECK(info.bits == 0 && info.group_size == 0);
    CHECK(info.vocab_size == 32000);
    CHECK(info.context_length == 2048);
    CHECK(info.num_layers == 2);
    CHECK(info.hidden_size == 64);
    CHECK(info.weight_bytes > 0);
    CHECK(info.load_seconds >= 0.0);
    CHECK(info.has_chat_template);
    CHECK(info.n_eos_ids >= 1 && info.eos_ids != NULL);
    for (i = 0; i < info.n_eos_ids; i++) {
        has_eos2 = has_eos2 || info.eos_ids[i] == 2;
    }
    CHECK(has_eos2);
}

/* ---- tokenizer ---- */

static void test_tokenize(const cider_model *model) {
    const char *text = "Hello world, this is cider. Héllo wörld!";
    int32_t ids[MAX_IDS];
    int32_t small[2] = {-7, -7};
    size_t n = 0, n_plain = 0, needed = 0;
    char *back = NULL;

    CHECK_OK(cider_tokenize(model, text, strlen(text), true, ids, MAX_IDS, &n));
    CHECK(n > 3);
    CHECK(ids[0] == 1); /* BOS of the Llama tokenizer */

    CHECK_OK(cider_tokenize(model, text, strlen(text), false, ids, MAX_IDS, &n_plain));
    CHECK(n_plain == n - 1);
    CHECK(ids[0] != 1);
    CHECK_OK(cider_detokenize(model, ids, n_plain, &back));
    CHECK(back != NULL && strcmp(back, text) == 0);
    cider_string_free(back);

    /* Not NUL-terminated: only text_len bytes count. */
    CHECK_OK(cider_tokenize(model, "Hello world", 5, false, ids, MAX_IDS, &n));
    back = NULL;
    CHECK_OK(cider_detokenize(model, ids, n, &back));
    CHECK(back != NULL && strcmp(back, "Hello") == 0);
    cider_string_free(back);

    /* Too small: the size needed is written, the buffer untouched. */
    CHECK_STATUS(cider_tokenize(model, text, strlen(text), false, small, 2, &needed), CIDER_STATUS_BUFFER_TOO_SMALL);
    CHECK(needed == n_plain);
    CHECK(small[0] == -7 && small[1] == -7);
    CHECK(strstr(cider_last_error_message(), "cider_tokenize") != NULL);
    /* Asking for the size with no buffer. */
    needed = 0;
    CHECK_STATUS(cider_tokenize(model, text, strlen(text), false, NULL, 0, &needed), CIDER_STATUS_BUFFER_TOO_SMALL);
    CHECK(needed == n_plain);
    /* Exactly enough. */
    CHECK_OK(cider_tokenize(model, text, strlen(text), false, ids, n_plain, &n));
    CHECK(n == n_plain);

    /* Empty text. */
    n = 99;
    CHECK_OK(cider_tokenize(model, NULL, 0, false, NULL, 0, &n));
    CHECK(n == 0);
    back = NULL;
    CHECK_OK(cider_detokenize(model, NULL, 0, &back));
    CHECK(back != NULL && back[0] == '\0');
    cider_string_free(back);

    /* Invalid UTF-8. */
    n = 99;
    CHECK_STATUS(cider_tokenize(model, "ab\xff\xfe", 4, false, ids, MAX_IDS, &n), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(n == 99);
    CHECK(strstr(cider_last_error_message(), "UTF-8") != NULL);
    CHECK_STATUS(cider_tokenize(model, "\xc3", 1, true, ids, MAX_IDS, &n), CIDER_STATUS_INVALID_ARGUMENT);

    /* Ids out of range. */
    back = NULL;
    ids[0] = -1;
    CHECK_STATUS(cider_detokenize(model, ids, 1, &back), CIDER_STATUS_INVALID_ARGUMENT);
    ids[0] = 32000;
    CHECK_STATUS(cider_detokenize(model, ids, 1, &back), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(back == NULL);
    CHECK(strstr(cider_last_error_message(), "32000") != NULL);
}

static void test_chat_template(const cider_model *model) {
    cider_chat_message msgs[2];
    char *with = NULL, *without = NULL;
    msgs[0].role = "system";
    msgs[0].content = "You are terse.";
    msgs[1].role = "user";
    msgs[1].content = "Say hi to cider.";
    CHECK_OK(cider_chat_template_apply(model, msgs, 2, true, &with));
    CHECK_OK(cider_chat_template_apply(model, msgs, 2, false, &without));
    CHECK(with != NULL && without != NULL);
    if (with != NULL && without != NULL) {
        CHECK(strstr(with, "You are terse.") != NULL);
        CHECK(strstr(with, "Say hi to cider.") != NULL);
        /* TinyLlama's template: <|user|> ... </s> then <|assistant|> when asked for. */
        CHECK(strstr(with, "<|assistant|>") != NULL);
        CHECK(strstr(without, "<|assistant|>") == NULL);
        CHECK(strlen(with) > strlen(without));
        CHECK(strncmp(with, without, strlen(without)) == 0);
    }
    cider_string_free(with);
    cider_string_free(without);

    with = NULL;
    CHECK_STATUS(cider_chat_template_apply(model, msgs, 0, true, &with), CIDER_STATUS_INVALID_ARGUMENT);
    msgs[1].content = NULL;
    CHECK_STATUS(cider_chat_template_apply(model, msgs, 2, true, &with), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(cider_last_error_message(), "messages[1].content") != NULL);
    msgs[1].content = "bad \xff utf-8";
    CHECK_STATUS(cider_chat_template_apply(model, msgs, 2, true, &with), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(with == NULL);
}

static void test_no_template(void) {
    cider_model *model = NULL;
    cider_model_info info;
    cider_chat_message msg;
    char *out = NULL;
    msg.role = "user";
    msg.content = "hi";
    CHECK_OK(cider_model_load(work_path("no_template"), NULL, &model));
    CHECK_OK(cider_model_get_info(model, &info));
    CHECK(!info.has_chat_template);
    CHECK_STATUS(cider_chat_template_apply(model, &msg, 1, true, &out), CIDER_STATUS_UNSUPPORTED);
    CHECK(out == NULL);
    cider_model_free(model);
}

/* ---- generation ---- */

typedef struct {
    int32_t tokens[MAX_IDS];
    size_t n_tokens;
    char text[65536];
    size_t text_len;
    int flushes;
    bool bad_piece;
    size_t cancel_after; /* 0 = never */
    cider_session *reenter; /* if set, try generating on it from the callback */
    cider_status reenter_status;
} stream_state;

static bool on_token(const char *piece, size_t piece_len, int32_t token_id, void *user_data) {
    stream_state *s = (stream_state *)user_data;
    if (piece == NULL || strlen(piece) != piece_len) {
        s->bad_piece = true;
    } else if (s->text_len + piece_len < sizeof s->text) {
        memcpy(s->text + s->text_len, piece, piece_len);
        s->text_len += piece_len;
        s->text[s->text_len] = '\0';
    }
    if (token_id < 0) {
        s->flushes++;
        return true;
    }
    if (s->n_tokens < MAX_IDS) {
        s->tokens[s->n_tokens++] = token_id;
    }
    if (s->reenter != NULL) {
        s->reenter_status = cider_session_generate(s->reenter, "x", NULL, NULL, NULL, NULL);
        s->reenter = NULL;
    }
    return s->cancel_after == 0 || s->n_tokens < s->cancel_after;
}

static stream_state g_stream; /* large: keep it off the stack */

static void reset_stream(void) {
    memset(&g_stream, 0, sizeof g_stream);
}

static bool same_ids(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

static void print_ids(const char *label, const int32_t *ids, size_t n) {
    size_t i;
    fprintf(stderr, "%s (%zu):", label, n);
    for (i = 0; i < n; i++) {
        fprintf(stderr, " %d", (int)ids[i]);
    }
    fprintf(stderr, "\n");
}

static void test_greedy(const cider_model *model) {
    const char *prompt = env_or_die("CIDER_TEST_PROMPT");
    size_t max_tokens = (size_t)atoi(env_or_die("CIDER_TEST_MAX_TOKENS"));
    static int32_t expected_mlx[MAX_IDS], expected_cli[MAX_IDS], prompt_ids[MAX_IDS];
    size_t n_mlx = read_ids(work_path("expected_mlx_lm.txt"), expected_mlx, MAX_IDS);
    size_t n_cli = read_ids(work_path("expected_cli.txt"), expected_cli, MAX_IDS);
    size_t n_prompt = 0;
    cider_session *session = NULL;
    cider_generation_result res, res2;
    cider_generate_options opts = cider_generate_options_default();

    CHECK(opts.max_tokens == 256 && opts.temperature == 0.0f && opts.top_p == 1.0f && opts.top_k == 0);
    CHECK(opts.min_p == 0.0f && opts.repetition_penalty == 1.0f && opts.repetition_context_size == 20);
    CHECK(opts.seed == CIDER_SEED_RANDOM && opts.stop == NULL && opts.n_stop == 0 && !opts.ignore_eos);
    CHECK(opts.prefill_step_size == 2048);
    opts.max_tokens = max_tokens;
    opts.ignore_eos = true;

    CHECK(n_mlx == max_tokens);
    CHECK(same_ids(expected_mlx, n_mlx, expected_cli, n_cli));

    CHECK_OK(cider_session_new(model, &session));
    reset_stream();
    memset(&res, 0, sizeof res);
    CHECK_OK(cider_session_generate(session, prompt, &opts, on_token, &g_stream, &res));
    CHECK(strcmp(cider_last_error_message(), "") == 0);
    CHECK(res.finish_reason == CIDER_FINISH_REASON_LENGTH);
    CHECK(res.n_tokens == max_tokens && res.stats.generation_tokens == max_tokens);
    CHECK(same_ids(res.tokens, res.n_tokens, expected_mlx, n_mlx));
    if (!same_ids(res.tokens, res.n_tokens, expected_mlx, n_mlx)) {
        print_ids("cider C", res.tokens, res.n_tokens);
        print_ids("mlx-lm ", expected_mlx, n_mlx);
    }
    CHECK(same_ids(g_stream.tokens, g_stream.n_tokens, res.tokens, res.n_tokens));
    CHECK(!g_stream.bad_piece);
    CHECK(g_stream.flushes <= 1);
    CHECK(res.text != NULL && strlen(res.text) == res.text_len);
    CHECK(res.text != NULL && strcmp(res.text, g_stream.text) == 0);
    CHECK(res.stats.prompt_tokens > 0 && res.stats.total_s >= res.stats.ttft_s);

    /* The same from token ids (mlx-lm's rule adds BOS to this prompt). */
    CHECK_OK(cider_tokenize(model, prompt, strlen(prompt), true, prompt_ids, MAX_IDS, &n_prompt));
    CHECK(n_prompt == res.stats.prompt_tokens);
    memset(&res2, 0, sizeof res2);
    CHECK_OK(cider_session_generate_tokens(session, prompt_ids, n_prompt, &opts, NULL, NULL, &res2));
    CHECK(same_ids(res2.tokens, res2.n_tokens, res.tokens, res.n_tokens));
    CHECK(res2.text != NULL && res.text != NULL && strcmp(res2.text, res.text) == 0);
    cider_generation_result_free(&res2);

    /* Stop string: ends before its first occurrence, which is not returned. */
    if (res.text != NULL && res.text_len > 8) {
        char stop[4];
        const char *stops[1];
        const char *first;
        size_t at = res.text_len / 2;
        memcpy(stop, res.text + at, 3);
        stop[3] = '\0';
        first = strstr(res.text, stop);
        stops[0] = stop;
        opts.stop = stops;
        opts.n_stop = 1;
        memset(&res2, 0, sizeof res2);
        if (strlen(stop) == 3) {
            CHECK_OK(cider_session_generate(session, prompt, &opts, NULL, NULL, &res2));
            CHECK(res2.finish_reason == CIDER_FINISH_REASON_STOP);
            CHECK(res2.text != NULL && res2.text_len == (size_t)(first - res.text));
            CHECK(res2.text != NULL && strncmp(res2.text, res.text, res2.text_len) == 0);
            cider_generation_result_free(&res2);
        }
        opts.stop = NULL;
        opts.n_stop = 0;
    }

    /* Streaming that cancels after 3 tokens: CANCELLED with the partial result. */
    reset_stream();
    g_stream.cancel_after = 3;
    memset(&res2, 0, sizeof res2);
    CHECK_STATUS(cider_session_generate(session, prompt, &opts, on_token, &g_stream, &res2), CIDER_STATUS_CANCELLED);
    CHECK(strstr(cider_last_error_message(), "cancelled") != NULL);
    CHECK(g_stream.n_tokens == 3);
    CHECK(res2.finish_reason == CIDER_FINISH_REASON_CANCELLED);
    CHECK(res2.n_tokens == 3);
    CHECK(same_ids(res2.tokens, res2.n_tokens, expected_mlx, 3));
    CHECK(res2.text != NULL);
    cider_generation_result_free(&res2);
    CHECK(res2.text == NULL && res2.tokens == NULL && res2.n_tokens == 0);
    cider_generation_result_free(&res2); /* twice is harmless */

    /* The session still works after a cancel; out and callback may be NULL. */
    opts.max_tokens = 4;
    CHECK_OK(cider_session_generate(session, prompt, &opts, NULL, NULL, NULL));
    CHECK_OK(cider_session_generate(session, prompt, NULL, NULL, NULL, NULL));

    /* Re-entering a busy session from its own callback is refused. */
    reset_stream();
    g_stream.reenter = session;
    g_stream.reenter_status = CIDER_STATUS_OK;
    CHECK_OK(cider_session_generate(session, prompt, &opts, on_token, &g_stream, NULL));
    CHECK(g_stream.reenter_status == CIDER_STATUS_INVALID_ARGUMENT);

    /* max_tokens 0 generates nothing. */
    opts.max_tokens = 0;
    memset(&res2, 0, sizeof res2);
    CHECK_OK(cider_session_generate(session, prompt, &opts, NULL, NULL, &res2));
    CHECK(res2.n_tokens == 0 && res2.tokens == NULL && res2.text != NULL && res2.text_len == 0);
    cider_generation_result_free(&res2);

    cider_generation_result_free(&res);
    cider_session_free(session);
}

static void test_sampling_and_options(const cider_model *model) {
    cider_session *session = NULL;
    cider_generation_result a, b, sentinel;
    cider_generate_options opts = cider_generate_options_default();
    const char *stops[2] = {"ok", NULL};
    int32_t ids[2] = {1, 32000};

    CHECK_OK(cider_session_new(model, &session));
    opts.max_tokens = 12;
    opts.ignore_eos = true;
    opts.temperature = 1.0f;
    opts.top_p = 0.9f;
    opts.top_k = 50;
    opts.min_p = 0.01f;
    opts.repetition_penalty = 1.1f;
    opts.seed = 1234;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    CHECK_OK(cider_session_generate(session, "Once upon a time", &opts, NULL, NULL, &a));
    CHECK_OK(cider_session_generate(session, "Once upon a time", &opts, NULL, NULL, &b));
    CHECK(a.n_tokens == 12);
    CHECK(same_ids(a.tokens, a.n_tokens, b.tokens, b.n_tokens)); /* same seed, same tokens */
    cider_generation_result_free(&a);
    cider_generation_result_free(&b);

    /* Bad options: INVALID_ARGUMENT, result untouched. */
    memset(&sentinel, 0x5a, sizeof sentinel);
    opts = cider_generate_options_default();
    opts.temperature = -1.0f;
    CHECK_STATUS(cider_session_generate(session, "hi", &opts, NULL, NULL, &sentinel), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(cider_last_error_message(), "temperature") != NULL);
    opts = cider_generate_options_default();
    opts.top_p = 2.0f;
    CHECK_STATUS(cider_session_generate(session, "hi", &opts, NULL, NULL, &sentinel), CIDER_STATUS_INVALID_ARGUMENT);
    opts = cider_generate_options_default();
    opts.top_k = 32000;
    CHECK_STATUS(cider_session_generate(session, "hi", &opts, NULL, NULL, &sentinel), CIDER_STATUS_INVALID_ARGUMENT);
    opts = cider_generate_options_default();
    opts.repetition_penalty = -2.0f;
    CHECK_STATUS(cider_session_generate(session, "hi", &opts, NULL, NULL, &sentinel), CIDER_STATUS_INVALID_ARGUMENT);
    opts = cider_generate_options_default();
    opts.prefill_step_size = 0;
    CHECK_STATUS(cider_session_generate(session, "hi", &opts, NULL, NULL, &sentinel), CIDER_STATUS_INVALID_ARGUMENT);
    opts = cider_generate_options_default();
    opts.stop = stops;
    opts.n_stop = 2; /* stops[1] is NULL */
    CHECK_STATUS(cider_session_generate(session, "hi", &opts, NULL, NULL, &sentinel), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(cider_last_error_message(), "stop[1]") != NULL);
    opts.stop = NULL; /* NULL array with a count */
    CHECK_STATUS(cider_session_generate(session, "hi", &opts, NULL, NULL, &sentinel), CIDER_STATUS_INVALID_ARGUMENT);
    opts = cider_generate_options_default();
    CHECK_STATUS(cider_session_generate(session, "bad \xff", &opts, NULL, NULL, &sentinel), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_session_generate_tokens(session, ids, 2, &opts, NULL, NULL, &sentinel), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(cider_last_error_message(), "32000") != NULL);
    ids[1] = -5;
    CHECK_STATUS(cider_session_generate_tokens(session, ids, 2, &opts, NULL, NULL, &sentinel), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_session_generate_tokens(session, ids, 0, &opts, NULL, NULL, &sentinel), CIDER_STATUS_INVALID_ARGUMENT);
    {
        unsigned char *p = (unsigned char *)&sentinel;
        size_t i;
        bool untouched = true;
        for (i = 0; i < sizeof sentinel; i++) {
            untouched = untouched && p[i] == 0x5a;
        }
        CHECK(untouched);
    }
    cider_session_free(session);
}

/* A session keeps its model alive after cider_model_free. */
static void test_session_outlives_model(const char *dir) {
    cider_model *model = NULL;
    cider_session *session = NULL;
    cider_generation_result res;
    cider_generate_options opts = cider_generate_options_default();
    opts.max_tokens = 3;
    opts.ignore_eos = true;
    CHECK_OK(cider_model_load(dir, NULL, &model));
    CHECK_OK(cider_session_new(model, &session));
    cider_model_free(model);
    memset(&res, 0, sizeof res);
    CHECK_OK(cider_session_generate(session, "Hello", &opts, NULL, NULL, &res));
    CHECK(res.n_tokens == 3);
    cider_generation_result_free(&res);
    cider_session_free(session);
}

/* ---- every NULL argument ---- */

static void test_nulls(const cider_model *model) {
    cider_model *m = SENTINEL_MODEL;
    cider_session *s = (cider_session *)(uintptr_t)0x5678;
    cider_session *session = NULL;
    cider_model_info info;
    int32_t ids[8] = {1, 2, 3};
    size_t n = 77;
    char *text = (char *)(uintptr_t)0x9abc;
    cider_chat_message msg;
    cider_generation_result res;
    const char *dir = env_or_die("CIDER_TEST_MODEL");
    msg.role = "user";
    msg.content = "hi";

    CHECK_STATUS(cider_model_load(NULL, NULL, &m), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_MESSAGE_NAMES("cider_model_load");
    CHECK(strstr(cider_last_error_message(), "path") != NULL);
    CHECK_STATUS(cider_model_load(dir, NULL, NULL), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(m == SENTINEL_MODEL);

    CHECK_STATUS(cider_model_get_info(NULL, &info), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_model_get_info(model, NULL), CIDER_STATUS_INVALID_ARGUMENT);

    CHECK_STATUS(cider_tokenize(NULL, "a", 1, true, ids, 8, &n), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_tokenize(model, NULL, 1, true, ids, 8, &n), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_tokenize(model, "a", 1, true, NULL, 8, &n), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_tokenize(model, "a", 1, true, ids, 8, NULL), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(n == 77);
    CHECK_MESSAGE_NAMES("cider_tokenize");

    CHECK_STATUS(cider_detokenize(NULL, ids, 3, &text), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_detokenize(model, NULL, 3, &text), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_detokenize(model, ids, 3, NULL), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(text == (char *)(uintptr_t)0x9abc);

    CHECK_STATUS(cider_chat_template_apply(NULL, &msg, 1, true, &text), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_chat_template_apply(model, NULL, 1, true, &text), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_chat_template_apply(model, NULL, 0, true, &text), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_chat_template_apply(model, &msg, 1, true, NULL), CIDER_STATUS_INVALID_ARGUMENT);
    msg.role = NULL;
    CHECK_STATUS(cider_chat_template_apply(model, &msg, 1, true, &text), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(text == (char *)(uintptr_t)0x9abc);

    CHECK_STATUS(cider_session_new(NULL, &s), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_session_new(model, NULL), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(s == (cider_session *)(uintptr_t)0x5678);

    CHECK_OK(cider_session_new(model, &session));
    memset(&res, 0, sizeof res);
    CHECK_STATUS(cider_session_generate(NULL, "hi", NULL, NULL, NULL, &res), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_session_generate(session, NULL, NULL, NULL, NULL, &res), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_MESSAGE_NAMES("cider_session_generate");
    CHECK(strstr(cider_last_error_message(), "prompt") != NULL);
    CHECK_STATUS(cider_session_generate_tokens(NULL, ids, 3, NULL, NULL, NULL, &res), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_session_generate_tokens(session, NULL, 3, NULL, NULL, NULL, &res), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_session_generate_tokens(session, NULL, 0, NULL, NULL, NULL, &res), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(res.text == NULL && res.n_tokens == 0);
    cider_session_free(session);

    /* Freeing NULL is a no-op everywhere. */
    cider_model_free(NULL);
    cider_session_free(NULL);
    cider_string_free(NULL);
    cider_generation_result_free(NULL);
    CHECK(cider_last_error_message() != NULL);
}

int main(void) {
    const char *dir = env_or_die("CIDER_TEST_MODEL");
    cider_model *model;

    test_version();
    test_status_strings();
    test_load_failures(dir);
    model = test_load(dir);
    if (model == NULL) {
        return report("test_api");
    }
    test_info(model);
    test_tokenize(model);
    test_chat_template(model);
    test_no_template();
    test_greedy(model);
    test_sampling_and_options(model);
    test_session_outlives_model(dir);
    test_nulls(model);
    cider_model_free(model);
    return report("test_api");
}
