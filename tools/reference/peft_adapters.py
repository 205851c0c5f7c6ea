"""PEFT and THUDM adapters for the tiny reference model, with reference logits.

Usage: peft_adapters.py OUT_DIR

Builds the tiny random GlmForCausalLM of glm_checkpoints.py (one fixed seed)
and writes it twice, as base-hf (transformers' names) and base-thudm
(THUDM's names). Then writes adapters as the training tools save them:

  LoRA, made by PEFT (init_lora_weights=False, so B is not zero) and saved
  with save_pretrained:
    on base-hf, PEFT wrapping GlmForCausalLM itself (q_proj ... down_proj);
    on base-thudm, PEFT wrapping a module tree with THUDM's names and the
    same weights (query_key_value, dense, dense_h_to_4h, dense_4h_to_h),
    since THUDM's modeling code is not on PyPI. Its reference is the
    GlmForCausalLM holding PEFT's merged weights (merge_and_unload), the
    fused query_key_value split back into q/k/v.
  PEFT prefix tuning (PREFIX_TUNING) on base-hf, with and without
    prefix_projection.
  THUDM P-tuning v2 checkpoints (config.json with pre_seq_len, the
    transformer.prefix_encoder.* weights of ChatGLM2/3's PrefixEncoder) on
    base-thudm, with and without prefix_projection. Their reference is
    GlmForCausalLM run after the prefix as past keys/values, positions
    counted from 0 as THUDM's model does.

Reference logits are float32, eager attention, for the inputs of
glm_checkpoints.make_cases(). PEFT prefix tuning drops position_ids, so
transformers numbers the tokens after the virtual tokens (P, P+1, ...): the
manifest records the positions each adapter's reference used.

OUT_DIR/manifest.json describes it all; nothing else is printed on success.
"""

import json
import os
import sys
import warnings

import torch
import transformers
from safetensors.torch import save_file
from transformers import DynamicCache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import glm_checkpoints as gc  # noqa: E402

import peft  # noqa: E402
from peft import LoraConfig, PrefixTuningConfig, get_peft_model  # noqa: E402

SEED = gc.FIRST_SEED
KV_SIZE = gc.LAYERS * 2 * gc.GROUPS * gc.HEAD_DIM  # one virtual token's keys and values
Q_ROWS, KV_ROWS = gc.HEADS * gc.HEAD_DIM, gc.GROUPS * gc.HEAD_DIM
# The reference agrees with itself (PEFT unmerged vs merged, PEFT's prefix
# vs the same past given by hand) within this.
SELF_TOLERANCE = 1e-5
# PEFT's init_lora_weights=False leaves lora_B as nn.Linear initialises it,
# U(±1/sqrt(r)): with every projection adapted that moves logits by tens,
# and float32 rounding with them. Scaled down, the adapters still move
# logits by far more than the parity tolerance.
LORA_B_SCALE = 0.2


def forward(model, case, positions=None, past=None, peft_prefix=False):
    _, rows, masks, case_positions = case
    mask = torch.tensor(masks)
    kwargs = {"input_ids": torch.tensor(rows)}
    if past is not None:
        mask = torch.cat([torch.ones(mask.shape[0], past.get_seq_length(), dtype=mask.dtype), mask], dim=1)
        kwargs["past_key_values"] = past
    kwargs["attention_mask"] = mask
    if not peft_prefix:
        kwargs["position_ids"] = torch.tensor(positions if positions is not None else case_positions)
    with torch.inference_mode():
        return model(**kwargs).logits.float()


def max_real_diff(a, b, case):
    mask = torch.tensor(case[2], dtype=torch.bool)
    return float((a[mask] - b[mask]).abs().max())


def past_from(values, rows):
    """A DynamicCache holding a prefix [P, layers*2*groups*head_dim] (keys of
    layer l at slot 2l, values at 2l+1), as THUDM's get_prompt lays it out."""
    p = values.shape[0]
    kv = values.view(p, gc.LAYERS * 2, gc.GROUPS, gc.HEAD_DIM).permute(1, 2, 0, 3)  # [layers*2, groups, P, hd]
    cache = DynamicCache()
    for layer in range(gc.LAYERS):
        k = kv[2 * layer].unsqueeze(0).expand(rows, -1, -1, -1).contiguous()
        v = kv[2 * layer + 1].unsqueeze(0).expand(rows, -1, -1, -1).contiguous()
        cache.update(k, v, layer)
    return cache


class _Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.query_key_value = torch.nn.Linear(gc.HIDDEN, Q_ROWS + 2 * KV_ROWS, bias=True)
        self.dense = torch.nn.Linear(Q_ROWS, gc.HIDDEN, bias=False)


class _MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dense_h_to_4h = torch.nn.Linear(gc.HIDDEN, 2 * gc.FFN, bias=False)
        self.dense_4h_to_h = torch.nn.Linear(gc.FFN, gc.HIDDEN, bias=False)


class _Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attention = _Attention()
        self.mlp = _MLP()


