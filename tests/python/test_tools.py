"""Tools, structured output, extra body fields and structured messages
through the package, against a real daemon and lmsim: tool calls in the
result and back into the conversation, JSON answers, logprobs, content
parts, and the library's reasons for a malformed option."""

from __future__ import annotations

import json

import pytest

import lmsched

SYSTEM = "You are an assistant with tools."

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time in a city",
            "parameters": {"type": "object", "properties": {"tz": {"type": "string"}},
                           "required": ["tz"]},
        },
    },
]


def test_tool_call_round_trip(world):
    world.start()
    c = world.client()
    q = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = c.chat(SYSTEM, q, tools=TOOLS, tool_choice="required")
    assert r.finish_reason == "tool_calls"
    assert len(r.tool_calls) >= 1
    tc = r.tool_calls[0]
    assert tc.id.startswith("call_") and tc.type == "function"
    assert tc.name in ("get_weather", "get_time")
    args = json.loads(tc.arguments)
    assert set(args) == ({"city"} if tc.name == "get_weather" else {"tz"})
    msg = r.message()
    assert msg["tool_calls"][0] == {"id": tc.id, "type": "function",
                                    "function": {"name": tc.name, "arguments": tc.arguments}}
    # The call and its result go back in the OpenAI shape.
    conv = q + [msg] + [{"role": "tool", "tool_call_id": t.id, "name": t.name,
                         "content": "sunny, 21 C"} for t in r.tool_calls]
    r2 = c.chat(SYSTEM, conv, tools=TOOLS)
    assert r2.finish_reason in ("stop", "length")
    assert r2.tool_calls == []
    assert "sunny, 21 C" in r2.content  # lmsim quotes the tool's result
    # An assistant message holding ToolCall objects is sent the same way.
    conv2 = q + [{"role": "assistant", "content": None, "tool_calls": r.tool_calls}] + conv[2:]
    assert c.chat(SYSTEM, conv2, tools=TOOLS).content == r2.content


def test_tool_choice_forms(world):
    world.start()
    c = world.client()
    q = "Time in Tokyo?"
    named = c.chat(SYSTEM, q, tools=TOOLS, tool_choice="get_time")
    assert [t.name for t in named.tool_calls] == ["get_time"]
    as_dict = c.chat(SYSTEM, q, tools=TOOLS,
                     tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [t.name for t in as_dict.tool_calls] == ["get_time"]
    none = c.chat(SYSTEM, q, tools=TOOLS, tool_choice="none", max_tokens=4)
    assert none.tool_calls == [] and none.usage.completion_tokens == 4
    single = c.chat(SYSTEM, q, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    assert len(single.tool_calls) == 1


def test_structured_output(world):
    world.start()
    c = world.client()
    r = c.chat(SYSTEM, "Answer in JSON.", response_format={"type": "json_object"})
    assert isinstance(json.loads(r.content), dict)
    schema = {
        "type": "json_schema",
        "json_schema": {
            "name": "person",
            "strict": True,
            "schema": {"type": "object",
                       "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                       "required": ["name", "age"]},
        },
    }
    doc = json.loads(c.chat(SYSTEM, "Describe a person.", response_format=schema).content)
    assert set(doc) == {"name", "age"}
    assert isinstance(doc["name"], str) and isinstance(doc["age"], int)


def test_extra_body_fields_and_logprobs(world):
    world.start()
    c = world.client()
    r = c.chat(SYSTEM, "Two words.", max_tokens=3,
               extra={"logprobs": True, "top_k": 40, "min_p": 0.05})
    assert isinstance(r.logprobs, list) and len(r.logprobs) == 3
    assert "".join(lp["token"] for lp in r.logprobs) == r.content
    assert c.chat(SYSTEM, "x", max_tokens=2).logprobs is None


def test_content_parts(world):
    world.start()
    c = world.client()
    parts = [{"type": "text", "text": "Look at "},
             {"type": "text", "text": "this picture."}]
    r = c.chat(SYSTEM, [{"role": "user", "content": parts}], max_tokens=2)
    # lmsim renders text parts concatenated: the same prompt as the string.
    plain = c.chat(SYSTEM, "Look at this picture.", max_tokens=2)
    assert r.usage.prompt_tokens == plain.usage.prompt_tokens


def test_malformed_options_name_the_field(world):
    world.start()
    c = world.client()
    cases = [
        (dict(tools=[{"type": "function"}]), "tools[0].function"),
        (dict(tools={"not": "a list"}), "tools"),
        (dict(tool_choice=5), "tool_choice"),
        (dict(response_format="json"), "response_format"),
        (dict(extra={"stream": True}), "extra.stream"),
        (dict(extra={"max_tokens": 3}), "extra.max_tokens"),
        (dict(extra={"x": float("nan")}), "extra"),
        (dict(parallel_tool_calls="yes"), "parallel_tool_calls"),
    ]
    for opts, field in cases:
        with pytest.raises(lmsched.InvalidRequest) as ei:
            c.chat(SYSTEM, "x", **opts)
        assert ei.value.field == field, (opts, ei.value)
    with pytest.raises(lmsched.InvalidRequest) as ei:
        c.chat(SYSTEM, [{"role": "user", "content": "x", "bogus": 1}])
    assert ei.value.field.startswith("messages[0]")
    assert world.status()["requests"]["received"] == 0
