"""Decode speed with a JSON schema against without, at batch 1 and 8, on one running instance (tandem serve).

Usage: python3 scripts/bench-structured.py BASE_URL. Sampled at temperature 0.9 with ignore_eos, 128 tokens a request;
the first round warms the schema's token masks. "cold" rounds use a schema never sent before (a new member name each
round), so every mask is computed during the round."""
import json, urllib.request, time, threading, sys, uuid
URL=(sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8000") + "/v1/chat/completions"
def post(body):
    req = urllib.request.Request(URL, data=json.dumps(body).encode(), headers={"Content-Type":"application/json"})
    with urllib.request.urlopen(req) as r: return json.load(r)
schema={"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},"hobbies":{"type":"array","items":{"type":"string"}},"bio":{"type":"string"}},"required":["name","age","hobbies","bio"]}
def body(seed, constrained, fresh=None):
    b={"messages":[{"role":"user","content":"Write a long JSON profile of a person, with a long bio."}],"max_tokens":128,"temperature":0.9,"seed":seed,"ignore_eos":True}
    if constrained:
        sch = schema
        if fresh:
            sch = json.loads(json.dumps(schema))
            sch["properties"][fresh] = {"type": "string"}
            sch["required"].append(fresh)
        b["response_format"]={"type":"json_schema","json_schema":{"name":"p","schema":sch}}
    return b
def run(batch, constrained, rounds=3, cold=False):
    toks=0; t=time.time()
    for r in range(rounds):
        out=[None]*batch
        fresh = "note_" + uuid.uuid4().hex[:8] if cold else None
        def one(k): out[k]=post(body(100*r+k, constrained, fresh))["usage"]["completion_tokens"]
        ts=[threading.Thread(target=one,args=(k,)) for k in range(batch)]
        [x.start() for x in ts]; [x.join() for x in ts]
        toks+=sum(out)
    return toks/(time.time()-t)
run(8, True, 2)  # warm the grammar's masks
for batch in (1,8):
    for k in range(2):
        u=run(batch, False); c=run(batch, True)
        print(f"batch {batch}: unconstrained {u:.1f} tok/s, json_schema {c:.1f} tok/s, ratio {c/u:.3f}")
    u=run(batch, False); c=run(batch, True, cold=True)
    print(f"batch {batch} cold: unconstrained {u:.1f} tok/s, json_schema (a new schema each round) {c:.1f} tok/s, ratio {c/u:.3f}")