class THUDMTree(torch.nn.Module):
    """The projections of THUDM's ChatGLM2/3 under their module paths
    (transformer.encoder.layers.N....): what PEFT needs to name LoRA tensors
    as it does for THUDM's model. It has no forward."""

    def __init__(self, model):
        super().__init__()
        self.transformer = torch.nn.Module()
        self.transformer.encoder = torch.nn.Module()
        self.transformer.encoder.layers = torch.nn.ModuleList(_Layer() for _ in range(gc.LAYERS))
        sd = gc.thudm_state(model, torch.float32)
        self.load_state_dict({k: v for k, v in sd.items() if k in self.state_dict()})


def hf_from_thudm_tree(model, tree):
    """A copy of model with tree's (merged) projections."""
    twin = gc.copy_of(model)
    with torch.no_grad():
        for i, (hf, th) in enumerate(zip(twin.model.layers, tree.transformer.encoder.layers)):
            w = th.self_attention.query_key_value.weight
            hf.self_attn.q_proj.weight.copy_(w[:Q_ROWS])
            hf.self_attn.k_proj.weight.copy_(w[Q_ROWS:Q_ROWS + KV_ROWS])
            hf.self_attn.v_proj.weight.copy_(w[Q_ROWS + KV_ROWS:])
            hf.self_attn.o_proj.weight.copy_(th.self_attention.dense.weight)
            hf.mlp.gate_up_proj.weight.copy_(th.mlp.dense_h_to_4h.weight)
            hf.mlp.down_proj.weight.copy_(th.mlp.dense_4h_to_h.weight)
    return twin


