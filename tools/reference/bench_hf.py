"""Hugging Face side of the engine benchmark (task bench:engine).

Usage: bench_hf.py --model DIR --workload FILE --threads N [--attention sdpa|eager]

`emobench engine` (cmd/emobench) starts this process and speaks to it one
JSON object a line: it sends {"dtype": "float32"|"bfloat16", "batch": 32,
"strategy": "kv", "logprobs": false} on stdin, this process scores every
message of the workload once in batches of that size and answers
{"seconds": wall, "cpu_seconds": cpu, "messages": n} (plus "logprobs",
[messages][labels], when asked) on stdout; cpu is the process's CPU time,
all threads.

The workload (written by `emobench engine`) holds the compiled prompt and the
messages' token ids, sorted by length: {"prefix": [...], "suffix": [...],
"labels": [[...]], "stop": id, "texts": [[...]]}. Every message becomes
prefix + text + suffix, and a label's log-probability is that of its
tokens followed by the stop (end-of-turn) token, exactly, as the engine
computes it. The model is transformers' GlmForCausalLM loaded from a copy of
the engine's weights in its own layout, run in PyTorch eager mode (no
torch.compile) under torch.inference_mode with torch.set_num_threads, with
eager attention (transformers 4.46 uses SDPA only from torch 2.1.1 on).
The models are loaded outside inference_mode: parameters created inside it
make bfloat16 matrix products several times slower.

Strategies, all batched, with logits only where a label token is predicted
and one fused log_softmax over them:

  kv         one forward pass over the left-padded prompts with a KV cache
             and the logits of the last position only (num_logits_to_keep),
             then the cache repeated for every label and one forward pass
             over all the labels' tokens (the way generate() and most
             scoring code use transformers);
  kv-shared  the same, with the tokens every label starts with (ChatGLM3's
             reply opening, a newline) moved into the prompt pass, so that
             the label pass only carries what differs;
  full       one left-padded row per (message, label): prompt + label, with
             the logits of the label positions only (lm-eval-harness style).
"""

import argparse
import json
import sys
import time

import torch
import transformers
from transformers import DynamicCache, GlmForCausalLM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class Workload:
    def __init__(self, path):
        with open(path) as f:
            w = json.load(f)
        self.prefix, self.suffix = w["prefix"], w["suffix"]
        self.labels, self.stop = w["labels"], w["stop"]
        self.texts = w["texts"]
        # label k's next-token targets: its tokens after the first, then stop
        self.targets = [label[1:] + [self.stop] for label in self.labels]


def left_padded(rows, pad):
    """input ids, attention mask and position ids of left-padded rows."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def pick(logits, targets):
    """log p(targets) from logits [..., vocab] and targets [...]."""
    logp = torch.log_softmax(logits, -1, dtype=torch.float32)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def common_prefix(labels):
    """How many tokens every label starts with, short of the shortest."""
    c = 0
    while c + 1 < min(len(label) for label in labels) and len({label[c] for label in labels}) == 1:
        c += 1
    return c


def score_kv(model, w, texts, c=0):
    """kv, with the labels' first c tokens (all alike) in the prompt pass."""
    common = w.labels[0][:c]
    rows = [w.prefix + t + w.suffix + common for t in texts]
    ids, mask, positions = left_padded(rows, pad=w.stop)
    # The last c+1 positions predict the common tokens and the labels' next.
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                past_key_values=DynamicCache(), use_cache=True, num_logits_to_keep=c + 1)
    B, K = len(texts), len(w.labels)
    logp = torch.log_softmax(out.logits, -1, dtype=torch.float32)  # [B, c+1, vocab]
    shared = torch.zeros(B)
    for j, tok in enumerate(common):
        shared += logp[:, j, tok]
    first = logp[:, c, [label[c] for label in w.labels]]

    width = max(len(label) - c for label in w.labels)
    lab = torch.full((K, width), w.stop, dtype=torch.long)
    lab_mask = torch.zeros((K, width), dtype=torch.long)
    tgt = torch.zeros((K, width), dtype=torch.long)
    for k, label in enumerate(w.labels):
        n = len(label) - c
        lab[k, :n] = torch.tensor(label[c:])
        lab_mask[k, :n] = 1
        tgt[k, :n] = torch.tensor(w.targets[k][c:])
    cache = out.past_key_values
    cache.batch_repeat_interleave(K)  # row b*K + k: message b, label k
    full_mask = torch.cat([mask.repeat_interleave(K, 0), lab_mask.repeat(B, 1)], 1)
    lab_pos = mask.sum(-1).repeat_interleave(K)[:, None] + torch.arange(width)[None, :]
    out = model(input_ids=lab.repeat(B, 1), attention_mask=full_mask, position_ids=lab_pos,
                past_key_values=cache, use_cache=True)
    rest = pick(out.logits, tgt.repeat(B, 1)) * lab_mask.repeat(B, 1)
    return shared[:, None] + first + rest.sum(-1).view(B, K)


def score_full(model, w, texts):
    K = len(w.labels)
    rows = [w.prefix + t + w.suffix + label for t in texts for label in w.labels]
    ids, mask, positions = left_padded(rows, pad=w.stop)
    # Label k's tokens and stop are predicted by the last len(label)+1 positions.
    keep = max(len(label) for label in w.labels) + 1
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                use_cache=False, num_logits_to_keep=keep)
    tgt = torch.zeros((K, keep), dtype=torch.long)
    valid = torch.zeros((K, keep))
    for k, label in enumerate(w.labels):
        n = len(label) + 1
        tgt[k, keep - n:] = torch.tensor(label + [w.stop])
        valid[k, keep - n:] = 1
    B = len(texts)
    logp = pick(out.logits, tgt.repeat(B, 1)) * valid.repeat(B, 1)
    return logp.sum(-1).view(B, K)


STRATEGIES = {
    "kv": score_kv,
    "kv-shared": lambda model, w, texts: score_kv(model, w, texts, common_prefix(w.labels)),
    "full": score_full,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--workload", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--attention", default="eager", choices=["sdpa", "eager"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    w = Workload(args.workload)
    models, warm = {}, set()

    for line in sys.stdin:
        req = json.loads(line)
        dtype, batch, name = req["dtype"], req["batch"], req["strategy"]
        strategy = STRATEGIES[name]
        if dtype not in models:
            models[dtype] = GlmForCausalLM.from_pretrained(
                args.model, torch_dtype=DTYPES[dtype], attn_implementation=args.attention).eval()
        model = models[dtype]
        with torch.inference_mode():
            if (dtype, name) not in warm:  # lazy initialisation stays out of the timing
                strategy(model, w, w.texts[:batch])
                warm.add((dtype, name))
            results = []
            start, cpu = time.perf_counter(), time.process_time()
            for i in range(0, len(w.texts), batch):
                results.append(strategy(model, w, w.texts[i:i + batch]))
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        answer = {"seconds": seconds, "cpu_seconds": cpu, "messages": len(w.texts)}
        if req.get("logprobs"):
            answer["logprobs"] = torch.cat(results).double().tolist()
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
