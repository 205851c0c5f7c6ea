"""Reference loss, gradients and one AdamW step for adapter training parity.

Usage: train_reference.py OUT_DIR

Builds the tiny random GlmForCausalLM of glm_checkpoints.py (the first seed)
and writes it as OUT_DIR/base-hf (transformers' layout, float32). A fixed
prompt (prefix, suffix, three labels of 1, 2 and 2 tokens, a stop token) and
five texts with their gold labels make one batch: every row is
prefix + text + suffix + label + [stop], and the loss is the mean, over all
the batch's target tokens (the label's tokens and stop, each predicted by
the position before), of -log_softmax(logits)[target], as transformers'
causal LM loss averages a batch (ignore_index -100). Each row runs unpadded
on its own (float32, eager attention, positions from 0); the per-token
losses are summed, divided by the target count, and backpropagated once.

Cases, each in OUT_DIR/<case>/, with the base weights frozen:

  lora                PEFT LoRA on GlmForCausalLM, r 4, alpha 8, every
                      projection (q, k, v, o, gate_up, down)
  lora-rslora         the same with use_rslora on q, v and down
  ptuning             THUDM P-tuning v2 (ChatGLM2/3's PrefixEncoder), 4
                      virtual tokens, no projection: the trainable embedding
                      is every layer's prefix keys and values
  ptuning-projection  the same through the prefix MLP (Linear, Tanh,
                      Linear; 32 hidden)
  prefix-tuning       PEFT prefix tuning (PrefixTuningConfig) on
                      GlmForCausalLM, 4 virtual tokens, no projection,
                      run through the PeftModel's own forward

LoRA is initialised with init_lora_weights=False, lora_B scaled as in
peft_adapters.py; the P-tuning prefix is laid out as peft_adapters.py lays
out THUDM prefixes (keys of layer l at slot 2l, values at 2l+1), every
real token attends to all virtual tokens, and the real tokens are numbered
from 0, as THUDM's model does. PEFT prefix tuning's prompt embeddings start
N(0, PREFIX_STD) too; PEFT passes them as past_key_values and drops the
position ids, so transformers numbers the real tokens after the virtual
ones (P, P+1, ...). Per case:

  init/                   the adapter before training, as its tool saves it:
                          PEFT's save_pretrained (adapter_config.json,
                          adapter_model.safetensors), or THUDM's config.json
                          (pre_seq_len, prefix_projection) and
                          model.safetensors (transformer.prefix_encoder.*)
  grads.safetensors       the loss's gradient of every trainable tensor,
                          under the names init/ stores it by, float32
  after_step.safetensors  the same tensors after clipping the total
                          gradient norm to 1 (clip_grad_norm_) and one
                          torch.optim.AdamW step

The lora case also checks that the model's own loss over one right-padded
batch (labels -100 on prompt and padding) equals the per-row mean.

OUT_DIR/manifest.json, written last, holds the prompt, the rows, the
optimizer's settings and per case its files, the loss, the gradient norm
before clipping, the loss after the step and the number of targets; nothing
else is printed on success.
"""

import json
import os
import sys

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import DynamicCache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import glm_checkpoints as gc  # noqa: E402
import peft_adapters as pa  # noqa: E402

import peft  # noqa: E402
from peft import LoraConfig, PrefixTuningConfig, get_peft_model  # noqa: E402

PREFIX = [64, 17, 233, 9, 150, 88, 271, 45]
SUFFIX = [12, 199, 30]
# The two 2-token labels share their first token.
LABELS = [[101], [57, 240], [57, 118]]
STOP = gc.EOS_ID
# (text, gold label): texts of 4, 6, 8, 11 and 10 tokens
ROWS = [
    ([210, 33, 76, 5], 1),
    ([91, 144, 7, 260, 38, 182], 0),
    ([15, 293, 122, 69, 201, 48, 173, 99], 2),
    ([250, 11, 134, 87, 3, 166, 42, 219, 71, 128, 24], 1),
    ([160, 58, 287, 19, 112, 245, 36, 93, 140, 277], 2),
]
OPTIMIZER = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}
CLIP_NORM = 1.0
PRE_SEQ_LEN = 4
PREFIX_STD = 0.5
PREFIX_NAME = "transformer.prefix_encoder."
# The padded batch's loss and the per-row mean agree within this.
SELF_TOLERANCE = 1e-5

