// bench_rounds - lmbench's `rounds` workload (or `roles`) run through
// lmsched's HTTP front door with the official `openai` client, for
// scripts/bench's `rounds-http` (docs/benchmarks.md, "Through the HTTP front
// door"):
//
//   node bench_rounds.mjs WORKLOAD_JSON LMSCHED_BASE_URL LMSIM_URL
//
// WORKLOAD_JSON is what `lmworkload` prints: the same requests lmbench sends
// for the same seed, and their clairvoyant optimum. Each agent has its own
// client; `rounds` sends each round's requests at once and waits for all of
// them before the next round (lmbench's barrier); `roles` is a closed loop
// per agent. lmsim is reset first; its /sim/stats afterwards give the tokens
// it prefilled. Prints one JSON line.
import { readFileSync } from 'node:fs';
import OpenAI from 'openai';

const [file, baseURL, simURL] = process.argv.slice(2);
if (!file || !baseURL || !simURL) {
    console.error('usage: node bench_rounds.mjs WORKLOAD_JSON LMSCHED_BASE_URL LMSIM_URL');
    process.exit(2);
}
const w = JSON.parse(readFileSync(file, 'utf8'));
const agents = Array.from({ length: w.nagents }, () =>
    new OpenAI({ baseURL, apiKey: process.env.LMSCHED_HTTP_TOKEN ?? 'none', maxRetries: 0, timeout: 900000 }));
const byAgent = Array.from({ length: w.nagents }, () => []);
for (const q of w.requests) byAgent[q.agent][q.seq] = q;

let errors = 0;
const samples = [];
async function send(q) {
    const t0 = performance.now();
    try {
        const r = await agents[q.agent].chat.completions.create(
            {
                model: 'lmsim',
                messages: [
                    { role: 'system', content: w.systems[q.system] },
                    { role: 'user', content: q.user },
                ],
                max_tokens: w.max_tokens,
            },
            { headers: { 'X-Lmsched-Agent': `${w.workload}-${q.agent + 1}` } },
        );
        if (!r.choices[0]?.message?.content) errors++;
        samples.push(performance.now() - t0);
    } catch (e) {
        errors++;
        console.error(`bench_rounds: agent ${q.agent + 1} request ${q.seq + 1}: ${e.message}`);
    }
}

async function json(url, method = 'GET') {
    const r = await fetch(url, { method });
    if (!r.ok) throw new Error(`${method} ${url}: HTTP ${r.status}`);
    return r.json();
}

await json(`${simURL}/sim/reset`, 'POST');
const t0 = performance.now();
if (w.workload === 'rounds') {
    for (let j = 0; j < w.per_agent; j++)
        await Promise.all(byAgent.map((reqs) => send(reqs[j])));
} else {
    await Promise.all(byAgent.map(async (reqs) => {
        for (const q of reqs) await send(q);
    }));
}
const makespan = performance.now() - t0;
const st = await json(`${simURL}/sim/stats`);
samples.sort((a, b) => a - b);
const out = {
    workload: w.workload,
    path: 'http',
    client: 'openai-js',
    seed: w.seed,
    scale: w.scale,
    requests: w.requests.length,
    errors,
    prefill_tokens: st.prefill_tokens,
    prompt_tokens: st.prompt_tokens,
    cached_tokens: st.cached_tokens,
    optimal_prefill_tokens: w.optimal_prefill_tokens,
    prefill_over_optimal: w.optimal_prefill_tokens > 0
        ? Math.round((st.prefill_tokens / w.optimal_prefill_tokens) * 1000) / 1000 : null,
    makespan_ms: Math.round(makespan),
    total_p50_ms: samples.length ? Math.round(samples[Math.ceil(samples.length / 2) - 1]) : null,
};
console.log(JSON.stringify(out));
process.exit(errors > 0 ? 1 : 0);
