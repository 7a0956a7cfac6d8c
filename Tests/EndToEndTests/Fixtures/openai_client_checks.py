"""Everyday calls of the real openai client (3.57, PyPI) against a Tandem server: prints one JSON line of results.

Usage: python openai_client_checks.py BASE_URL MODE, MODE `colocated` or `proxy` (a disaggregated deployment):
the same checks in both.
"""

import json
import re
import sys

import openai

base, mode = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
results = {}


def check(name, ok, detail=""):
    results[name] = {"ok": bool(ok), "detail": str(detail)[:300]}


models = client.models.list()
check("models", any(m.id == "default" for m in models.data), [m.id for m in models.data])

c = client.completions.create(model="default", prompt="The capital of France is", max_tokens=8, temperature=0)
check("completion", c.choices[0].text.strip() != "" and c.usage.completion_tokens == 8, c.choices[0].text)

chat = client.chat.completions.create(
    model="default",
    messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    max_tokens=32,
    temperature=0,
)
check("chat", "Paris" in (chat.choices[0].message.content or ""), chat.choices[0].message.content)

pieces = []
for chunk in client.chat.completions.create(
    model="default", messages=[{"role": "user", "content": "Name three primary colors."}], max_tokens=24,
    temperature=0, stream=True, stream_options={"include_usage": True},
):
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    usage = chunk.usage or None
check("chat_stream", "".join(pieces).strip() != "" and usage is not None, "".join(pieces))

forced = client.completions.create(
    model="default", prompt="Hello", max_tokens=3, temperature=0.9, seed=1, logit_bias={"1234": 100}
)
check("logit_bias", forced.usage.completion_tokens == 3, forced.choices[0].text)

three = client.completions.create(
    model="default", prompt="Once upon a time", max_tokens=8, temperature=0.9, seed=5, n=3
)
again = client.completions.create(
    model="default", prompt="Once upon a time", max_tokens=8, temperature=0.9, seed=5, n=3
)
single = client.completions.create(model="default", prompt="Once upon a time", max_tokens=1, temperature=0)
texts = [ch.text for ch in sorted(three.choices, key=lambda ch: ch.index)]
check(
    "n3",
    sorted(ch.index for ch in three.choices) == [0, 1, 2]
    and texts == [ch.text for ch in sorted(again.choices, key=lambda ch: ch.index)]
    and three.usage.prompt_tokens == single.usage.prompt_tokens,
    (texts, three.usage),
)

indexes = set()
for chunk in client.completions.create(
    model="default", prompt="Once upon a time", max_tokens=6, temperature=0.9, seed=5, n=2, stream=True
):
    indexes.update(ch.index for ch in chunk.choices)
check("n2_stream", indexes == {0, 1}, sorted(indexes))

echo = client.completions.create(
    model="default", prompt="The capital of France is", max_tokens=4, temperature=0, echo=True
)
check("echo", echo.choices[0].text.startswith("The capital of France is"), echo.choices[0].text)

echoed = client.completions.create(
    model="default", prompt="The capital of France is", max_tokens=2, temperature=0, echo=True, logprobs=1
).choices[0]
lp = echoed.logprobs
check(
    "echo_logprobs",
    echoed.text.startswith("The capital of France is") and lp.token_logprobs[0] is None
    and all(v is not None for v in lp.token_logprobs[1:]) and len(lp.tokens) == len(lp.token_logprobs) > 2
    and "".join(lp.tokens) == echoed.text,
    lp,
)

prompts = ["The capital of France is", "def add(a, b):"]
batch = client.completions.create(model="default", prompt=prompts, max_tokens=6, temperature=0)
alone = [
    client.completions.create(model="default", prompt=p, max_tokens=6, temperature=0).choices[0].text
    for p in prompts
]
ordered = [ch.text for ch in sorted(batch.choices, key=lambda ch: ch.index)]
check("prompt_list", ordered == alone, {"batch": ordered, "alone": alone})

def valid(value, schema):
    """The JSON Schema subset the schemas below use: type, properties, required, enum, bounds, items, lengths."""
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict) or not set(schema.get("required", [])) <= value.keys():
            return False
        if not set(value) <= set(schema.get("properties", {})):
            return False
        return all(valid(value[k], schema["properties"][k]) for k in value)
    if kind == "array":
        return (isinstance(value, list) and schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 10**9)
                and all(valid(v, schema["items"]) for v in value))
    if kind == "string":
        return isinstance(value, str) and len(value) <= schema.get("maxLength", 10**9)
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)
                and schema.get("minimum", -10**18) <= value <= schema.get("maximum", 10**18))
    if kind == "number":
        return isinstance(value, (int, float)) and schema.get("minimum", -1e18) <= value <= schema.get("maximum", 1e18)
    if kind == "boolean":
        return isinstance(value, bool)
    return False


