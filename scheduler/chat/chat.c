/*
 * chat - the daemon's chat request (see chat.h).
 */
#include "scheduler/chat/chat.h"

#include <stdlib.h>

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
    }
    free(r->messages);
    for (size_t i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->stop);
    free(r->system);
    free(r->model);
    free(r->agent);
    free(r->client_id);
    free(r);
}
