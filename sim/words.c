/*
 * words - the words lmsim answers with (see words.h).
 */
#include "sim/words.h"

/* Three letters and a space: every reply token is exactly 4 bytes, so the
 * reply's tokens line up with the tokenizer rule when it is sent back. */
static const char *const simeng_words[64] = {
    "the ", "cat ", "sat ", "oak ", "mat ", "and ", "dog ", "ran ", "far ", "sun ",
    "sky ", "red ", "big ", "old ", "new ", "map ", "key ", "box ", "cup ", "tea ",
    "pen ", "ink ", "car ", "bus ", "way ", "day ", "one ", "two ", "six ", "ten ",
    "top ", "end ", "log ", "bit ", "net ", "web ", "app ", "api ", "job ", "run ",
    "set ", "get ", "put ", "add ", "sum ", "max ", "min ", "low ", "row ", "col ",
    "tab ", "arg ", "var ", "let ", "for ", "use ", "can ", "may ", "now ", "yet ",
    "all ", "any ", "few ", "out ",
};

uint64_t sim_mix64(uint64_t x)
{
    /* splitmix64 finalizer */
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

const char *simeng_word(uint64_t word_seed, unsigned i)
{
    uint64_t h = sim_mix64(word_seed ^ ((uint64_t)i * 0x9e3779b97f4a7c15ULL));
    return simeng_words[h % 64];
}
