/*
 * rule_fifo - the "fifo" policy: the oldest request of the highest
 * priority runs next, on the least recently used idle slot.
 */
#include "scheduler/policy/internal.h"

static pol_item *fifo_choose(policy *p, int64_t now_us, int *slot)
{
    (void)now_us;
    *slot = pol_lru_idle(p);
    for (int lv = POL_LEVELS - 1; lv >= 0; lv--)
        if (p->lv[lv].head != NULL)
            return p->lv[lv].head;
    return NULL;
}

const pol_rule pol_rule_fifo = {
    .name = "fifo",
    .choose = fifo_choose,
    .holds_slots = false,
};
