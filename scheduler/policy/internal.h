/*
 * internal - the policy's internal state and its rule table, shared by the
 * files of scheduler/policy/ only: policy.c (the public API: queue, groups,
 * dispatch bookkeeping), state.c (the queries every rule makes) and the
 * rules (rule_fifo.c, rule_prefix.c). Calls go policy.c -> rules -> state.c
 * and policy.c -> state.c, never back.
 */
#ifndef LMSCHED_POLICY_INT_H
#define LMSCHED_POLICY_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "scheduler/policy/policy.h"
#include "scheduler/chat/chain.h"
#include "scheduler/policy/slots.h"

#define POL_LEVELS 10
#define POL_MAX_SLOTS 256
/* Groups kept for status once they have nothing queued, in flight or
 * resident; active groups are never dropped. */
#define POL_MAX_IDLE_GROUPS 4096
/* A group remembers this many blocks of its first member to measure the
 * prefix its members share (64 KiB of prompt). */
#define POL_REF_BLOCKS 1024
/* Per group and priority, how many queued items the prefix policy compares
 * for a deeper-than-the-group match (multi-turn conversations). */
#define POL_SCAN_ITEMS 32
/* How many older queued items one dispatch credits with an overtake. */
#define POL_OVERTAKE_WALK 64
/* A group whose prefix is on a busy slot gets another slot once it has
 * more than this many queued items per slot holding it. */
#define POL_DUP_FACTOR 2
/* ... or at once onto an empty slot when its prefix is at most this many
 * blocks (512 tokens). */
#define POL_CHEAP_COPY_BLOCKS 32
/* Prompts remembered to recognise conversations (policy.served). */
#define POL_SERVED 64
/* A group is conversational while its score (+2 per request that
 * continued a served prompt, -1 per other request, at most 8) is at least
 * this. */
#define POL_CONV_MIN 2
/* A slot is held for a conversation's next turn unless the turn it just
 * served was already such a continuation: each conversation keeps a slot
 * for two turns in a row at most, so others are not starved. */
#define POL_STICKY_TURNS 1
#define POL_TOKENS_PER_BLOCK (PREFIX_BLOCK_BYTES / PREFIX_BYTES_PER_TOKEN)
/* Fewer uncached tokens than this are not a load to the cost model: they
 * neither set the engine's time scale nor measure what the backend
 * restores (cost.c). */
#define POL_MIN_LOAD_TOKENS 64
/* A backend restores evicted prefixes by itself (llama.cpp's host cache)
 * once the restore share (cost.c) is at least this (pol_restores). */
#define POL_RESTORING 0.75
/* What the backend was seen to restore before any request
 * (policy_seed_restore) counts as this many reloads: as many as
 * pol_restores needs, so it decides from the start. */
#define POL_SEED_LOADS 3
/* A probe that saw the backend restore is believed for this many reloads
 * of real traffic whatever they read: at the start of a burst, turns race
 * the server's save of the prompts their slots are losing (a reload that
 * comes too soon finds nothing restored), and two such reloads would turn
 * the verdict over (POL_EWMA 0.25 from 1 to 0.56). On llama-server's chat
 * runs those low readings came within the first 10-13 reloads
 * (docs/benchmarks.md); past this many, the traffic decides alone, so a
 * host cache that fills up is still noticed. */
#define POL_PROBE_TRUST 12

struct policy;

/* A queue policy's decision, as a table of functions: policy.c looks the
 * rule up by name and calls it; nothing else tells policies apart. */
typedef struct pol_rule {
    const char *name;
    /* The queued item to start next and its idle slot (*slot), the item
     * still queued (policy_next dispatches it), or NULL to start nothing
     * now. May lower p->wake_us to when it could choose differently. */
    pol_item *(*choose)(struct policy *p, int64_t now_us, int *slot);
    /* Keeps a slot that just served a conversation's turn for its next
     * turn (gather_us), and refuses to dispatch onto such a slot. */
    bool holds_slots;
    /* Whether it would start now on an empty idle slot, were one freed for
     * it (policy_top); NULL: always. */
    bool (*takes_free_slot)(const struct policy *p, const pol_item *it);
} pol_rule;

