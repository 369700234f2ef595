// openai_client - the official `openai` JavaScript client against lmsched's
// HTTP front door (tests/http/node_test.c starts lmsim and the daemon and runs
// one scenario per daemon):
//
//   node openai_client.mjs BASE_URL SCENARIO [API_KEY]
//
//   basic     a plain completion (usage with cached tokens), a stream with
//             include_usage, a tool round trip, json_schema output, a second
//             turn reusing the prompt cache, and n=2 refused with a 400
//   abort     a stream aborted after its first piece (the daemon must count a
//             cancel and free the slot; node_test.c checks that)
//   retry429  8 requests at once against a queue of 1: the client itself
//             retries the 429s (Retry-After) until every one succeeds
//   auth      a wrong key gets 401 (AuthenticationError), API_KEY works
//   real      against a real llama-server: whole and streamed, the second time
//             with cached tokens reported (API_KEY is a tag for the prompt)
//
// Prints one JSON line of what it saw; exits 1 with the reason when an
// expectation fails. The checks are the client's view: what an agent using
// this client would get.
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const [baseURL, scenario, apiKey = 'none'] = process.argv.slice(2);
if (!baseURL || !scenario) {
    console.error('usage: node openai_client.mjs BASE_URL SCENARIO [API_KEY]');
    process.exit(2);
}
const SYSTEM = 'You are the assistant of the openai client test. Answer briefly. '.repeat(8);
const model = 'lmsim';

function client(opts = {}) {
    return new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000, ...opts });
}

const weatherTool = {
    type: 'function',
    function: {
        name: 'get_weather',
        description: 'The weather in a city.',
        parameters: {
            type: 'object',
            properties: { city: { type: 'string' }, days: { type: 'integer', minimum: 1 } },
            required: ['city'],
        },
    },
};

