/*
 * chat - the daemon's chat request (see chat.h).
 */
#include "scheduler/chat/chat.h"

#include <stdlib.h>
#include <string.h>

#include "lmsched/wire.h"

#define CHAT_DEFAULT_PRIORITY 5

int chat_req_alloc(chat_req **rp)
{
    chat_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return LMSCHED_ENOMEM;
    r->system = calloc(1, 1);
    if (r->system == NULL) {
        free(r);
        return LMSCHED_ENOMEM;
    }
    r->max_tokens = -1;
    r->priority = CHAT_DEFAULT_PRIORITY;
    r->parallel_tool_calls = -1;
    *rp = r;
    return LMSCHED_OK;
}

void chat_req_free(chat_req *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n_messages; i++) {
        free(r->messages[i].role);
        free(r->messages[i].content);
        free(r->messages[i].parts_json);
        free(r->messages[i].tool_calls_json);
        free(r->messages[i].tool_call_id);
        free(r->messages[i].name);
    }
    free(r->messages);
    for (size_t i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->stop);
    free(r->system);
    free(r->model);
    free(r->agent);
    free(r->client_id);
    free(r->session);
    free(r->tools_json);
    free(r->tool_choice_json);
    free(r->response_format_json);
    free(r->extra_json);
    free(r);
}

const char *chat_reserved_key(const char *key)
{
    /* What the daemon decides (model routing, streaming, slot placement)
     * and what has a field of its own (so one value cannot be set twice). */
    static const char *const mine[] = {"model", "messages", "stream", "stream_options",
                                       "id_slot", "cache_prompt"};
    static const char *const fields[] = {"max_tokens", "temperature", "top_p", "stop", "seed",
                                         "tools", "tool_choice", "response_format",
                                         "parallel_tool_calls"};
    for (size_t i = 0; i < sizeof(mine) / sizeof(mine[0]); i++)
        if (strcmp(key, mine[i]) == 0)
            return "the scheduler sets it";
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        if (strcmp(key, fields[i]) == 0)
            return "it has a field of its own";
    return NULL;
}
