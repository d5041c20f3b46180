/* The model manager from C: three tiny models of different sizes (small,
 * medium, large: about 1 : 2 : 4) registered with priorities and task tags
 * under a budget that fits the two largest but not all three. Acquires in
 * sequence and checks which are resident after each step (eviction by
 * priority, pinned models kept), a too-big model refused with
 * CIDER_STATUS_OUT_OF_MEMORY and a message, the fallback to a smaller model,
 * select, a deferred unload while an acquired model generates, statistics
 * saved to a file, scanning, registry files, bad metadata, and NULL
 * arguments everywhere.
 *
 * Environment (set by tests/c/run.sh):
 *   CIDER_TEST_MANAGER_MODELS  absolute path of a folder with small/, medium/ and large/
 *   CIDER_TEST_WORK            scratch folder (files written here) */
#include "cider.h"

#include <stdbool.h>
#include <stdint.h>

#include "test_util.h"

static const char *const NAMES[3] = {"small", "medium", "large"};
static char g_paths[3][4096];
static uint64_t g_weights[3];

/* ---- minimal JSON helpers (the shapes are cider's own, compact) ---- */

/* Reset too, so a later failed call cannot leave a freed string to be read. */
#define FREE_JSON(j)          \
    do {                      \
        cider_string_free(j); \
        (j) = NULL;           \
    } while (0)

static bool has_name(const char *json, const char *name) {
    char key[256];
    snprintf(key, sizeof key, "\"name\":\"%s\"", name);
    return json != NULL && strstr(json, key) != NULL;
}

/* The first unsigned number after "key": in `json`, or UINT64_MAX. */
static uint64_t json_u64(const char *json, const char *key) {
    char k[128];
    const char *p;
    snprintf(k, sizeof k, "\"%s\":", key);
    p = json ? strstr(json, k) : NULL;
    return p ? strtoull(p + strlen(k), NULL, 10) : UINT64_MAX;
}

static char *loaded_json(const cider_manager *mgr) {
    char *json = NULL;
    CHECK_OK(cider_manager_loaded_json(mgr, &json));
    return json;
}

/* Checks that exactly the models flagged in `expect` (small, medium, large)
 * are resident. */
#define CHECK_RESIDENT(mgr, s, m, l) check_resident((mgr), (bool[3]){(s), (m), (l)}, __LINE__)
static void check_resident(const cider_manager *mgr, const bool expect[3], int line) {
    char *json = loaded_json(mgr);
    int i;
    for (i = 0; i < 3; i++) {
        g_checks++;
        if (has_name(json, NAMES[i]) != expect[i]) {
            g_failures++;
            fprintf(stderr, "%s:%d: %s should %sbe loaded; loaded: %s\n", __FILE__, line, NAMES[i],
                    expect[i] ? "" : "not ", json ? json : "(null)");
        }
    }
    FREE_JSON(json);
}

/* Acquires and frees at once: loads the model (if needed) and leaves it idle. */
static void touch(cider_manager *mgr, const char *name) {
    cider_model *m = NULL;
    CHECK_OK(cider_manager_acquire(mgr, name, false, &m));
    CHECK(m != NULL);
    cider_model_free(m);
}

static char *selected(const cider_manager *mgr, const char *task, uint64_t max_memory) {
    char *json = NULL;
    CHECK_OK(cider_manager_select(mgr, task, max_memory, &json));
    return json;
}

#define CHECK_CHOSEN(mgr, task, max_memory, expected_literal)                                    \
    do {                                                                                         \
        char *j_ = selected((mgr), (task), (max_memory));                                        \
        g_checks++;                                                                              \
        if (j_ == NULL || strstr(j_, expected_literal) == NULL) {                                \
            g_failures++;                                                                        \
            fprintf(stderr, "%s:%d: select(%s) should give %s, gave %s\n", __FILE__, __LINE__,   \
                    (task) ? (task) : "NULL", expected_literal, j_ ? j_ : "(null)");             \
        }                                                                                        \
        cider_string_free(j_);                                                                   \
    } while (0)