extern const pol_rule pol_rule_fifo;
extern const pol_rule pol_rule_prefix;

struct pol_group;

/* The policy's per-item state, it->priv while queued. */
typedef struct pol_node {
    pol_item *it;
    struct pol_group *g;
    struct pol_node *gprev, *gnext; /* in g->lv[priority], seq order */
    uint32_t overtakes;             /* later arrivals dispatched before it */
} pol_node;

typedef struct pol_nlist {
    pol_node *head, *tail;
} pol_nlist;

typedef struct pol_list {
    pol_item *head, *tail;
} pol_list;

typedef struct pol_group {
    uint64_t id;
    struct pol_group *hnext;         /* hash chain */
    struct pol_group *rprev, *rnext; /* recency list, most recent first */
    char label[48];
    bool seen; /* a member was pushed (ref, label set) */
    pol_nlist lv[POL_LEVELS];
    unsigned n_lv[POL_LEVELS];
    size_t lv_pos[POL_LEVELS]; /* index in heap policy.active[lv] while n_lv > 0 */
    unsigned queued, inflight, resident;
    uint64_t *ref; /* first member's blocks, at most POL_REF_BLOCKS */
    uint32_t n_ref;
    uint32_t pfx_blocks; /* blocks every member seen so far shares */
    uint64_t requests, prompt_tokens, cached_tokens;
    unsigned conv_score; /* POL_CONV_MIN: recent requests continued served prompts */
    int64_t last_enq_us; /* its latest arrival, 0 none */
    double gap_us;       /* mean time between its arrivals (EWMA), 0 unknown */
    /* Share of its recent arrivals (EWMA) whose sender still had a request
     * of the group queued or running: its agents send without waiting for
     * answers, so its arrivals do not wait for the policy (cost.c). */
    double pipelined;
} pol_group;

typedef struct pol_slot {
    slot_cache cache;
    bool busy;
    uint64_t last_used; /* LRU stamp, as the backend keeps one */
    pol_group *group;   /* whose prefix the cache holds, or NULL */
    pol_group *run;     /* the group of the request running there */
    bool run_cont;      /* that request continued the slot's previous prompt */
    unsigned streak;    /* consecutive such continuations on this slot */
    uint64_t session;   /* the session of the request that ran there last, 0 none */
    uint64_t source;    /* who sent the request running there, 0 unknown */
    bool hold_pending;  /* freed after a conversation turn: hold it ... */
    int64_t hold_until; /* ... until then, for the turn that continues it */
    /* The request running there, for the cost model (cost.c): */
    int64_t start_us;     /* dispatched then */
    uint32_t est_prompt;  /* its estimated prompt tokens */
    uint32_t est_cached;  /* of those, expected cached */
    uint32_t est_seen;    /* of those, held by a slot before (>= est_cached) */
    uint32_t gen;         /* tokens it may generate (max_tokens, else the mean seen) */
    bool end_unstamped;   /* ended without a time: measured at the next policy_next */
    double end_x, end_g;  /* ... with these prefilled and generated tokens */
    bool taken;           /* busy with the caller's own use (policy_slot_take) */
} pol_slot;

typedef struct pol_garr {
    pol_group **v;
    size_t n, cap;
} pol_garr;

/* What the policy has measured of the backend (cost.c). Times are on the
 * caller's clock, tokens are the backend's own (its usage counts). */
typedef struct pol_meter {
    double pf_us;      /* per prefilled token, while one load prefills; 0 unknown */
    double gen_us;     /* per generated token; 0 unknown */
    unsigned n_pf, n_gen;
    /* Without first-token times: service = pf x prefilled + gen x generated,
     * fitted by recursive least squares with forgetting. */
    double th[2], cov[2][2];
    unsigned n_fit;
    double kappa;      /* backend tokens per estimated token; 1 until measured */
    unsigned n_kappa;
    double gen_mean;   /* tokens generated per request (EWMA) */
    /* Of the prefill a load was expected to need, the share the backend had
     * cached anyway (EWMA over loads): near 1 on a server that restores
     * evicted prefixes itself (llama.cpp's host cache). */
    double restore;
    unsigned n_loads;
    unsigned probe_until; /* n_loads below which the probe's "restores" stands */
    /* Prefill work started recently (expected engine time, decaying with
     * time constant tau_us), for the engine's utilisation. */
    double work_us, tau_us;
    int64_t work_at_us;
} pol_meter;

