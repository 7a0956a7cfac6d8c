"""Everyday calls of the real openai client (3.57, PyPI) against a Tandem server: prints one JSON line of results.

Usage: python openai_client_checks.py BASE_URL MODE, MODE `colocated` (every check) or `proxy` (what a
disaggregated deployment serves: several choices and echo are refused there for now, and that is checked too).
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

if mode == "colocated":
    three = client.completions.create(
        model="default", prompt="Once upon a time", max_tokens=8, temperature=0.9, seed=5, n=3
    )
    check("n3", sorted(ch.index for ch in three.choices) == [0, 1, 2], [ch.text for ch in three.choices])

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

    prompts = ["The capital of France is", "def add(a, b):"]
    batch = client.completions.create(model="default", prompt=prompts, max_tokens=6, temperature=0)
    alone = [
        client.completions.create(model="default", prompt=p, max_tokens=6, temperature=0).choices[0].text
        for p in prompts
    ]
    ordered = [ch.text for ch in sorted(batch.choices, key=lambda ch: ch.index)]
    check("prompt_list", ordered == alone, {"batch": ordered, "alone": alone})
else:
    try:
        client.completions.create(model="default", prompt="x", max_tokens=4, n=2)
        check("n_refused", False, "n=2 was accepted")
    except openai.BadRequestError as error:
        check("n_refused", error.status_code == 400, error.message)

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

print(json.dumps(results))
