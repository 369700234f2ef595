// agents - a real multi-agent program on OpenAI's Agents SDK for JavaScript
// (@openai/agents), pointed at lmsched's HTTP front door with the
// chat-completions API: a triage agent hands each question off to one of
// three role agents, each with a long fixed system prompt. RUNS questions
// run at once.
//
//   node agents.mjs BASE_URL [RUNS]
//
// lmsim calls a tool whose name the user message contains, so question i
// names the handoff to role i % 3 ("transfer_to_researcher", ...); the role
// agent then answers from the handoff's tool result. Prints one JSON line:
// per run its last agent and final output. Exits 1 when a run fails or ends
// with the wrong agent. tests/http/node_test.c then checks in `lmsched
// status` that the role prompts formed groups served from the prompt cache.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import {
    Agent,
    run,
    setDefaultOpenAIClient,
    setOpenAIAPI,
    setTracingDisabled,
} from '@openai/agents';

const [baseURL, runsArg = '12'] = process.argv.slice(2);
if (!baseURL) {
    console.error('usage: node agents.mjs BASE_URL [RUNS]');
    process.exit(2);
}
const RUNS = Number(runsArg);

// Pointing an existing agent program at lmsched is its base URL, nothing
// else. Tracing would upload to OpenAI: off.
setDefaultOpenAIClient(new OpenAI({ baseURL, apiKey: process.env.LMSCHED_HTTP_TOKEN ?? 'none' }));
setOpenAIAPI('chat_completions');
setTracingDisabled(true);

// A long fixed system prompt per role: the prefix lmsched keeps cached.
function rolePrompt(role, duty) {
    const rules = [];
    for (let i = 1; i <= 40; i++)
        rules.push(`Rule ${i} of the ${role}: ${duty} Keep the answer short, cite what you used, and never invent facts.`);
    return `You are the ${role} of a small research team.\n${rules.join('\n')}`;
}

const model = 'lmsim';
const roles = {
    researcher: new Agent({
        name: 'researcher',
        model,
        instructions: rolePrompt('researcher', 'find the facts the question needs.'),
        modelSettings: { maxTokens: 12 },
    }),
    critic: new Agent({
        name: 'critic',
        model,
        instructions: rolePrompt('critic', 'find what is wrong or missing in the claim.'),
        modelSettings: { maxTokens: 12 },
    }),
    writer: new Agent({
        name: 'writer',
        model,
        instructions: rolePrompt('writer', 'turn the notes into a clear paragraph.'),
        modelSettings: { maxTokens: 12 },
    }),
};
const triage = Agent.create({
    name: 'triage',
    model,
    instructions: 'You are the triage agent. Hand each question to the one role agent that fits it.',
    handoffs: Object.values(roles),
});

const names = Object.keys(roles);
const t0 = Date.now();
try {
    const results = await Promise.all(Array.from({ length: RUNS }, async (_, i) => {
        const role = names[i % names.length];
        const r = await run(triage, `Question ${i}: please transfer_to_${role} with this.`);
        assert.equal(r.lastAgent?.name, role, `run ${i} ended with ${r.lastAgent?.name}`);
        assert.equal(typeof r.finalOutput, 'string');
        assert.ok(r.finalOutput.length > 0, `run ${i}: empty output`);
        return { run: i, agent: r.lastAgent.name, output: r.finalOutput };
    }));
    console.log(JSON.stringify({ ok: true, runs: results.length, ms: Date.now() - t0, results }));
} catch (e) {
    console.error(`agents: FAILED: ${e.stack || e}`);
    process.exit(1);
}
