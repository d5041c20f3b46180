/* Small test helpers shared by the C tests: checks that count failures and
 * report file:line, and reading the expected-token files the runner writes. */
#ifndef CIDER_TEST_UTIL_H
#define CIDER_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cider.h"

static int g_checks = 0;
static int g_failures = 0;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        g_checks++;                                                                  \
        if (!(cond)) {                                                               \
            g_failures++;                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                            \
    } while (0)

/* Checks a status and, on failure, prints the thread's last error message. */
#define CHECK_STATUS(call, expected)                                                   \
    do {                                                                               \
        cider_status st_ = (call);                                                     \
        g_checks++;                                                                    \
        if (st_ != (expected)) {                                                       \
            g_failures++;                                                              \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s (%s)\n", __FILE__,     \
                    __LINE__, #call, cider_status_string(st_),                         \
                    cider_status_string(expected), cider_last_error_message());        \
        }                                                                              \
    } while (0)

#define CHECK_OK(call) CHECK_STATUS(call, CIDER_STATUS_OK)

/* A failed call must leave a message that names the function. */
#define CHECK_MESSAGE_NAMES(fn)                                                 \
    do {                                                                        \
        const char *m_ = cider_last_error_message();                           \
        g_checks++;                                                             \
        if (m_ == NULL || strstr(m_, fn) == NULL) {                             \
            g_failures++;                                                       \
            fprintf(stderr, "%s:%d: last error \"%s\" does not name %s\n",      \
                    __FILE__, __LINE__, m_ ? m_ : "(null)", fn);                \
        }                                                                       \
    } while (0)

static inline const char *env_or_die(const char *name) {
    const char *v = getenv(name);
    if (v == NULL || v[0] == '\0') {
        fprintf(stderr, "environment variable %s is not set\n", name);
        exit(2);
    }
    return v;
}

/* Reads whitespace-separated token ids; returns how many (at most cap). */
static inline size_t read_ids(const char *path, int32_t *ids, size_t cap) {
    FILE *f = fopen(path, "r");
    size_t n = 0;
    long v;
    if (f == NULL) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(2);
    }
    while (n < cap && fscanf(f, "%ld", &v) == 1) {
        ids[n++] = (int32_t)v;
    }
    fclose(f);
    return n;
}

static inline int report(const char *name) {
    printf("%s: %d checks, %d failures\n", name, g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}

#endif /* CIDER_TEST_UTIL_H */
