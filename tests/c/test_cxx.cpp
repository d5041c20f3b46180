// The header compiles as C++ (-Wall -Wextra -Werror), twice included, and
// links: the declarations sit inside extern "C".
#include "cider.h"
#include "cider.h"

#include <cstdio>
#include <cstring>

int main() {
    cider_generate_options opts = cider_generate_options_default();
    cider_load_options load = cider_load_options_default();
    cider_model *model = nullptr;
    cider_status st = cider_model_load(nullptr, &load, &model);
    bool ok = std::strcmp(cider_version(), CIDER_VERSION_STRING) == 0 && opts.max_tokens > 0 &&
              st == CIDER_STATUS_INVALID_ARGUMENT && model == nullptr &&
              std::strlen(cider_last_error_message()) > 0;
    cider_model_free(model);
    std::printf("test_cxx: %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
