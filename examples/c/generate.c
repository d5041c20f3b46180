/* A complete C program on libcider: load a model, render a chat prompt when
 * the model has a template, stream the reply to stdout, print statistics.
 *
 * Build:  cc -std=c99 -o generate examples/c/generate.c $(pkg-config --cflags --libs cider)
 * Run:    ./generate MODEL_DIR "Why is the sky blue?" [MAX_TOKENS] */
#include <cider.h>

#include <stdio.h>
#include <stdlib.h>

/* Prints each piece as it becomes final; returning false would stop early. */
static bool print_piece(const char *piece, size_t piece_len, int32_t token_id, void *user_data) {
    (void)token_id;
    (void)user_data;
    fwrite(piece, 1, piece_len, stdout);
    fflush(stdout);
    return true;
}

static int fail(const char *what, cider_status status) {
    fprintf(stderr, "%s failed: %s: %s\n", what, cider_status_string(status), cider_last_error_message());
    return 1;
}

int main(int argc, char **argv) {
    cider_model *model = NULL;
    cider_session *session = NULL;
    cider_model_info info;
    cider_generation_result result = {0};
    cider_generate_options options = cider_generate_options_default();
    char *prompt = NULL;
    cider_status status;
    int rc = 0;

    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL_DIR PROMPT [MAX_TOKENS]\n", argv[0]);
        return 2;
    }
    if (argc > 3) {
        options.max_tokens = (size_t)strtoul(argv[3], NULL, 10);
    }

    status = cider_model_load(argv[1], NULL, &model);
    if (status != CIDER_STATUS_OK) {
        return fail("cider_model_load", status);
    }
    cider_model_get_info(model, &info);
    fprintf(stderr, "libcider %s, %s model, %llu parameters\n", cider_version(), info.model_type,
            (unsigned long long)info.parameters);

    if (info.has_chat_template) {
        cider_chat_message message;
        message.role = "user";
        message.content = argv[2];
        status = cider_chat_template_apply(model, &message, 1, true, &prompt);
        if (status != CIDER_STATUS_OK) {
            rc = fail("cider_chat_template_apply", status);
            goto done;
        }
    }

    status = cider_session_new(model, &session);
    if (status != CIDER_STATUS_OK) {
        rc = fail("cider_session_new", status);
        goto done;
    }
    status = cider_session_generate(session, prompt != NULL ? prompt : argv[2], &options, print_piece, NULL, &result);
    if (status != CIDER_STATUS_OK && status != CIDER_STATUS_CANCELLED) {
        rc = fail("cider_session_generate", status);
        goto done;
    }
    fprintf(stderr, "\n%zu tokens (%s), prompt %.1f tok/s, generation %.1f tok/s, peak memory %.1f MiB\n",
            result.n_tokens,
            result.finish_reason == CIDER_FINISH_REASON_STOP     ? "stop"
            : result.finish_reason == CIDER_FINISH_REASON_LENGTH ? "length"
                                                                 : "cancelled",
            result.stats.prompt_tps, result.stats.generation_tps, result.stats.peak_memory_bytes / 1048576.0);

done:
    cider_generation_result_free(&result);
    cider_session_free(session);
    cider_string_free(prompt);
    cider_model_free(model);
    return rc;
}