SCHEMAS = {
    "person": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "maxLength": 40}}, "required": ["name", "age"]},
    "order": {"type": "object", "properties": {
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "sku": {"type": "string", "maxLength": 12}, "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
            "required": ["sku", "qty"]}, "minItems": 1, "maxItems": 3},
        "express": {"type": "boolean"}}, "required": ["items", "express"]},
    "weather": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20}, "celsius": {"type": "number", "minimum": -60, "maximum": 60},
        "sky": {"enum": ["clear", "cloudy", "rain", "snow"]}}, "required": ["city", "celsius", "sky"]},
}
bad = []
for name, schema in SCHEMAS.items():
    for seed in range(3):
        r = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": f"Give me a {name} as JSON."}], max_tokens=200,
            temperature=0.9, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}},
        )
        text = r.choices[0].message.content
        try:
            ok = valid(json.loads(text), schema) and r.choices[0].finish_reason == "stop"
        except ValueError:
            ok = False
        if not ok:
            bad.append({name: text})
check("json_schema", not bad, bad)

bad = []
for seed in range(3):
    r = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Describe a cat as JSON."}], max_tokens=200,
        temperature=0.9, seed=seed, response_format={"type": "json_object"},
    )
    try:
        ok = isinstance(json.loads(r.choices[0].message.content), dict)
    except ValueError:
        ok = False
    if not ok:
        bad.append(r.choices[0].message.content)
check("json_object", not bad, bad)

bad = []
for seed in range(3):
    r = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Is the sea wet?"}], max_tokens=10, temperature=0.9,
        seed=seed, extra_body={"guided_choice": ["yes", "no", "maybe"]},
    )
    if r.choices[0].message.content not in ("yes", "no", "maybe"):
        bad.append(r.choices[0].message.content)
    r = client.completions.create(
        model="default", prompt="My phone number is", max_tokens=20, temperature=0.9, seed=seed,
        extra_body={"guided_regex": r"\(\d{3}\) \d{3}-\d{4}"},
    )
    if not re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", r.choices[0].text):
        bad.append(r.choices[0].text)
check("guided_choice_regex", not bad, bad)

try:
    client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "x"}], max_tokens=4,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "format": "ipv9"}}},
    )
    check("schema_refused", False, "accepted")
except openai.BadRequestError as error:
    check("schema_refused", error.status_code == 400 and "format" in error.message, error.message)

try:
    client.completions.create(model="default", prompt="x", max_tokens=4, best_of=2)
    check("best_of_refused", False, "best_of=2 was accepted")
except openai.BadRequestError as error:
    check("best_of_refused", "best_of" in str(error.body), error.body)

try:
    client.completions.create(model="nope", prompt="x", max_tokens=4)
    check("unknown_model", False, "accepted")
except openai.NotFoundError as error:
    check("unknown_model", error.status_code == 404, error.body)

weather = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
clock = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a time zone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
    },
}
schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (weather, clock)}
ask = [{"role": "user", "content": "What is the weather in Paris?"}]


def valid_call(call, names):
    try:
        return call.id and call.function.name in names and valid(
            json.loads(call.function.arguments), schemas[call.function.name])
    except (ValueError, KeyError):
        return False


bad = []
for seed in range(4):
    r = client.chat.completions.create(
        model="default", messages=ask, tools=[weather, clock], tool_choice="required", parallel_tool_calls=False,
        temperature=0.9, seed=seed, max_tokens=120,
    )
    ch = r.choices[0]
    calls = ch.message.tool_calls or []
    if ch.finish_reason != "tool_calls" or len(calls) != 1 or not valid_call(calls[0], schemas):
        bad.append((ch.finish_reason, ch.message.content, [c.function for c in calls]))
check("tool_required", not bad, bad)

r = client.chat.completions.create(
    model="default", messages=ask, tools=[weather, clock], temperature=0, max_tokens=120,
    tool_choice={"type": "function", "function": {"name": "get_time"}},
)
calls = r.choices[0].message.tool_calls or []
check("tool_named", len(calls) == 1 and valid_call(calls[0], ["get_time"]), r.choices[0].message)

parts = {}
finish = None
for chunk in client.chat.completions.create(
    model="default", messages=ask, tools=[weather], tool_choice="required", parallel_tool_calls=False,
    temperature=0, max_tokens=120, stream=True,
):
    for ch in chunk.choices:
        for tc in ch.delta.tool_calls or []:
            entry = parts.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = entry["id"] or tc.id
            entry["name"] += tc.function.name or ""
            entry["arguments"] += tc.function.arguments or ""
        finish = ch.finish_reason or finish
streamed = list(parts.values())
check(
    "tool_stream",
    finish == "tool_calls" and len(streamed) == 1 and streamed[0]["name"] == "get_weather"
    and valid(json.loads(streamed[0]["arguments"]), schemas["get_weather"]),
    (finish, streamed),
)

answered = client.chat.completions.create(
    model="default", max_tokens=24, temperature=0, tools=[weather],
    messages=ask + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"temperature": 21, "sky": "sunny"})},
    ],
)
check("tool_result", answered.choices[0].finish_reason in ("stop", "length", "tool_calls"), answered.choices[0])

try:
    client.chat.completions.create(
        model="default", messages=ask, tools=[weather], max_tokens=4,
        tool_choice={"type": "function", "function": {"name": "nope"}},
    )
    check("tool_refused", False, "accepted")
except openai.BadRequestError as error:
    check("tool_refused", error.status_code == 400 and "nope" in error.message, error.message)

print(json.dumps(results))
