"""Checks the GGML conversion of the benchmark model against transformers.

Usage: check_ggml.py --hf DIR --ggml DIR [--prompts N] [--types f32,q4_0,...]

For N prompts of random token ids (lengths 5 to 120, seeded), chatglm.cpp's
greedy next token (its public API: chatglm_cpp.Pipeline's
model.generate_next_token, float32 weights) must be the argmax of
transformers' GlmForCausalLM logits on the same weights (DIR, the copy
emobench writes beside the model), and the last position's logits from
emoflow_chatglm_score must be within 1e-2 of transformers' (chatglm.cpp
keeps keys and values in float16). For the other types (those of --types
that are not f32) it prints the largest difference, without a bound. Exits non-zero on a
mismatch.
"""

import argparse
import os
import sys

import chatglm_cpp
import emoflow_chatglm_score
import numpy as np
import torch
from transformers import GlmForCausalLM

from to_ggml import GGML_TYPES


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", required=True)
    ap.add_argument("--ggml", required=True)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--types", default=",".join(GGML_TYPES))
    args = ap.parse_args()
    model = GlmForCausalLM.from_pretrained(args.hf, torch_dtype=torch.float32, attn_implementation="eager").eval()
    rng = np.random.default_rng(7)
    prompts = [rng.integers(3, 16000, size=n).tolist() for n in rng.integers(5, 121, size=args.prompts)]
    with torch.inference_mode():
        ref = [model(input_ids=torch.tensor([p])).logits[0, -1].double().numpy() for p in prompts]

    ok = True
    greedy = chatglm_cpp._C.GenerationConfig(do_sample=False, max_length=2048)
    pipe = chatglm_cpp.Pipeline(os.path.join(args.ggml, "chatglm3-bench-f32.bin"))
    for p, r in zip(prompts, ref):
        got = pipe.model.generate_next_token(p, None, greedy, 0, len(p))
        if got != int(r.argmax()):
            print(f"f32: greedy next token {got}, transformers' argmax {int(r.argmax())} (prompt of {len(p)})")
            ok = False
    for kind in dict.fromkeys(["f32"] + args.types.split(",")):
        sc = emoflow_chatglm_score.Scorer(os.path.join(args.ggml, f"chatglm3-bench-{kind}.bin"))
        worst, same = 0.0, 0
        for p, r in zip(prompts, ref):
            got = np.asarray(sc.logits(p), dtype=np.float64)
            worst = max(worst, float(np.abs(got - r).max()))
            same += int(got.argmax() == r.argmax())
        print(f"chatglm.cpp {kind:5s}: max |Δ logit| {worst:.3g} against transformers float32, same argmax {same}/{len(prompts)}")
        if kind == "f32" and not worst < 1e-2:
            ok = False
    print("chatglm.cpp conversion: " + ("reproduces transformers" if ok else "MISMATCH"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