async function basic() {
    const c = client();
    const out = {};

    // A plain completion, then the same prompt again: the server's prompt
    // cache serves it, and usage says so.
    const msgs = [
        { role: 'system', content: SYSTEM },
        { role: 'user', content: 'Say something about caches.' },
    ];
    const r1 = await c.chat.completions.create({ model, messages: msgs, max_tokens: 8, seed: 1 });
    assert.equal(r1.object, 'chat.completion');
    assert.equal(r1.choices.length, 1);
    assert.equal(r1.choices[0].message.role, 'assistant');
    assert.ok(r1.choices[0].message.content.length > 0, 'content');
    assert.equal(r1.usage.completion_tokens, 8);
    assert.equal(typeof r1.usage.prompt_tokens_details.cached_tokens, 'number');
    const r2 = await c.chat.completions.create({ model, messages: msgs, max_tokens: 8, seed: 1 });
    assert.ok(r2.usage.prompt_tokens_details.cached_tokens > 0, 'the second time is cached');
    assert.equal(r2.choices[0].message.content, r1.choices[0].message.content);
    out.plain = { content: r1.choices[0].message.content, cached: r2.usage.prompt_tokens_details.cached_tokens };

    // Streaming with usage: the pieces make the same answer; the usage
    // chunk comes last, with no choices.
    const stream = await c.chat.completions.create({
        model, messages: msgs, max_tokens: 8, seed: 1, stream: true,
        stream_options: { include_usage: true },
    });
    let text = '', chunks = 0, usage = null, finish = null, afterUsage = 0;
    for await (const ch of stream) {
        chunks++;
        assert.equal(ch.object, 'chat.completion.chunk');
        if (usage) afterUsage++;
        if (ch.usage) {
            usage = ch.usage;
            assert.equal(ch.choices.length, 0);
        }
        for (const choice of ch.choices) {
            if (choice.delta.content) text += choice.delta.content;
            if (choice.finish_reason) finish = choice.finish_reason;
        }
    }
    assert.equal(text, r1.choices[0].message.content);
    assert.equal(finish, 'length');
    assert.ok(usage && usage.completion_tokens === 8, 'usage chunk');
    assert.ok(usage.prompt_tokens_details.cached_tokens > 0, 'streamed usage has cached tokens');
    assert.equal(afterUsage, 0, 'usage is the last chunk');
    out.stream = { chunks, text };

    // A tool round trip: the model calls get_weather, the tool answers, the
    // model answers with it. Streamed once to see the tool-call deltas.
    const tmsgs = [
        { role: 'system', content: SYSTEM },
        { role: 'user', content: 'Please call get_weather for Paris.' },
    ];
    const t1 = await c.chat.completions.create({ model, messages: tmsgs, tools: [weatherTool] });
    const call = t1.choices[0].message.tool_calls?.[0];
    assert.equal(t1.choices[0].finish_reason, 'tool_calls');
    assert.equal(t1.choices[0].message.content, null);
    assert.equal(call.type, 'function');
    assert.equal(call.function.name, 'get_weather');
    const args = JSON.parse(call.function.arguments);
    assert.equal(typeof args.city, 'string');
    const ts = await c.chat.completions.create({
        model, messages: tmsgs, tools: [weatherTool], stream: true,
    });
    let sArgs = '', sId = null, sName = null;
    for await (const ch of ts) {
        for (const tc of ch.choices[0]?.delta?.tool_calls ?? []) {
            assert.equal(tc.index, 0);
            if (tc.id) sId = tc.id;
            if (tc.function?.name) sName = tc.function.name;
            sArgs += tc.function?.arguments ?? '';
        }
    }
    assert.equal(sId, call.id);
    assert.equal(sName, 'get_weather');
    assert.equal(sArgs, call.function.arguments);
    const t2 = await c.chat.completions.create({
        model,
        tools: [weatherTool],
        messages: [
            ...tmsgs,
            t1.choices[0].message,
            { role: 'tool', tool_call_id: call.id, content: 'Sunny, 21 C' },
        ],
    });
    assert.ok(t2.choices[0].message.content.startsWith('Tool result: Sunny, 21 C'),
        t2.choices[0].message.content);
    out.tools = { call: call.function.arguments, answer: t2.choices[0].message.content };

    // Structured output: the content parses and follows the schema.
    const schema = {
        type: 'object',
        properties: {
            name: { type: 'string' },
            age: { type: 'integer', minimum: 18 },
            role: { enum: ['admin', 'user'] },
        },
        required: ['name', 'age', 'role'],
        additionalProperties: false,
    };
    const j = await c.chat.completions.create({
        model,
        messages: [{ role: 'system', content: SYSTEM }, { role: 'user', content: 'A person.' }],
        response_format: { type: 'json_schema', json_schema: { name: 'person', schema, strict: true } },
    });
    const person = JSON.parse(j.choices[0].message.content);
    assert.equal(typeof person.name, 'string');
    assert.ok(Number.isInteger(person.age) && person.age >= 18);
    assert.ok(['admin', 'user'].includes(person.role));
    out.json = person;

    // n > 1 is refused with a 400 naming the parameter.
    await assert.rejects(
        c.chat.completions.create({ model, messages: msgs, n: 2 }),
        (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === 'n',
    );
    return out;
}

async function abort() {
    const c = client();
    const ac = new AbortController();
    const stream = await c.chat.completions.create(
        {
            model,
            messages: [{ role: 'system', content: SYSTEM }, { role: 'user', content: 'Talk for long.' }],
            max_tokens: 4000,
            stream: true,
        },
        { signal: ac.signal },
    );
    // The client ends the iteration quietly once its signal aborts. It may
    // still hand out the chunks it had already read off the socket (on a
    // slow machine several arrive in one read), never more than that.
    let pieces = 0, after = 0;
    try {
        for await (const ch of stream) {
            if (ac.signal.aborted) {
                after++;
                continue;
            }
            if (ch.choices[0]?.delta?.content) pieces++;
            if (pieces === 2) ac.abort();
        }
    } catch (e) {
        assert.ok(e.name === 'AbortError' || e instanceof OpenAI.APIUserAbortError, String(e));
    }
    assert.ok(ac.signal.aborted);
    assert.equal(pieces, 2);
    assert.ok(after < 50, `${after} chunks after the abort`);
    return { pieces, after };
}

async function retry429() {
    // The daemon has a queue of 1 and one slot: most of these get 429 at
    // first; the client retries each after Retry-After until it is in.
    const c = client({ maxRetries: 50 });
    const t0 = Date.now();
    const all = await Promise.all(Array.from({ length: 8 }, (_, i) =>
        c.chat.completions.create({
            model,
            messages: [{ role: 'system', content: SYSTEM }, { role: 'user', content: `Question ${i}` }],
            max_tokens: 4,
        }).withResponse()));
    for (const { data } of all) assert.equal(data.usage.completion_tokens, 4);
    return { ok: all.length, ms: Date.now() - t0 };
}

async function auth() {
    const bad = new OpenAI({ baseURL, apiKey: 'not-the-token', maxRetries: 0 });
    await assert.rejects(
        bad.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }] }),
        (e) => e instanceof OpenAI.AuthenticationError && e.status === 401,
    );
    await assert.rejects(bad.models.list(), (e) => e.status === 401);
    const good = client();
    const r = await good.chat.completions.create({
        model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 3,
    });
    assert.equal(r.usage.completion_tokens, 3);
    const models = await good.models.list();
    assert.ok(models.data.length === 1 && typeof models.data[0].id === 'string');
    return { models: models.data.map((m) => m.id) };
}