static void register_all(cider_manager *mgr) {
    /* small is the most important; medium and large also do "code". */
    static const char *const META[3] = {
        "{\"priority\": 0, \"tasks\": [\"chat\", \"classification\"], \"scores\": {\"quality\": 0.5},"
        " \"aliases\": [\"tiny\"]}",
        "{\"priority\": 1, \"tasks\": [\"chat\", \"code\"], \"scores\": {\"quality\": 0.7}}",
        "{\"priority\": 2, \"tasks\": [\"chat\", \"code\"], \"scores\": {\"quality\": 0.9},"
        " \"description\": \"the big one\"}",
    };
    int i;
    for (i = 0; i < 3; i++) {
        char *info = NULL;
        CHECK_OK(cider_manager_register(mgr, NAMES[i], g_paths[i], META[i]));
        CHECK_OK(cider_manager_info_json(mgr, NAMES[i], &info));
        g_weights[i] = json_u64(info, "weight_bytes");
        CHECK(g_weights[i] > 0 && g_weights[i] != UINT64_MAX);
        cider_string_free(info);
    }
    /* The sizes the scenario relies on. */
    CHECK(g_weights[0] < g_weights[1] && g_weights[1] < g_weights[2]);
}

/* Greedy tokens of `model` for a fixed prompt. */
static size_t greedy(const cider_model *model, int32_t *ids, size_t cap) {
    cider_session *s = NULL;
    cider_generate_options o = cider_generate_options_default();
    cider_generation_result r;
    size_t n = 0;
    memset(&r, 0, sizeof r);
    o.max_tokens = 8;
    o.ignore_eos = true;
    CHECK_OK(cider_session_new(model, &s));
    CHECK_OK(cider_session_generate(s, "The quick brown fox", &o, NULL, NULL, &r));
    if (r.n_tokens <= cap) {
        n = r.n_tokens;
        memcpy(ids, r.tokens, n * sizeof *ids);
    }
    cider_generation_result_free(&r);
    cider_session_free(s);
    return n;
}

