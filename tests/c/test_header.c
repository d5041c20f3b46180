/* The header alone, included twice, under the strictest C99 flags the
 * runner uses (-std=c99 -pedantic -Wall -Wextra -Werror): every type and
 * function is named so a missing or misspelled declaration fails here. */
#include "cider.h"
#include "cider.h"

int main(void) {
    cider_status s = CIDER_STATUS_OK;
    cider_finish_reason f = CIDER_FINISH_REASON_STOP;
    cider_load_options lo = cider_load_options_default();
    cider_generate_options go = cider_generate_options_default();
    cider_model_info info;
    cider_chat_message msg;
    cider_generation_result res = {0};
    cider_generation_stats stats;
    cider_progress_callback pc = (cider_progress_callback)0;
    cider_token_callback tc = (cider_token_callback)0;
    const char *(*fns[3])(void) = {cider_version, cider_last_error_message, 0};
    (void)s; (void)f; (void)lo; (void)go; (void)info; (void)msg; (void)stats; (void)pc; (void)tc; (void)fns;
    (void)cider_status_string; (void)cider_model_load; (void)cider_model_free; (void)cider_model_get_info;
    (void)cider_tokenize; (void)cider_detokenize; (void)cider_chat_template_apply; (void)cider_string_free;
    (void)cider_session_new; (void)cider_session_free; (void)cider_session_generate;
    (void)cider_session_generate_tokens; (void)cider_generation_result_free;
    cider_generation_result_free(&res);
    return (CIDER_VERSION_MAJOR >= 0 && CIDER_SEED_RANDOM == UINT64_MAX) ? 0 : 1;
}