async function real() {
    // Against a real llama-server (tests/real/http_real_test.c): the third
    // argument makes the system prompt one no earlier run cached.
    const c = client({ timeout: 120000 });
    const system = `Run ${apiKey}. You are a careful assistant. The software license grants ` +
        'permission to use, copy, modify and distribute the program under the terms of the ' +
        'license, provided the notice is kept in every copy and the program is not sold. '.repeat(4);
    const messages = [{ role: 'system', content: system }, { role: 'user', content: 'Say hello.' }];
    const r1 = await c.chat.completions.create({ model: 'tiny', messages, max_tokens: 8, seed: 1, temperature: 0 });
    assert.equal(r1.object, 'chat.completion');
    assert.ok(r1.usage.prompt_tokens > 0);
    assert.equal(typeof r1.choices[0].message.content, 'string');
    const r2 = await c.chat.completions.create({ model: 'tiny', messages, max_tokens: 8, seed: 1, temperature: 0 });
    const cached = r2.usage.prompt_tokens_details.cached_tokens;
    assert.ok(cached > 0, `the second time nothing was cached: ${JSON.stringify(r2.usage)}`);
    const stream = await c.chat.completions.create({
        model: 'tiny', messages, max_tokens: 8, seed: 1, temperature: 0, stream: true,
        stream_options: { include_usage: true },
    });
    let text = '', usage = null, chunks = 0;
    for await (const ch of stream) {
        chunks++;
        if (ch.usage) usage = ch.usage;
        text += ch.choices[0]?.delta?.content ?? '';
    }
    assert.ok(usage && usage.prompt_tokens_details.cached_tokens > 0, 'streamed: cached');
    assert.ok(usage.completion_tokens > 0 && chunks > 2, 'streamed in pieces');
    return {
        prompt: r1.usage.prompt_tokens, cached1: r1.usage.prompt_tokens_details.cached_tokens,
        cached2: cached, streamCached: usage.prompt_tokens_details.cached_tokens, chunks, text,
    };
}

const scenarios = { basic, abort, retry429, auth, real };
if (!scenarios[scenario]) {
    console.error(`unknown scenario ${scenario}`);
    process.exit(2);
}
try {
    const out = await scenarios[scenario]();
    console.log(JSON.stringify({ scenario, ok: true, ...out }));
} catch (e) {
    console.error(`openai_client ${scenario}: FAILED: ${e.stack || e}`);
    process.exit(1);
}