struct policy {
    const pol_rule *rule;
    pol_meter meter;
    size_t max_queue;
    size_t depth;
    size_t n_deadline;    /* queued items with deadline_us != 0 */
    int64_t deadline_low; /* <= every queued deadline; INT64_MAX when none */
    uint64_t next_seq;
    pol_list lv[POL_LEVELS];
    pol_slot *slots;
    unsigned n_slots;
    uint8_t slot_be[POL_MAX_SLOTS]; /* the backend of each slot */
    uint32_t be_up;                 /* backends that may take requests */
    uint32_t idle_be;               /* of those, ones with an idle slot (policy_next) */
    uint64_t lru_clock;
    policy_tuning tun; /* max_overtakes 0: 4 x slots */
    bool pinned;       /* the slot we choose is the slot it runs in (id_slot) */
    double similarity; /* else: the backend's own slot rule, with this threshold */
    pol_group **htab;
    size_t hmask;
    size_t n_groups;
    pol_group *recent, *recent_tail;
    pol_garr active[POL_LEVELS]; /* heaps of the groups with queued items at that level */
    pol_node *spare;             /* freed nodes for reuse, linked by gnext */
    size_t n_spare;
    int64_t wake_us; /* policy_next_wake; recomputed by each policy_next */
    int64_t now_us;  /* of the current policy_next */
    /* The last prompts dispatched: (block count, last block hash), to see
     * that a new request continues one of them (a conversation). */
    struct {
        uint32_t n;
        uint64_t h;
    } served[POL_SERVED];
    unsigned served_pos;
};

static inline pol_node *pol_node_of(const pol_item *it)
{
    return (pol_node *)it->priv;
}

/* Whether slot s may run it (NULL: some item): its backend is up and, for
 * an item, one that serves it. */
static inline bool pol_slot_ok(const policy *p, unsigned s, const pol_item *it)
{
    uint32_t m = p->be_up;
    if (it != NULL && it->backends != 0)
        m &= it->backends;
    return (m >> p->slot_be[s]) & 1u;
}

/* Whether some backend that may run it has an idle slot (as of the start
 * of this policy_next). O(1), for walks over many items. */
static inline bool pol_item_placeable(const policy *p, const pol_item *it)
{
    return (p->idle_be & (it->backends != 0 ? it->backends : ~0u)) != 0;
}

/* ---- state.c -------------------------------------------------------- */

/* A group's demand at a level: queued items there x prefix blocks (at
 * least 1). The per-level heaps put the highest demand on top, the oldest
 * head on ties (pol_heap_better). */
uint64_t pol_demand(const pol_group *g, int lv);
bool pol_heap_better(const pol_group *a, const pol_group *b, int lv);
void pol_heap_set(pol_garr *a, size_t i, pol_group *g, int lv);
/* Restores heap order around position i after its group's key changed. */
void pol_heap_fix(pol_garr *a, size_t i, int lv);
/* Room for one more group; LMSCHED_OK or LMSCHED_ENOMEM. */
int pol_heap_reserve(pol_garr *a);
/* g must have an item at lv and room reserved. */
void pol_heap_add(pol_garr *a, pol_group *g, int lv);
void pol_heap_del(pol_garr *a, size_t pos, int lv);
/* Cached tokens for a number of held blocks (at most tokens - 1). */
uint32_t pol_block_tokens(uint32_t blocks, const pol_item *it);
/* The least recently used idle slot that may run it (NULL: any item), -1
 * if none. */
