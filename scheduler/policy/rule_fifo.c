/*
 * rule_fifo - the "fifo" policy: the oldest request of the highest
 * priority runs next, on the least recently used idle slot it may use
 * (with several backends, one whose backend serves it: an older request
 * whose backends are all busy does not hold back the others).
 */
#include "scheduler/policy/internal.h"

/* Queued items looked at per level for one that some idle slot may run. */
#define FIFO_SCAN 64

static pol_item *fifo_choose(policy *p, int64_t now_us, int *slot)
{
    (void)now_us;
    for (int lv = POL_LEVELS - 1; lv >= 0; lv--) {
        int scan = FIFO_SCAN;
        for (pol_item *it = p->lv[lv].head; it != NULL && scan-- > 0; it = it->next) {
            if (!pol_item_placeable(p, it))
                continue;
            *slot = pol_lru_idle(p, it);
            if (*slot >= 0)
                return it;
        }
    }
    return NULL;
}

const pol_rule pol_rule_fifo = {
    .name = "fifo",
    .choose = fifo_choose,
    .holds_slots = false,
};