static void test_scenario(const char *work) {
    cider_manager_options o = cider_manager_options_default();
    cider_manager *mgr = NULL;
    cider_model *held = NULL, *direct = NULL;
    cider_session *sess = NULL;
    cider_unload_outcome outcome = CIDER_UNLOAD_OUTCOME_NOT_LOADED;
    char stats_path[4096], *json = NULL;
    int32_t a[16], b[16];
    size_t na, nb;
    uint64_t budget;
    FILE *f;

    CHECK(o.budget_bytes == 0 && o.stats_path == NULL && o.context_length == 0);
    snprintf(stats_path, sizeof stats_path, "%s/manager-stats.json", work);
    remove(stats_path);
    o.stats_path = stats_path;
    CHECK_OK(cider_manager_new(NULL, &o, &mgr));
    if (mgr == NULL) {
        return;
    }
    register_all(mgr);
    /* Fits large + medium (with room for measurement overhead), not all three. */
    budget = g_weights[2] + g_weights[1] + g_weights[0] / 2;
    CHECK_OK(cider_manager_set_budget(mgr, budget));
    CHECK_OK(cider_manager_memory_json(mgr, &json));
    CHECK(json_u64(json, "budget_bytes") == budget);
    FREE_JSON(json);

    CHECK_OK(cider_manager_list_json(mgr, &json));
    CHECK(has_name(json, "small") && has_name(json, "medium") && has_name(json, "large"));
    CHECK(json != NULL && strstr(json, "the big one") != NULL);
    FREE_JSON(json);
    CHECK_RESIDENT(mgr, false, false, false);

    /* 1-2: both fit. */
    touch(mgr, "tiny"); /* by alias */
    CHECK_RESIDENT(mgr, true, false, false);
    touch(mgr, "medium");
    CHECK_RESIDENT(mgr, true, true, false);
    /* 3: large needs room; medium (priority 1) goes before small (priority 0)
     * although small was used less recently. */
    touch(mgr, "large");
    CHECK_RESIDENT(mgr, true, false, true);
    CHECK_OK(cider_manager_memory_json(mgr, &json));
    CHECK(json_u64(json, "accounted_bytes") <= budget);
    FREE_JSON(json);

    /* 4: pinned large (the least important) is kept; small goes instead. */
    CHECK_OK(cider_manager_pin(mgr, "large"));
    touch(mgr, "medium");
    CHECK_RESIDENT(mgr, false, true, true);
    /* 5: with both pinned nothing can make room for small. */
    CHECK_OK(cider_manager_pin(mgr, "medium"));
    CHECK_STATUS(cider_manager_acquire(mgr, "small", false, &held), CIDER_STATUS_OUT_OF_MEMORY);
    CHECK(held == NULL);
    CHECK_MESSAGE_NAMES("cider_manager_acquire");
    CHECK(strstr(cider_last_error_message(), "small") != NULL);
    CHECK(strstr(cider_last_error_message(), "needs") != NULL);
    CHECK(strstr(cider_last_error_message(), "large") != NULL); /* what is loaded */
    CHECK(strstr(cider_last_error_message(), "pinned") != NULL);
    CHECK_RESIDENT(mgr, false, true, true);
    CHECK_OK(cider_manager_unpin(mgr, "medium"));
    CHECK_OK(cider_manager_unpin(mgr, "large"));
    /* Unpinned, the least important goes again. */
    touch(mgr, "small");
    CHECK_RESIDENT(mgr, true, true, false);

    /* 6: a model bigger than the whole budget. */
    CHECK_OK(cider_manager_set_budget(mgr, g_weights[1] + g_weights[0] / 2));
    CHECK_RESIDENT(mgr, true, false, false); /* medium (priority 1) goes, although more recent */
    CHECK_STATUS(cider_manager_acquire(mgr, "large", false, &held), CIDER_STATUS_OUT_OF_MEMORY);
    CHECK(held == NULL);
    CHECK_MESSAGE_NAMES("cider_manager_acquire");
    CHECK(strstr(cider_last_error_message(), "\"large\" needs") != NULL);
    CHECK(strstr(cider_last_error_message(), "budget") != NULL);
    /* ... with a fallback allowed: the best smaller "chat" model, small (priority 0). */
    CHECK_OK(cider_manager_acquire(mgr, "large", true, &held));
    CHECK(held != NULL);
    json = loaded_json(mgr);
    CHECK(has_name(json, "small") && !has_name(json, "large"));
    CHECK(json != NULL && strstr(json, "\"in_use\":true") != NULL);
    FREE_JSON(json);
    cider_model_free(held);
    held = NULL;

    /* 7: select ranks by priority, then score, within the memory limit. */
    CHECK_OK(cider_manager_set_budget(mgr, budget));
    CHECK_CHOSEN(mgr, "code", 0, "\"chosen\":\"medium\"");
    CHECK_CHOSEN(mgr, "chat", 0, "\"chosen\":\"small\"");
    CHECK_CHOSEN(mgr, NULL, 0, "\"chosen\":\"small\"");
    CHECK_CHOSEN(mgr, "classification", 0, "\"chosen\":\"small\"");
    CHECK_CHOSEN(mgr, "code", g_weights[1] - 1, "\"chosen\":null");
    CHECK_CHOSEN(mgr, "code", g_weights[1] - 1, "needs");
    CHECK_CHOSEN(mgr, "embedding", 0, "\"chosen\":null");
    CHECK_CHOSEN(mgr, "embedding", 0, "no task tag");

    /* 8: unloading a model in use is deferred; it stays usable and matches a
     * direct load token for token. */
    CHECK_OK(cider_manager_acquire(mgr, "large", false, &held));
    CHECK_RESIDENT(mgr, true, false, true);
    CHECK_OK(cider_manager_unload(mgr, "large", &outcome));
    CHECK(outcome == CIDER_UNLOAD_OUTCOME_DEFERRED);
    json = loaded_json(mgr);
    CHECK(json != NULL && strstr(json, "\"unload_pending\":true") != NULL);
    FREE_JSON(json);
    CHECK_OK(cider_session_new(held, &sess));
    na = greedy(held, a, 16);
    CHECK(na == 8);
    CHECK_OK(cider_model_load(g_paths[2], NULL, &direct));
    nb = greedy(direct, b, 16);
    CHECK(na == nb && memcmp(a, b, na * sizeof *a) == 0);
    cider_model_free(direct);
    CHECK_RESIDENT(mgr, true, false, true);
    /* The session made from it keeps it in use after the model is freed. */
    cider_session_free(sess);
    cider_model_free(held);
    held = NULL;
    CHECK_RESIDENT(mgr, true, false, false);
    CHECK_OK(cider_manager_unload(mgr, "large", &outcome));
    CHECK(outcome == CIDER_UNLOAD_OUTCOME_NOT_LOADED);
    CHECK_OK(cider_manager_unload(mgr, "small", NULL));
    CHECK_RESIDENT(mgr, false, false, false);

    /* 9: preload, statistics. */
    {
        const char *const names[2] = {"medium", "small"};
        CHECK_OK(cider_manager_preload(mgr, names, 2, &json));
        CHECK(has_name(json, "medium") && has_name(json, "small"));
        FREE_JSON(json);
        CHECK_OK(cider_manager_preload(mgr, NULL, 0, NULL));
    }
    CHECK_RESIDENT(mgr, true, true, false);
    CHECK_OK(cider_manager_stats_json(mgr, "large", &json));
    CHECK(json_u64(json, "loads") == 2); /* steps 3 and 8 */
    FREE_JSON(json);
    CHECK_OK(cider_manager_stats_json(mgr, NULL, &json));
    CHECK(json != NULL && strstr(json, "\"small\":{") != NULL && strstr(json, "\"large\":{") != NULL);
    FREE_JSON(json);
    CHECK_OK(cider_manager_save_stats(mgr));
    f = fopen(stats_path, "r");
    CHECK(f != NULL);
    if (f != NULL) {
        fclose(f);
    }
    cider_manager_free(mgr);
}