CASES = {
    "lora": {"method": "lora", "seed": 500, "lora": dict(
        r=4, lora_alpha=8, use_rslora=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"])},
    "lora-rslora": {"method": "lora", "seed": 501, "lora": dict(
        r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"])},
    "ptuning": {"method": "ptuning", "seed": 600, "prefix_hidden_size": None},
    "ptuning-projection": {"method": "ptuning", "seed": 601, "prefix_hidden_size": 32},
    "prefix-tuning": {"method": "prefix-tuning", "seed": 700},
}
# The name PEFT's save_pretrained gives a prefix tuning adapter's embedding.
PROMPT_NAME = "prompt_embeddings"


class PrefixEncoder(torch.nn.Module):
    """ChatGLM2/3's PrefixEncoder: an embedding of pre_seq_len rows, each
    every layer's keys and values (kv_width), optionally through
    Linear(kv_width, hidden), Tanh, Linear(hidden, kv_width)."""

    def __init__(self, pre_seq_len, kv_width, hidden=None):
        super().__init__()
        self.embedding = torch.nn.Embedding(pre_seq_len, kv_width)
        self.trans = None
        if hidden:
            self.trans = torch.nn.Sequential(
                torch.nn.Linear(kv_width, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, kv_width))

    def forward(self):
        values = self.embedding.weight
        return values if self.trans is None else self.trans(values)


def kv_width(config):
    """One virtual token's keys and values across all layers."""
    return config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim


def prefix_past(values, config, rows):
    """A DynamicCache holding prefix values [P, kv_width] for rows rows, laid
    out as peft_adapters.past_from (keys of layer l at slot 2l, values at
    2l+1), with the sizes read from the model's config."""
    layers, groups, head_dim = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
    kv = values.view(values.shape[0], layers * 2, groups, head_dim).permute(1, 2, 0, 3)
    cache = DynamicCache()
    for layer in range(layers):
        k = kv[2 * layer].unsqueeze(0).expand(rows, -1, -1, -1).contiguous()
        v = kv[2 * layer + 1].unsqueeze(0).expand(rows, -1, -1, -1).contiguous()
        cache.update(k, v, layer)
    return cache


def prefix_state(encoder):
    """The encoder's tensors under THUDM's names."""
    return {PREFIX_NAME + k: v for k, v in encoder.named_parameters()}


def load_prefix(folder):
    """The PrefixEncoder of a THUDM P-tuning v2 checkpoint folder."""
    path = os.path.join(folder, "model.safetensors")
    if os.path.exists(path):
        sd = load_file(path)
    else:
        sd = torch.load(os.path.join(folder, "pytorch_model.bin"), map_location="cpu")
    sd = {k[len(PREFIX_NAME):]: v.float() for k, v in sd.items() if k.startswith(PREFIX_NAME)}
    pre_seq_len, width = sd["embedding.weight"].shape
    hidden = sd["trans.0.weight"].shape[0] if "trans.0.weight" in sd else None
    encoder = PrefixEncoder(pre_seq_len, width, hidden)
    encoder.load_state_dict(sd)
    return encoder


def prompt_learning(model):
    """Whether model is a PeftModel of a prompt learning method (prefix
    tuning), whose forward adds the virtual tokens itself."""
    config = getattr(model, "active_peft_config", None)
    return config is not None and config.is_prompt_learning


def row_logits(model, ids, prefix=None):
    """The logits [n, vocab] of one unpadded row of token ids (a tensor),
    positions from 0; prefix: P-tuning values [P, kv_width] as the past.
    A PEFT prefix tuning model runs its own forward: PEFT adds the virtual
    tokens as the past and ignores position ids, so the real tokens are
    numbered from P."""
    n = len(ids)
    if prompt_learning(model):
        return model(input_ids=ids[None], attention_mask=torch.ones(1, n, dtype=torch.long)).logits[0]
    kwargs = {"input_ids": ids[None], "position_ids": torch.arange(n)[None]}
    if prefix is not None:
        kwargs["past_key_values"] = prefix_past(prefix, model.config, 1)
        kwargs["attention_mask"] = torch.ones(1, prefix.shape[0] + n, dtype=torch.long)
    return model(**kwargs).logits[0]


def sequence(text, label):
    return PREFIX + text + SUFFIX + LABELS[label] + [STOP]


def batch_loss(model, encoder=None):
    """The mean target-token loss of ROWS, one row at a time, and the number
    of targets."""
    prefix = encoder() if encoder is not None else None
    total, count = 0.0, 0
    for text, label in ROWS:
        ids = torch.tensor(sequence(text, label))
        k = len(LABELS[label]) + 1
        logp = torch.log_softmax(row_logits(model, ids, prefix)[-k - 1:-1], -1)
        total = total - logp.gather(-1, ids[-k:, None]).sum()
        count += k
    return total / count, count


def padded_batch(rows, pad=gc.PAD_ID):
    """input ids, attention mask, position ids and labels of right-padded
    rows (ids, start): the targets are ids[start:], every other label -100."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, start) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        mask[i, :len(ids)] = 1
        labels[i, start:len(ids)] = torch.tensor(ids[start:])
    positions = torch.arange(width).expand(len(rows), -1)
    return input_ids, mask, positions, labels


def check_padded(model, loss):
    rows = []
    for text, label in ROWS:
        ids = sequence(text, label)
        rows.append((ids, len(ids) - len(LABELS[label]) - 1))
    ids, mask, positions, labels = padded_batch(rows)
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels).loss
    if abs(float(padded) - float(loss)) > SELF_TOLERANCE:
        sys.exit(f"the padded batch's loss {float(padded)} is not the per-row mean {float(loss)}")


def lora_case(model, folder, case):
    """A PEFT LoRA model, saved to folder/init, and its trainable tensors
    under the names save_pretrained wrote."""
    torch.manual_seed(case["seed"])
    pm = get_peft_model(gc.copy_of(model), LoraConfig(
        task_type="CAUSAL_LM", init_lora_weights=False, lora_dropout=0.0, **case["lora"])).eval()
    pa.shrink_lora_b(pm)
    init = os.path.join(folder, "init")
    pm.save_pretrained(init, save_embedding_layers=False)
    # save_pretrained drops the adapter's name (".default") from the names.
    params = {n.replace(".default.", "."): p for n, p in pm.named_parameters() if p.requires_grad}
    with safe_open(os.path.join(init, "adapter_model.safetensors"), "pt") as f:
        saved = set(f.keys())
    if saved != set(params):
        sys.exit(f"PEFT saved {sorted(saved ^ set(params))} under other names than its parameters")
    return pm, None, params


def ptuning_case(model, folder, case):
    """A THUDM P-tuning v2 prefix encoder, saved to folder/init, and its
    tensors under THUDM's names."""
    torch.manual_seed(case["seed"])
    hidden = case["prefix_hidden_size"]
    encoder = PrefixEncoder(PRE_SEQ_LEN, kv_width(model.config), hidden)
    with torch.no_grad():
        encoder.embedding.weight.normal_(0.0, PREFIX_STD)
    init = os.path.join(folder, "init")
    os.makedirs(init)
    config = {"model_type": "chatglm", "pre_seq_len": PRE_SEQ_LEN, "prefix_projection": hidden is not None}
    if hidden:
        config["prefix_hidden_size"] = hidden
    pa.write_json(os.path.join(init, "config.json"), config)
    params = prefix_state(encoder)
    save_file({k: v.detach().clone() for k, v in params.items()},
              os.path.join(init, "model.safetensors"), metadata={"format": "pt"})
    return model, encoder, params


def prefix_tuning_case(model, folder, case):
    """A PEFT prefix tuning model, its prompt embeddings N(0, PREFIX_STD),
    saved to folder/init, and its embedding under the name save_pretrained
    wrote."""
    torch.manual_seed(case["seed"])
    pm = get_peft_model(gc.copy_of(model), PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=PRE_SEQ_LEN, prefix_projection=False)).eval()
    embedding = pm.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        embedding.normal_(0.0, PREFIX_STD)
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    if trainable != ["prompt_encoder.default.embedding.weight"]:
        sys.exit(f"PEFT prefix tuning trains {trainable}, not only the prompt encoder's embedding")
    init = os.path.join(folder, "init")
    pm.save_pretrained(init, save_embedding_layers=False)
    with safe_open(os.path.join(init, "adapter_model.safetensors"), "pt") as f:
        saved = set(f.keys())
    if saved != {PROMPT_NAME}:
        sys.exit(f"PEFT saved the prefix as {sorted(saved)}, not {PROMPT_NAME}")
    return pm, None, {PROMPT_NAME: embedding}


def save_tensors(path, tensors):
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})


def run_case(out, name, model, case):
    folder = os.path.join(out, name)
    os.makedirs(folder)
    make = {"lora": lora_case, "ptuning": ptuning_case, "prefix-tuning": prefix_tuning_case}[case["method"]]
    model, encoder, params = make(model, folder, case)
    loss, targets = batch_loss(model, encoder)
    if name == "lora":
        check_padded(model, loss)
    loss.backward()
    save_tensors(os.path.join(folder, "grads.safetensors"), {k: p.grad for k, p in params.items()})
    norm = torch.nn.utils.clip_grad_norm_(params.values(), CLIP_NORM)
    torch.optim.AdamW(params.values(), **OPTIMIZER).step()
    save_tensors(os.path.join(folder, "after_step.safetensors"), params)
    with torch.no_grad():
        loss_after, _ = batch_loss(model, encoder)
    return {"method": case["method"], "init": f"{name}/init", "grads": f"{name}/grads.safetensors",
            "after_step": f"{name}/after_step.safetensors", "loss": float(loss), "grad_norm": float(norm),
            "loss_after": float(loss_after), "targets": targets}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)  # reproducible float32 sums
    transformers.logging.set_verbosity_error()

    model = gc.make_model(gc.FIRST_SEED)
    gc.write_hf(out, "base-hf", model, True)
    model.requires_grad_(False)
    cases = {name: run_case(out, name, model, case) for name, case in CASES.items()}

    pa.write_json(os.path.join(out, "manifest.json"), {
        "tool": "tools/reference/train_reference.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "base": "base-hf",
        "prompt": {"prefix": PREFIX, "suffix": SUFFIX, "labels": LABELS, "stop": STOP},
        "rows": [{"text": text, "label": label} for text, label in ROWS],
        "optimizer": {**OPTIMIZER, "betas": list(OPTIMIZER["betas"]), "clip_norm": CLIP_NORM},
        "cases": cases,
    })


if __name__ == "__main__":
    main()
