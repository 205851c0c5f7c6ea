"""Torch and PEFT side of the adapter training throughput benchmark.

Usage: bench_train_hf.py BASE_DIR STEPS_JSON OUT_JSON

Trains an adapter on BASE_DIR (a GLM checkpoint in transformers' layout) the
way a PEFT user ordinarily does, and times it. STEPS_JSON holds

  {"method": "lora" | "ptuning", "dtype": "float32" | "bfloat16",
   "threads": N,
   "lora": {"r": 8, "lora_alpha": 16, "target_modules": [...],
            "use_rslora": false, "lora_dropout": 0.0},
   "ptuning": {"pre_seq_len": 32, "prefix_projection": false},
   "optimizer": {"lr": ..., "weight_decay": ..., "clip_norm": ...},
   "steps": [{"rows": [{"ids": [...], "start": k}, ...]}, ...],
   "warmup_steps": 2}

A row's ids are its whole sequence; its targets are ids[start:], each
predicted by the position before. The model is GlmForCausalLM in PyTorch
eager mode (no torch.compile) with eager attention: transformers 4.46 uses
SDPA only from torch 2.1.1 on. LoRA is PEFT's (get_peft_model, its default
initialisation); P-tuning is THUDM's P-tuning v2 (train_reference.py's
PrefixEncoder, its output every layer's past keys and values, the real
tokens numbered from 0; with prefix_projection, ptuning's
prefix_hidden_size or else the model's hidden size inside the MLP). Adapter
weights are float32; with bfloat16 the base weights are bfloat16 and the
forward pass runs under torch.autocast("cpu", dtype=torch.bfloat16), as
transformers' Trainer does with bf16=True.

Each step is the usual training loop: one right-padded batch of all its
rows (attention mask, labels -100 on prompt and padding, positions from 0),
model(..., labels=labels).loss, backward, clip_grad_norm_, a
torch.optim.AdamW step, zero_grad. The steps after the first warmup_steps
are timed with time.perf_counter(). OUT_JSON gets {"tokens": the timed
steps' tokens (every row's len(ids)), "seconds": ..., "tokens_per_s": ...,
"losses": [every step's loss]}; nothing is printed on success.
"""

import json
import os
import sys
import time

import torch
import transformers
from transformers import GlmForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_reference as tr  # noqa: E402

from peft import LoraConfig, get_peft_model  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def adapt(model, spec):
    """The model to train, its prefix encoder (P-tuning) or None, and the
    trainable parameters."""
    if spec["method"] == "lora":
        pm = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **spec["lora"]))
        return pm, None, [p for p in pm.parameters() if p.requires_grad]
    pt = spec["ptuning"]
    model.requires_grad_(False)
    hidden = pt.get("prefix_hidden_size", model.config.hidden_size) if pt["prefix_projection"] else None
    encoder = tr.PrefixEncoder(pt["pre_seq_len"], tr.kv_width(model.config), hidden)
    return model, encoder, list(encoder.parameters())


def batch_of(step):
    rows = [(r["ids"], r["start"]) for r in step["rows"]]
    if any(start < 1 for _, start in rows):
        sys.exit("a row's first target must have a position before it (start >= 1)")
    return tr.padded_batch(rows)


def train_step(model, encoder, params, optimizer, batch, clip, dtype):
    ids, mask, positions, labels = batch
    past = {}
    if encoder is not None:
        prefix = encoder().to(dtype)
        past["past_key_values"] = tr.prefix_past(prefix, model.config, len(ids))
        mask = torch.cat([torch.ones(len(ids), prefix.shape[0], dtype=mask.dtype), mask], 1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss = model(input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels,
                     use_cache=False, **past).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    optimizer.zero_grad()
    return float(loss)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    base, steps_path, out = sys.argv[1:]
    with open(steps_path) as f:
        spec = json.load(f)
    torch.set_num_threads(spec["threads"])
    transformers.logging.set_verbosity_error()
    dtype = DTYPES[spec["dtype"]]
    model = GlmForCausalLM.from_pretrained(base, torch_dtype=dtype, attn_implementation="eager")
    model, encoder, params = adapt(model, spec)
    model.train()
    opt = spec["optimizer"]
    optimizer = torch.optim.AdamW(params, lr=opt["lr"], weight_decay=opt["weight_decay"])
    batches = [batch_of(step) for step in spec["steps"]]
    warmup = spec["warmup_steps"]
    if warmup >= len(batches):
        sys.exit("no step left to time after the warmup steps")

    losses = []
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        losses.append(train_step(model, encoder, params, optimizer, batch, opt["clip_norm"], dtype))
    seconds = time.perf_counter() - start
    tokens = sum(len(r["ids"]) for step in spec["steps"][warmup:] for r in step["rows"])
    with open(out, "w") as f:
        json.dump({"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "losses": losses}, f)


if __name__ == "__main__":
    main()