/* A model acquired from a manager outlives it. */
static void test_outlives_manager(void) {
    cider_manager *mgr = NULL;
    cider_model *m = NULL;
    int32_t ids[16];
    CHECK_OK(cider_manager_new(NULL, NULL, &mgr));
    CHECK_OK(cider_manager_register(mgr, "s", g_paths[0], NULL));
    CHECK_OK(cider_manager_acquire(mgr, "s", false, &m));
    cider_manager_free(mgr);
    CHECK(greedy(m, ids, 16) == 8);
    cider_model_free(m);
}

static void test_scan_and_registry_file(const char *dir, const char *work) {
    cider_manager *mgr = NULL;
    char path[4096], *json = NULL;
    size_t added = 0;
    FILE *f;

    CHECK_OK(cider_manager_new(NULL, NULL, &mgr));
    CHECK_OK(cider_manager_scan(mgr, dir, &added));
    CHECK(added == 3);
    CHECK_OK(cider_manager_scan(mgr, dir, &added)); /* already known: nothing new */
    CHECK(added == 0);
    CHECK_OK(cider_manager_list_json(mgr, &json));
    CHECK(has_name(json, "small") && has_name(json, "medium") && has_name(json, "large"));
    FREE_JSON(json);
    CHECK_STATUS(cider_manager_acquire(mgr, "nope", false, &(cider_model *){NULL}), CIDER_STATUS_NOT_FOUND);
    CHECK(strstr(cider_last_error_message(), "nope") != NULL);
    CHECK_STATUS(cider_manager_scan(mgr, "/no/such/folder", NULL), CIDER_STATUS_NOT_FOUND);
    CHECK_OK(cider_manager_scan_hf_cache(mgr, NULL));
    cider_manager_free(mgr);

    /* A registry file: metadata applies, and the budget is read from it. */
    snprintf(path, sizeof path, "%s/manager-registry.json", work);
    f = fopen(path, "w");
    CHECK(f != NULL);
    if (f == NULL) {
        return;
    }
    fprintf(f, "{\"version\": 1, \"scan\": [\"%s\"], \"budget\": \"1GiB\",\n"
               " \"models\": {\"medium\": {\"priority\": 0, \"tasks\": [\"code\"]}}}\n", dir);
    fclose(f);
    mgr = NULL;
    CHECK_OK(cider_manager_new(path, NULL, &mgr));
    if (mgr == NULL) {
        return;
    }
    CHECK_CHOSEN(mgr, "code", 0, "\"chosen\":\"medium\"");
    CHECK_OK(cider_manager_memory_json(mgr, &json));
    CHECK(json_u64(json, "budget_bytes") == 1073741824ull);
    FREE_JSON(json);
    cider_manager_free(mgr);

    /* Errors in the file name the key. */
    f = fopen(path, "w");
    if (f != NULL) {
        fprintf(f, "{\"models\": {\"medium\": {\"path\": \"%s/medium\", \"pinnned\": true}}}\n", dir);
        fclose(f);
    }
    mgr = NULL;
    CHECK_STATUS(cider_manager_new(path, NULL, &mgr), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(mgr == NULL);
    CHECK(strstr(cider_last_error_message(), "models.medium.pinnned") != NULL);
    snprintf(path, sizeof path, "%s/no-such-registry.json", work);
    CHECK_STATUS(cider_manager_new(path, NULL, &mgr), CIDER_STATUS_NOT_FOUND);
    CHECK(mgr == NULL);
}

static void test_bad_metadata(void) {
    cider_manager *mgr = NULL;
    CHECK_OK(cider_manager_new(NULL, NULL, &mgr));
    CHECK_STATUS(cider_manager_register(mgr, "m", g_paths[0], "{\"priority\": \"high\"}"),
                 CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(cider_last_error_message(), "priority") != NULL);
    CHECK_STATUS(cider_manager_register(mgr, "m", g_paths[0], "{\"pinnned\": true}"), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(cider_last_error_message(), "pinnned") != NULL);
    CHECK_STATUS(cider_manager_register(mgr, "m", g_paths[0], "{\"priority\": 1"), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(cider_last_error_message(), "line 1") != NULL);
    CHECK_STATUS(cider_manager_register(mgr, "m", g_paths[0], "[1]"), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_manager_register(mgr, "m", g_paths[0], "{\"path\": \"x\"}"), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_manager_register(mgr, "m", "/no/such/model", NULL), CIDER_STATUS_NOT_FOUND);
    CHECK_OK(cider_manager_register(mgr, "a", g_paths[0], "{\"aliases\": [\"x\"]}"));
    CHECK_STATUS(cider_manager_register(mgr, "b", g_paths[1], "{\"aliases\": [\"x\"]}"),
                 CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cider_manager_pin(mgr, "nope"), CIDER_STATUS_NOT_FOUND);
    CHECK_STATUS(cider_manager_stats_json(mgr, "nope", &(char *){NULL}), CIDER_STATUS_NOT_FOUND);
    cider_manager_free(mgr);
}

static void test_null_arguments(void) {
    cider_manager *mgr = NULL;
    cider_model *model = (cider_model *)(uintptr_t)0x1234;
    char *json = (char *)(uintptr_t)0x1234;
    const char *names[1] = {NULL};

    cider_manager_free(NULL);
    CHECK_STATUS(cider_manager_new(NULL, NULL, NULL), CIDER_STATUS_INVALID_ARGUMENT);
    CHECK_MESSAGE_NAMES("cider_manager_new");
    CHECK_OK(cider_manager_new(NULL, NULL, &mgr));

#define CHECK_NULL(call, fn)                                  \
    do {                                                      \
        CHECK_STATUS(call, CIDER_STATUS_INVALID_ARGUMENT);    \
        CHECK_MESSAGE_NAMES(fn);                              \
        CHECK(strstr(cider_last_error_message(), "NULL"));    \
    } while (0)

    CHECK_NULL(cider_manager_register(NULL, "a", g_paths[0], NULL), "cider_manager_register");
    CHECK_NULL(cider_manager_register(mgr, NULL, g_paths[0], NULL), "cider_manager_register");
    CHECK_NULL(cider_manager_register(mgr, "a", NULL, NULL), "cider_manager_register");
    CHECK_NULL(cider_manager_scan(NULL, "/", NULL), "cider_manager_scan");
    CHECK_NULL(cider_manager_scan(mgr, NULL, NULL), "cider_manager_scan");
    CHECK_NULL(cider_manager_scan_hf_cache(NULL, NULL), "cider_manager_scan_hf_cache");
    CHECK_NULL(cider_manager_acquire(NULL, "a", false, &model), "cider_manager_acquire");
    CHECK_NULL(cider_manager_acquire(mgr, NULL, false, &model), "cider_manager_acquire");
    CHECK_NULL(cider_manager_acquire(mgr, g_paths[0], false, NULL), "cider_manager_acquire");
    CHECK(model == (cider_model *)(uintptr_t)0x1234);
    CHECK_NULL(cider_manager_preload(NULL, NULL, 0, NULL), "cider_manager_preload");
    CHECK_NULL(cider_manager_preload(mgr, NULL, 1, NULL), "cider_manager_preload");
    CHECK_NULL(cider_manager_preload(mgr, names, 1, NULL), "cider_manager_preload");
    CHECK_NULL(cider_manager_pin(NULL, "a"), "cider_manager_pin");
    CHECK_NULL(cider_manager_pin(mgr, NULL), "cider_manager_pin");
    CHECK_NULL(cider_manager_unpin(NULL, "a"), "cider_manager_unpin");
    CHECK_NULL(cider_manager_unpin(mgr, NULL), "cider_manager_unpin");
    CHECK_NULL(cider_manager_unload(NULL, "a", NULL), "cider_manager_unload");
    CHECK_NULL(cider_manager_unload(mgr, NULL, NULL), "cider_manager_unload");
    CHECK_NULL(cider_manager_select(NULL, NULL, 0, &json), "cider_manager_select");
    CHECK_NULL(cider_manager_select(mgr, NULL, 0, NULL), "cider_manager_select");
    CHECK_NULL(cider_manager_list_json(NULL, &json), "cider_manager_list_json");
    CHECK_NULL(cider_manager_list_json(mgr, NULL), "cider_manager_list_json");
    CHECK_NULL(cider_manager_info_json(NULL, "a", &json), "cider_manager_info_json");
    CHECK_NULL(cider_manager_info_json(mgr, NULL, &json), "cider_manager_info_json");
    CHECK_NULL(cider_manager_info_json(mgr, "a", NULL), "cider_manager_info_json");
    CHECK_NULL(cider_manager_loaded_json(NULL, &json), "cider_manager_loaded_json");
    CHECK_NULL(cider_manager_loaded_json(mgr, NULL), "cider_manager_loaded_json");
    CHECK_NULL(cider_manager_memory_json(NULL, &json), "cider_manager_memory_json");
    CHECK_NULL(cider_manager_memory_json(mgr, NULL), "cider_manager_memory_json");
    CHECK_NULL(cider_manager_stats_json(NULL, NULL, &json), "cider_manager_stats_json");
    CHECK_NULL(cider_manager_stats_json(mgr, NULL, NULL), "cider_manager_stats_json");
    CHECK_NULL(cider_manager_set_budget(NULL, 1), "cider_manager_set_budget");
    CHECK_NULL(cider_manager_save_stats(NULL), "cider_manager_save_stats");
    CHECK(json == (char *)(uintptr_t)0x1234); /* outputs untouched on failure */
    json = NULL;
    /* Nothing was registered or loaded by the failed calls. */
    CHECK_OK(cider_manager_list_json(mgr, &json));
    CHECK(json != NULL && strcmp(json, "[]") == 0);
    FREE_JSON(json);
    /* Budget 0 means the default. */
    CHECK_OK(cider_manager_set_budget(mgr, 0));
    CHECK_OK(cider_manager_memory_json(mgr, &json));
    CHECK(json_u64(json, "budget_bytes") > 0 && json_u64(json, "budget_bytes") != UINT64_MAX);
    FREE_JSON(json);
    cider_manager_free(mgr);
#undef CHECK_NULL
}

int main(void) {
    const char *dir = env_or_die("CIDER_TEST_MANAGER_MODELS");
    const char *work = env_or_die("CIDER_TEST_WORK");
    int i;
    for (i = 0; i < 3; i++) {
        snprintf(g_paths[i], sizeof g_paths[i], "%s/%s", dir, NAMES[i]);
    }
    test_null_arguments();
    test_bad_metadata();
    test_scenario(work);
    test_outlives_manager();
    test_scan_and_registry_file(dir, work);
    return report("test_manager");
}
