"""Tiny random ChatGLM2/3 checkpoints and reference logits for internal/model.

Usage: glm_checkpoints.py OUT_DIR

Builds a small transformers GlmForCausalLM (ChatGLM2/3's architecture: RMSNorm,
multi-query attention groups, rotary embeddings on half of each head as
interleaved pairs, SwiGLU) with random weights and writes the same weights
as every checkpoint form the engine loads:

  hf-safetensors          transformers' save_pretrained: config.json
                          (model_type glm) and model.safetensors
  hf-safetensors-sharded  the same, sharded, with model.safetensors.index.json
  hf-safetensors-bf16     the weights rounded to bfloat16, stored as BF16
  hf-bin                  save_pretrained(safe_serialization=False):
                          pytorch_model.bin
  hf-bin-sharded          the same, sharded, with pytorch_model.bin.index.json
  thudm-safetensors       THUDM's modeling_chatglm.py names and config.json
                          (model_type chatglm, fused query_key_value)
  thudm-bin               torch.save of THUDM's state dict, float32
  thudm-bin-fp16          the same in float16
  thudm-bin-bf16          the same in bfloat16
  thudm-bin-sharded       float32, one shard per layer group, with the index
                          THUDM's checkpoints ship
  thudm-bin-views         float32, with tensors saved as views into shared
                          storages (offsets and transposed strides)

Reference logits come from transformers itself (float32, eager attention)
for a few token sequences: one row without a mask, right-padded rows and
left-padded rows with attention masks and position ids. Weights stored in
float16 or bfloat16 get their own reference: the same model with its weights
rounded to that dtype, run in float32. Each reference is a raw little-endian
float32 file [rows, len, vocab] beside the checkpoints.

The weights are scaled so that argmaxes are not near-ties (see WEIGHT_STD):
the seed is the first one (counting up) whose top-1/top-2 logit margin at
every compared position is MARGIN_FACTOR times the largest change bfloat16
arithmetic makes to a logit (measured with transformers in bfloat16), so
that a bfloat16 engine must agree on every argmax. The manifest records
that change and how much removing attention or the MLP moves the logits.

OUT_DIR/manifest.json describes it all; nothing else is printed on success.
"""

import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import GlmConfig, GlmForCausalLM

LAYERS = 3
HIDDEN = 128
HEADS = 8
GROUPS = 2
HEAD_DIM = HIDDEN // HEADS
FFN = 176
VOCAB = 300
EPS = 1e-5
# GLM-4 writes rope_ratio into config.json; a ratio other than 1 checks
# that the engine multiplies it into the rotary base as THUDM's code does.
ROPE_RATIO = 5.0
ROPE_BASE = 10000.0 * ROPE_RATIO
PAD_ID = 0
EOS_ID = 2

# Random weights whose argmaxes are not near-ties: the output layer is a
# scaled copy of the embeddings (rows permuted) plus noise, and the blocks'
# projections are small enough that the current token decides the argmax by
# a margin of several logits, while attention and the MLP still move the
# logits by far more than bfloat16 rounding does (both are checked below).
WEIGHT_STD = 0.065
HEAD_COPY = 0.12
HEAD_NOISE = 0.1
FIRST_SEED = 1000
MAX_SEEDS = 50
# Every compared position's top-1/top-2 margin must exceed this many times
# the largest change bfloat16 arithmetic makes to a logit (measured with
# transformers in bfloat16), so an engine whose bfloat16 error is up to half
# of that on both logits still agrees on every argmax.
MARGIN_FACTOR = 8.0
# Removing attention or the MLP must move some logit by at least this many
# times that bfloat16 change, so that a tolerance of a few times it (the
# engine's bfloat16 test) notices a broken block.
EFFECT_FACTOR = 10.0


