#!/usr/bin/env python3
"""Time to first token through Tandem's proxy against the prefill instance's own, interleaved request by request.

Usage: bench-ttft.py LABEL=PROXY_URL,PREFILL_URL [LABEL=...] [--prompts N] [--rounds R] [--input-words W]

For each prompt, one streaming request goes to each proxy and to each proxy's prefill instance directly, one at a
time, in turn, so that the machine's drift hits every deployment alike. Prints, per deployment and round, the median
TTFT through the proxy, the prefill's median, their ratio and the issue's bound (1.10 x prefill + 5 ms), and through
the proxy the median gap between the first and second token and between later ones. Prompts are distinct (run
prefix caching off, or every request after the first of a prompt is a cache hit).
"""
import argparse, http.client, json, statistics, time, urllib.parse

def timings_ms(url, prompt, max_tokens):
    """Milliseconds to the first event, and between each event and the next."""
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0, "ignore_eos": True}
    start = time.perf_counter()
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"{url} answered {r.status}: {r.read()[:300]!r}")
    times, pending = [], b""
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        pending += chunk
        while b"\n\n" in pending:
            event, pending = pending.split(b"\n\n", 1)
            if event.startswith(b"data: {"):
                times.append(time.perf_counter() - start)
    c.close()
    return times[0] * 1000, [(b - a) * 1000 for a, b in zip(times, times[1:])]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("deployments", nargs="+")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--input-words", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=16)
    a = ap.parse_args()
    deployments = []
    for d in a.deployments:
        label, urls = d.split("=", 1)
        proxy, prefill = urls.split(",")
        deployments.append((label, proxy, prefill))
    words = "the quick brown fox jumps over a lazy dog while seven bright stars fall into quiet water".split()
    for rnd in range(a.rounds):
        times = {label: ([], [], [], []) for label, _, _ in deployments}
        for i in range(a.prompts):
            prompt = f"Round {rnd} prompt {i}: " + " ".join(words[(i + k * 7) % len(words)] for k in range(a.input_words))
            for label, proxy, prefill in deployments:
                first, gaps = timings_ms(proxy, prompt + f" via {label}", a.max_tokens)
                times[label][0].append(first)
                times[label][1].append(timings_ms(prefill, prompt + f" direct {label}", a.max_tokens)[0])
                times[label][2].append(gaps[0])
                times[label][3].append(statistics.median(gaps[1:]))
        for label, _, _ in deployments:
            via, direct, gap1, later = (statistics.median(v) for v in times[label])
            print(f"round {rnd + 1} {label}: via proxy {via:.1f} ms, prefill {direct:.1f} ms, "
                  f"ratio {via / direct:.3f}, bound {1.10 * direct + 5:.1f} ms, {'within' if via <= 1.10 * direct + 5 else 'OVER'}; "
                  f"first gap {gap1:.1f} ms, later gaps {later:.1f} ms")

main()
