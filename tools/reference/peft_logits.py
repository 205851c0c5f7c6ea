"""Logits of a base model with an adapter, as PEFT (or THUDM's model) computes them.

Usage: peft_logits.py BASE_DIR ADAPTER_DIR INPUTS_JSON OUT_JSON

BASE_DIR is a GLM checkpoint in transformers' layout, loaded as
GlmForCausalLM in float32 with eager attention. ADAPTER_DIR is either

  a PEFT LoRA adapter (adapter_config.json), loaded with
  peft.PeftModel.from_pretrained, or
  a THUDM P-tuning v2 checkpoint (config.json with pre_seq_len and the
  transformer.prefix_encoder.* tensors in model.safetensors or
  pytorch_model.bin): the prefix encoder's output becomes every layer's
  past keys and values as in train_reference.py, the real tokens numbered
  from 0 as THUDM's model does.

INPUTS_JSON holds {"rows": [[token ids], ...]}; each row runs unpadded on
its own, positions from 0. OUT_JSON gets {"logits": [row][position][vocab]}
(float32 values); nothing is printed on success.
"""

import json
import os
import sys

import torch
import transformers
from transformers import GlmForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_reference as tr  # noqa: E402

from peft import PeftModel  # noqa: E402


def adapted(model, folder):
    """A function from a row of token ids (a tensor) to its logits."""
    config = os.path.join(folder, "adapter_config.json")
    if os.path.exists(config):
        with open(config) as f:
            kind = json.load(f)["peft_type"]
        if kind != "LORA":
            sys.exit(f"{folder}: a {kind} adapter; only LoRA is supported")
        pm = PeftModel.from_pretrained(model, folder).eval()
        return lambda ids: tr.row_logits(pm, ids)
    with open(os.path.join(folder, "config.json")) as f:
        if "pre_seq_len" not in json.load(f):
            sys.exit(f"{folder}: neither a PEFT adapter nor a P-tuning v2 checkpoint")
    prefix = tr.load_prefix(folder)().detach()
    return lambda ids: tr.row_logits(model, ids, prefix)


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    base, adapter, inputs, out = sys.argv[1:]
    torch.set_num_threads(1)  # reproducible float32 sums
    transformers.logging.set_verbosity_error()
    model = GlmForCausalLM.from_pretrained(base, torch_dtype=torch.float32, attn_implementation="eager").eval()
    with open(inputs) as f:
        rows = json.load(f)["rows"]
    run = adapted(model, adapter)
    with torch.inference_mode():
        logits = [run(torch.tensor(row)).tolist() for row in rows]
    with open(out, "w") as f:
        json.dump({"logits": logits}, f)


if __name__ == "__main__":
    main()