def make_model(seed):
    config = GlmConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=GROUPS, head_dim=HEAD_DIM, rms_norm_eps=EPS,
        rope_theta=ROPE_BASE, attention_bias=True, tie_word_embeddings=False,
        max_position_embeddings=512, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
        bos_token_id=None, attn_implementation="eager",
    )
    # transformers 4.46 rotates half of each head whatever the config says;
    # later releases and the engine read this field.
    config.partial_rotary_factor = 0.5
    model = GlmForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * noise)
            elif name == "model.embed_tokens.weight":
                p.copy_(noise)
            elif name != "lm_head.weight":  # projections and query/key/value biases
                p.copy_(WEIGHT_STD * noise)
        embed = model.model.embed_tokens.weight
        perm = torch.randperm(VOCAB, generator=gen)
        model.lm_head.weight.copy_(HEAD_COPY * embed[perm] + HEAD_NOISE * torch.randn(embed.shape, generator=gen))
    return model


def make_cases():
    """Token sequences: (name, token rows, mask rows, position rows)."""
    gen = torch.Generator().manual_seed(7)

    def tokens(n):
        return torch.randint(3, VOCAB, (n,), generator=gen).tolist()

    cases = []
    single = tokens(17)
    cases.append(("single", [single], [[1] * 17], [list(range(17))]))

    lengths = [23, 9, 14]
    width = max(lengths)
    rows, masks, positions = [], [], []
    for n in lengths:
        rows.append(tokens(n) + [PAD_ID] * (width - n))
        masks.append([1] * n + [0] * (width - n))
        positions.append(list(range(width)))
    cases.append(("right-padded", rows, masks, positions))

    lengths = [6, 20, 11]
    width = max(lengths)
    rows, masks, positions = [], [], []
    for n in lengths:
        pad = width - n
        rows.append([PAD_ID] * pad + tokens(n))
        masks.append([0] * pad + [1] * n)
        # as generate() numbers left-padded rows: 0 at the first real token
        positions.append([0] * pad + list(range(n)))
    cases.append(("left-padded", rows, masks, positions))
    return cases


def run_logits(model, case):
    _, rows, masks, positions = case
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor(rows),
            attention_mask=torch.tensor(masks),
            position_ids=torch.tensor(positions),
        )
    return out.logits.float()


def valid(logits, case):
    """The logits at real (unpadded) positions, [n, vocab]."""
    mask = torch.tensor(case[2], dtype=torch.bool)
    return logits[mask]


def min_margin(logits):
    top = torch.topk(logits, 2, dim=-1).values
    return float((top[:, 0] - top[:, 1]).min())


def rounded(model, dtype):
    """A float32 copy of model whose weights went through dtype."""
    twin = make_model(0)
    twin.load_state_dict({k: v.to(dtype).float() for k, v in model.state_dict().items()})
    return twin.eval()


def max_change(model, other, cases):
    """The largest difference between two models' compared logits."""
    worst = 0.0
    for case in cases:
        a = valid(run_logits(model, case), case)
        b = valid(run_logits(other, case), case).float()
        worst = max(worst, float((a - b).abs().max()))
    return worst


def copy_of(model):
    twin = make_model(0)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def without(model, block):
    """model with every layer's attention or MLP output zeroed."""
    twin = copy_of(model)
    with torch.no_grad():
        for layer in twin.model.layers:
            out = layer.self_attn.o_proj if block == "attention" else layer.mlp.down_proj
            out.weight.zero_()
    return twin


def choose_seed(cases):
    for seed in range(FIRST_SEED, FIRST_SEED + MAX_SEEDS):
        model = make_model(seed)
        deviation = max_change(model, copy_of(model).to(torch.bfloat16), cases)
        need = MARGIN_FACTOR * deviation
        margins = []
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            ref = model if dtype == torch.float32 else rounded(model, dtype)
            margins.append(min(min_margin(valid(run_logits(ref, c), c)) for c in cases))
        if min(margins) < need:
            continue
        effects = {block: max_change(model, without(model, block), cases) for block in ("attention", "mlp")}
        if min(effects.values()) < EFFECT_FACTOR * deviation:
            sys.exit(f"seed {seed}: removing a block changes the logits by only {effects}, "
                     f"not {EFFECT_FACTOR}x the bfloat16 change {deviation}: rescale the weights")
        return seed, model, deviation, effects
    sys.exit(f"no seed in [{FIRST_SEED}, {FIRST_SEED + MAX_SEEDS}) gives argmax margins of "
             f"{MARGIN_FACTOR}x the bfloat16 change: rescale the weights")