int pol_lru_idle(const policy *p, const pol_item *it);
/* The idle slot the backend itself would pick (see policy_backend_choice). */
int pol_backend_choice(const policy *p, const pol_item *it, double similarity);
/* Cached blocks of it's prompt in slot s, per the model. */
uint32_t pol_cached_blocks(const policy *p, unsigned s, const pol_item *it);
/* A group whose prefix is on a slot where one of its requests runs: its
 * queued requests are followers, held until that slot frees. */
static inline bool pol_group_held(const pol_group *g)
{
    return g->pfx_blocks > 0 && g->resident > 0 && g->inflight > 0;
}

static inline bool pol_group_conv(const pol_group *g)
{
    return g->conv_score >= POL_CONV_MIN;
}

/* Slot s is held for a conversation's next turn at now and it is not that
 * turn. */
bool pol_slot_held(const policy *p, unsigned s, const pol_item *it, int64_t now_us);

/* The idle slot to (re)load for it (NULL: any item) when no idle slot
 * holds what is wanted: the one cheapest to bring back (pol_reload_us over
 * horizon_us, how long the new content will keep it), LRU on ties; -1 if
 * no slot it may use is idle. *cost_us (may be NULL) gets its reload
 * cost. */
int pol_evict_slot(const policy *p, const pol_item *it, double horizon_us, double *cost_us);

/* ---- cost.c ---------------------------------------------------------- */

void pol_meter_init(pol_meter *m);
/* Whether enough has been measured to trust the rates below. */
bool pol_rates_known(const policy *p);
/* Engine time to prefill n estimated tokens, and to generate n tokens. */
double pol_prefill_us(const policy *p, double est_tokens);
double pol_gen_us(const policy *p, double tokens);
/* A request starts on slot s (its estimated cached tokens, and of its
 * tokens those a slot held before and none holds now, at least cached):
 * remembered for the estimates and the measurements. */
void pol_cost_start(policy *p, pol_slot *s, const pol_item *it, uint32_t cached,
                    uint32_t seen, int64_t now_us);
/* The request on s ended: learn from it (now_us: the end, or 0 unknown). */
void pol_cost_end(policy *p, pol_slot *s, const pol_done *d);
/* Measures the ends that came without a time, at now_us. */
void pol_cost_stamp(policy *p, int64_t now_us);
/* The share of recent time the engine spent prefilling (0..0.95), from
 * the prefill the policy started (its own estimate). */
double pol_engine_load(const policy *p, int64_t now_us);
/* Expected time until busy slot s is idle. */
double pol_remaining_us(const policy *p, const pol_slot *s, int64_t now_us);
/* A request of g arrived at now_us (before it is queued). */
void pol_group_arrival(const policy *p, pol_group *g, const pol_item *it, int64_t now_us);
/* Whether the backend is seen to restore most of what its slots lost by
 * itself (llama.cpp's host cache): restore measured over at least 3 loads
 * and at least POL_RESTORING. What it still misses there is mostly a
 * prompt that another request's start had not yet moved out of its slot.
 * Rules 2 and 7 stop paying for cache depth there: a conversation's slot
 * is not kept for its next turn (policy.c), and among the hits on a slot
 * the oldest goes first, not the deepest (rule_prefix.c); either only
 * made the queued requests wait for a prefill the backend saves anyway,
 * and overtaking them spread the waits unevenly. */
bool pol_restores(const policy *p);
/* The share of a reload the backend does not restore by itself (1 until
 * three loads were seen). */
double pol_unrestored(const policy *p);
/* Whether g's arrivals come whatever the policy does (its agents do not
 * wait for their answers): only then may the policy wait for them. */
bool pol_group_open(const pol_group *g);
/* Expected arrivals of g per microsecond, from its recent gaps. */
double pol_group_rate(const pol_group *g, int64_t now_us);
/* The expected cost, in engine microseconds, of evicting idle slot s: what
 * of its content no other slot holds, times the chance it is wanted again
 * before it could be reloaded cheaply, times what the backend would not
 * restore by itself. 0 for an empty slot. */
double pol_reload_us(const policy *p, unsigned s, double horizon_us);

#endif /* LMSCHED_POLICY_INT_H */
