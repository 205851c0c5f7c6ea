"""chatglm.cpp side of the engine benchmark (task bench:engine).

Usage: bench_chatglm_cpp.py --models DIR --workload FILE --threads N

The same protocol as bench_hf.py, one JSON object a line: `emobench engine`
sends {"weight_type": "q4_0", "logprobs": false} on stdin; this process
scores every message of the workload once with chatglm.cpp 0.4.2 and
answers {"seconds": wall, "cpu_seconds": cpu, "messages": n, "threads": t,
"simd": [ggml's instruction sets]}
(plus "logprobs", [messages][labels], when asked). DIR holds the benchmark
model converted by chatglm_cpp/to_ggml.py, chatglm3-bench-<type>.bin.

Scoring is exact: each label's log-probability is that of its tokens
followed by the stop token, as the engine and bench_hf.py compute it, from
the logits of chatglm.cpp's own forward pass (emoflow_chatglm_score, built
beside chatglm.cpp by chatglm_cpp/install.sh: the Python API returns only
the sampled token). It runs the way chatglm.cpp generates, which is all its
API allows: no batching, one message at a time; a prefill of prefix + text
+ suffix with a fresh KV cache (chatglm.cpp feeds one token per call once
n_past > 0, so keeping the instruction prefix's cache and feeding the
message after it would be slower, not faster), then one decode step per
label token, the tokens every label starts with decoded once and each
label continuing from the same cache position.

Threads: chatglm.cpp picks its own count (std::thread::hardware_concurrency
when at most 4, else half of it); the answer says what it used, and
emobench compares it with its -threads.
"""

import argparse
import json
import os
import sys
import time

import emoflow_chatglm_score


def chatglm_cpp_threads():
    n = os.cpu_count() or 4
    return n if n <= 4 else n // 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    ap.add_argument("--workload", required=True)
    ap.add_argument("--threads", type=int, required=True)
    args = ap.parse_args()
    with open(args.workload) as f:
        w = json.load(f)
    prompts = [w["prefix"] + t + w["suffix"] for t in w["texts"]]
    labels, stop = w["labels"], w["stop"]
    scorers = {}

    for line in sys.stdin:
        req = json.loads(line)
        kind = req["weight_type"]
        if kind not in scorers:
            path = os.path.join(args.models, f"chatglm3-bench-{kind}.bin")
            if not os.path.exists(path):
                sys.exit(f"bench_chatglm_cpp.py: no model {path} (chatglm_cpp/to_ggml.py writes it)")
            scorers[kind] = emoflow_chatglm_score.Scorer(path)
            scorers[kind].score(prompts[0], labels, stop)  # first-call allocation stays out of the timing
        sc = scorers[kind]
        start, cpu = time.perf_counter(), time.process_time()
        results = [sc.score(p, labels, stop) for p in prompts]
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        answer = {"seconds": seconds, "cpu_seconds": cpu, "messages": len(prompts), "threads": chatglm_cpp_threads(),
                  "simd": emoflow_chatglm_score.simd()}
        if req.get("logprobs"):
            answer["logprobs"] = results
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