def thudm_state(model, dtype):
    """The weights under THUDM's modeling_chatglm.py names."""
    sd = {k: v.detach().to(dtype).clone() for k, v in model.state_dict().items()}
    out = {"transformer.embedding.word_embeddings.weight": sd["model.embed_tokens.weight"]}
    for i in range(LAYERS):
        hf, th = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        attn = hf + "self_attn."
        out[th + "input_layernorm.weight"] = sd[hf + "input_layernorm.weight"]
        # THUDM fuses the projections as [queries; keys; values] rows.
        out[th + "self_attention.query_key_value.weight"] = torch.cat(
            [sd[attn + "q_proj.weight"], sd[attn + "k_proj.weight"], sd[attn + "v_proj.weight"]])
        out[th + "self_attention.query_key_value.bias"] = torch.cat(
            [sd[attn + "q_proj.bias"], sd[attn + "k_proj.bias"], sd[attn + "v_proj.bias"]])
        out[th + "self_attention.dense.weight"] = sd[attn + "o_proj.weight"]
        out[th + "post_attention_layernorm.weight"] = sd[hf + "post_attention_layernorm.weight"]
        out[th + "mlp.dense_h_to_4h.weight"] = sd[hf + "mlp.gate_up_proj.weight"]
        out[th + "mlp.dense_4h_to_h.weight"] = sd[hf + "mlp.down_proj.weight"]
    out["transformer.encoder.final_layernorm.weight"] = sd["model.norm.weight"]
    out["transformer.output_layer.weight"] = sd["lm_head.weight"]
    # THUDM's checkpoints carry the rotary buffer (half of a head's
    # channels, as pairs); loaders recompute it.
    rot = HEAD_DIM // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))
    out["transformer.rotary_pos_emb.inv_freq"] = inv_freq.to(dtype)
    return out