def shrink_lora_b(pm):
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if ".lora_B." in name:
                p.mul_(LORA_B_SCALE)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)  # reproducible float32 sums
    transformers.logging.set_verbosity_error()
    warnings.simplefilter("ignore")  # PEFT's notice that it drops position_ids

    cases = gc.make_cases()
    model = gc.make_model(SEED)
    gc.write_hf(out, "base-hf", model, True)
    gc.write_thudm(out, "base-thudm", model, torch.float32, "float32", "safetensors")

    base_logits = {c[0]: forward(model, c) for c in cases}
    base_files = {}
    for c in cases:
        base_files[c[0]] = f"ref-base-{c[0]}.f32"
        base_logits[c[0]].contiguous().numpy().astype("<f4").tofile(os.path.join(out, base_files[c[0]]))

    adapters = []

    def record(name, method, base, fmt, logits, positions=None, **extra):
        files, effect = {}, 0.0
        for c in cases:
            files[c[0]] = f"ref-{name}-{c[0]}.f32"
            logits[c[0]].contiguous().numpy().astype("<f4").tofile(os.path.join(out, files[c[0]]))
            effect = max(effect, max_real_diff(logits[c[0]], base_logits[c[0]], c))
        entry = {"name": name, "method": method, "base": base, "format": fmt, "files": files,
                 # the largest change the adapter makes to a compared logit
                 "effect": effect}
        if positions:
            entry["positions"] = positions
        entry.update(extra)
        adapters.append(entry)

    # LoRA through PEFT on GlmForCausalLM (transformers' module names).
    hf_lora = [
        ("lora-hf-attention", "safetensors", dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])),
        ("lora-hf-all-rslora", "safetensors", dict(r=8, lora_alpha=16, use_rslora=True, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"])),
        # Rank and alpha patterns on keys that PEFT 0.13 and later resolve
        # alike (0.13 takes one key, the first of either pattern that
        # matches, for both rank and alpha; later releases resolve each
        # pattern on its own).
        ("lora-hf-patterns-bin", "bin", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_up_proj", "down_proj"],
                                              rank_pattern={"v_proj": 2, "down_proj": 8, "layers.1.self_attn.q_proj": 6},
                                              alpha_pattern={"v_proj": 3, "gate_up_proj": 32})),
        ("lora-hf-regex-rslora", "safetensors", dict(r=6, lora_alpha=4, use_rslora=True,
                                                     target_modules=r"model\.layers\.[02]\.(self_attn\.k_proj|mlp\.down_proj)")),
    ]
    for i, (name, fmt, kw) in enumerate(hf_lora):
        torch.manual_seed(100 + i)
        pm = get_peft_model(gc.copy_of(model), LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, lora_dropout=0.0, **kw)).eval()
        shrink_lora_b(pm)
        pm.save_pretrained(os.path.join(out, name), safe_serialization=fmt == "safetensors")
        logits = {c[0]: forward(pm, c) for c in cases}
        merged = pm.merge_and_unload().eval()
        for c in cases:
            d = max_real_diff(forward(merged, c), logits[c[0]], c)
            if d > SELF_TOLERANCE:
                sys.exit(f"{name}: PEFT's merged and unmerged logits differ by {d}")
        record(name, "lora", "hf", fmt, logits)

    # LoRA through PEFT on THUDM's module names.
    thudm_lora = [
        ("lora-thudm", "safetensors", dict(r=4, lora_alpha=8, target_modules=["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"])),
        ("lora-thudm-rslora-patterns-bin", "bin", dict(r=8, lora_alpha=8, use_rslora=True, target_modules=["query_key_value", "dense_4h_to_h"],
                                                        rank_pattern={"dense_4h_to_h": 2}, alpha_pattern={"dense_4h_to_h": 6})),
    ]
    for i, (name, fmt, kw) in enumerate(thudm_lora):
        torch.manual_seed(200 + i)
        pm = get_peft_model(THUDMTree(model), LoraConfig(init_lora_weights=False, lora_dropout=0.0, **kw)).eval()
        shrink_lora_b(pm)
        pm.save_pretrained(os.path.join(out, name), safe_serialization=fmt == "safetensors")
        merged = hf_from_thudm_tree(model, pm.merge_and_unload())
        record(name, "lora", "thudm", fmt, {c[0]: forward(merged, c) for c in cases})

    # PEFT prefix tuning on GlmForCausalLM.
    for i, (name, projection) in enumerate([("prefix-peft", False), ("prefix-peft-projection", True)]):
        torch.manual_seed(300 + i)
        vt = 8
        pm = get_peft_model(gc.copy_of(model), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=vt,
                                                                   prefix_projection=projection)).eval()
        pm.save_pretrained(os.path.join(out, name))
        logits = {c[0]: forward(pm, c, peft_prefix=True) for c in cases}
        # What PEFT ran: its saved prompt_embeddings as the past, tokens
        # numbered from the number of virtual tokens.
        saved = peft.utils.get_peft_model_state_dict(pm)["prompt_embeddings"].detach()
        positions = {}
        for c in cases:
            width = len(c[1][0])
            pos = [list(range(vt, vt + width)) for _ in c[1]]
            positions[c[0]] = pos
            d = max_real_diff(forward(model, c, positions=pos, past=past_from(saved, len(c[1]))), logits[c[0]], c)
            if d > SELF_TOLERANCE:
                sys.exit(f"{name}: PEFT's logits are not those of its prompt_embeddings as the past with positions from {vt} ({d})")
        record(name, "prefix-tuning", "hf", "safetensors", logits, positions, virtual_tokens=vt, prefix_projection=projection)

    # THUDM P-tuning v2 checkpoints (ChatGLM2/3's PrefixEncoder).
    for i, (name, projection, fmt) in enumerate([("ptuning-thudm", False, "bin"), ("ptuning-thudm-projection", True, "safetensors")]):
        gen = torch.Generator().manual_seed(400 + i)
        pre = 6
        sd = {"transformer.prefix_encoder.embedding.weight": torch.randn(pre, KV_SIZE, generator=gen)}
        if projection:
            sd["transformer.prefix_encoder.trans.0.weight"] = torch.randn(gc.HIDDEN, KV_SIZE, generator=gen) / KV_SIZE ** 0.5
            sd["transformer.prefix_encoder.trans.0.bias"] = 0.1 * torch.randn(gc.HIDDEN, generator=gen)
            sd["transformer.prefix_encoder.trans.2.weight"] = torch.randn(KV_SIZE, gc.HIDDEN, generator=gen) / gc.HIDDEN ** 0.5
            sd["transformer.prefix_encoder.trans.2.bias"] = 0.1 * torch.randn(KV_SIZE, generator=gen)
            h = torch.tanh(sd["transformer.prefix_encoder.embedding.weight"] @ sd["transformer.prefix_encoder.trans.0.weight"].T
                           + sd["transformer.prefix_encoder.trans.0.bias"])
            values = h @ sd["transformer.prefix_encoder.trans.2.weight"].T + sd["transformer.prefix_encoder.trans.2.bias"]
        else:
            values = sd["transformer.prefix_encoder.embedding.weight"]
        d = os.path.join(out, name)
        os.makedirs(d)
        config = gc.thudm_config("float32")
        config.update({"pre_seq_len": pre, "prefix_projection": projection})
        write_json(os.path.join(d, "config.json"), config)
        if fmt == "bin":
            torch.save(sd, os.path.join(d, "pytorch_model.bin"))
        else:
            save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        logits = {c[0]: forward(model, c, past=past_from(values, len(c[1]))) for c in cases}
        record(name, "ptuning-v2", "thudm", fmt, logits, virtual_tokens=pre, prefix_projection=projection)

    write_json(os.path.join(out, "manifest.json"), {
        "tool": "tools/reference/peft_adapters.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "seed": SEED,
        "config": {"layers": gc.LAYERS, "hidden": gc.HIDDEN, "heads": gc.HEADS, "groups": gc.GROUPS,
                   "head_dim": gc.HEAD_DIM, "ffn": gc.FFN, "vocab": gc.VOCAB},
        "bases": {"hf": "base-hf", "thudm": "base-thudm"},
        "cases": [{"name": n, "tokens": r, "mask": m, "positions": p} for n, r, m, p in cases],
        "base_files": base_files,
        "adapters": adapters,
    })


if __name__ == "__main__":
    main()