def thudm_config(dtype_name):
    return {
        "_name_or_path": "emoflow/chatglm3-tiny-reference",
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": FFN,
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": HIDDEN,
        "kv_channels": HEAD_DIM,
        "layernorm_epsilon": EPS,
        "multi_query_attention": True,
        "multi_query_group_num": GROUPS,
        "num_attention_heads": HEADS,
        "num_layers": LAYERS,
        "original_rope": True,
        "padded_vocab_size": VOCAB,
        "post_layer_norm": True,
        "rmsnorm": True,
        "rope_ratio": ROPE_RATIO,
        "seq_length": 512,
        "use_cache": True,
        "torch_dtype": dtype_name,
        "tie_word_embeddings": False,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
    }


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def write_thudm(out, name, model, dtype, dtype_name, form):
    d = os.path.join(out, name)
    os.makedirs(d)
    write_json(os.path.join(d, "config.json"), thudm_config(dtype_name))
    sd = thudm_state(model, dtype)
    if form == "safetensors":
        save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        return 1
    if form == "bin":
        torch.save(sd, os.path.join(d, "pytorch_model.bin"))
        return 1
    if form == "bin-views":
        torch.save(as_views(sd), os.path.join(d, "pytorch_model.bin"))
        return 1
    # One shard per group of layers, the embeddings with the first and the
    # output layer with the last, as THUDM's sharded checkpoints are cut.
    shards = [{} for _ in range(LAYERS)]
    for k, v in sd.items():
        if ".layers." in k:
            shards[int(k.split(".layers.")[1].split(".")[0])][k] = v
        elif "output_layer" in k or "final_layernorm" in k:
            shards[-1][k] = v
        else:
            shards[0][k] = v
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, os.path.join(d, fname))
        weight_map.update({k: fname for k in shard})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    write_json(os.path.join(d, "pytorch_model.bin.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})
    return len(shards)


def as_views(sd):
    """The same tensors, each layer's saved as views into one storage: the
    fused query/key/value weight and bias and the dense weight share a flat
    buffer (storage offsets), and the dense weight is stored transposed
    (strides (1, rows))."""
    out = dict(sd)
    for i in range(LAYERS):
        p = f"transformer.encoder.layers.{i}.self_attention."
        qkv, bias, dense = sd[p + "query_key_value.weight"], sd[p + "query_key_value.bias"], sd[p + "dense.weight"]
        flat = torch.cat([qkv.reshape(-1), bias, dense.t().reshape(-1)])
        a, b = qkv.numel(), qkv.numel() + bias.numel()
        out[p + "query_key_value.weight"] = flat[:a].view(qkv.shape)
        out[p + "query_key_value.bias"] = flat[a:b]
        out[p + "dense.weight"] = flat[b:].view(dense.shape[1], dense.shape[0]).t()
        assert not out[p + "dense.weight"].is_contiguous()
    return out


def write_hf(out, name, model, safe, shard_size=None):
    d = os.path.join(out, name)
    kwargs = {"safe_serialization": safe}
    if shard_size:
        kwargs["max_shard_size"] = shard_size
    model.save_pretrained(d, **kwargs)
    index = os.path.join(d, ("model.safetensors" if safe else "pytorch_model.bin") + ".index.json")
    if not os.path.exists(index):
        return 1
    with open(index) as f:
        return len(set(json.load(f)["weight_map"].values()))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # reproducible float32 sums
    transformers.logging.set_verbosity_error()

    cases = make_cases()
    seed, model, deviation, effects = choose_seed(cases)

    refs = {"float32": model, "float16": rounded(model, torch.float16), "bfloat16": rounded(model, torch.bfloat16)}
    references = {}
    for dtype_name, ref in refs.items():
        files, margin = {}, float("inf")
        for case in cases:
            logits = run_logits(ref, case)
            margin = min(margin, min_margin(valid(logits, case)))
            fname = f"ref-{dtype_name}-{case[0]}.f32"
            logits.contiguous().numpy().astype("<f4").tofile(os.path.join(out, fname))
            files[case[0]] = fname
        references[dtype_name] = {"files": files, "min_margin": margin}

    shard = "400KB"  # a few shards of this tiny model
    variants = []

    def add(name, layout, form, stored, shards):
        variants.append({"name": name, "layout": layout, "format": form, "stored_dtype": stored, "shards": shards})

    add("hf-safetensors", "hf-glm", "safetensors", "float32", write_hf(out, "hf-safetensors", model, True))
    add("hf-safetensors-sharded", "hf-glm", "safetensors", "float32",
        write_hf(out, "hf-safetensors-sharded", model, True, shard))
    bf16 = rounded(model, torch.bfloat16).to(torch.bfloat16)
    add("hf-safetensors-bf16", "hf-glm", "safetensors", "bfloat16", write_hf(out, "hf-safetensors-bf16", bf16, True))
    add("hf-bin", "hf-glm", "bin", "float32", write_hf(out, "hf-bin", model, False))
    add("hf-bin-sharded", "hf-glm", "bin", "float32", write_hf(out, "hf-bin-sharded", model, False, shard))
    for name, dtype, stored, form in [
        ("thudm-safetensors", torch.float32, "float32", "safetensors"),
        ("thudm-bin", torch.float32, "float32", "bin"),
        ("thudm-bin-fp16", torch.float16, "float16", "bin"),
        ("thudm-bin-bf16", torch.bfloat16, "bfloat16", "bin"),
        ("thudm-bin-sharded", torch.float32, "float32", "bin-sharded"),
        ("thudm-bin-views", torch.float32, "float32", "bin-views"),
    ]:
        add(name, "thudm", "safetensors" if form == "safetensors" else "bin", stored,
            write_thudm(out, name, model, dtype, stored, form))

    write_json(os.path.join(out, "manifest.json"), {
        "tool": "tools/reference/glm_checkpoints.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "seed": seed,
        "config": {"layers": LAYERS, "hidden": HIDDEN, "heads": HEADS, "groups": GROUPS,
                   "head_dim": HEAD_DIM, "ffn": FFN, "vocab": VOCAB, "rope_base": ROPE_BASE},
        # transformers' own float32-to-bfloat16 change of a compared logit,
        # and what removing every layer's attention or MLP changes
        "bf16_max_logit_change": deviation,
        "block_logit_effects": effects,
        "cases": [{"name": n, "tokens": r, "mask": m, "positions": p} for n, r, m, p in cases],
        "references": references,
        "variants": variants,
    })


if __name__ == "__main__":
    main()
