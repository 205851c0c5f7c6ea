"""Writes the engine benchmark's model as chatglm.cpp GGML files.

Usage: to_ggml.py --model DIR --out DIR [--types f32,f16,q8_0,q4_0,q4_1,q5_0,q5_1]

DIR holds the benchmark model as emoflow writes it (internal/benchmodel):
config.json (THUDM ChatGLM3 keys), model.safetensors (THUDM tensor names,
float32) and tokenizer.model (SentencePiece). It is not loadable with
transformers' AutoModel (no remote code), so chatglm_cpp.convert cannot
read it; this writes the same file layout chatglm.cpp 0.4.2 reads
(Pipeline::Pipeline, ModelLoader::read_state_dict): "ggml", model type 3
(ChatGLM3), config record version 2, the SentencePiece model proto, then
every tensor as name, shape, ggml type and data 16-byte aligned. Matrices
get the requested weight type; norms and the query/key/value bias stay
float32, as chatglm.cpp's own converter does. The quantizers follow ggml's
reference ones (ggml-quants.c quantize_row_*_reference), block by block.

One file per type, <out>/chatglm3-bench-<type>.bin; an existing file newer
than the model is kept.
"""

import argparse
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8}
BLOCK = 32  # every quantized type's block
ALIGN = 16
MODEL_TYPE_CHATGLM3 = 3
MAX_LENGTH = 2048  # KV cache length; the workload's prompts are far shorter


def _halves(x):
    return x.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _blocks(w):
    assert w.shape[-1] % BLOCK == 0, "row length must be a multiple of 32"
    return w.reshape(-1, BLOCK).astype(np.float32)


def q8_0(w):
    b = _blocks(w)
    amax = np.abs(b).max(axis=1, keepdims=True)
    d = amax / 127
    inv = np.divide(1, d, out=np.zeros_like(d), where=d != 0)
    x = b * inv
    q = (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int8)  # C roundf: halves away from zero
    return np.concatenate([_halves(d), q.view(np.uint8)], axis=1)


def _signed_scale(b, levels):
    """d and 1/d of ggml's q4_0/q5_0: the block's value of largest magnitude maps to -levels."""
    idx = np.abs(b).argmax(axis=1)
    mx = b[np.arange(len(b)), idx][:, None]
    d = mx / -levels
    inv = np.divide(1, d, out=np.zeros_like(d), where=d != 0)
    return d, inv


def _min_scale(b, levels):
    lo, hi = b.min(axis=1, keepdims=True), b.max(axis=1, keepdims=True)
    d = (hi - lo) / levels
    inv = np.divide(1, d, out=np.zeros_like(d), where=d != 0)
    return d, inv, lo


def _nibbles(q):
    """ggml's packing: byte j holds element j (low nibble) and j+16 (high)."""
    q = q.astype(np.uint8)
    return (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)


def _high_bits(q):
    """bit 4 of the 32 elements as one little-endian uint32 (q5 types)."""
    bits = ((q.astype(np.uint32) >> 4) & 1) << np.arange(32, dtype=np.uint32)
    return bits.sum(axis=1, dtype=np.uint32).reshape(-1, 1).view(np.uint8)


def q4_0(w):
    b = _blocks(w)
    d, inv = _signed_scale(b, 8)
    q = np.minimum(15, np.trunc(b * inv + 8.5)).astype(np.int32)
    return np.concatenate([_halves(d), _nibbles(q)], axis=1)


def q4_1(w):
    b = _blocks(w)
    d, inv, lo = _min_scale(b, 15)
    q = np.minimum(15, np.trunc((b - lo) * inv + 0.5)).astype(np.int32)
    return np.concatenate([_halves(d), _halves(lo), _nibbles(q)], axis=1)


def q5_0(w):
    b = _blocks(w)
    d, inv = _signed_scale(b, 16)
    q = np.minimum(31, np.trunc(b * inv + 16.5)).astype(np.int32)
    return np.concatenate([_halves(d), _high_bits(q), _nibbles(q)], axis=1)


def q5_1(w):
    b = _blocks(w)
    d, inv, lo = _min_scale(b, 31)
    q = np.minimum(31, np.trunc((b - lo) * inv + 0.5)).astype(np.int32)
    return np.concatenate([_halves(d), _halves(lo), _high_bits(q), _nibbles(q)], axis=1)


ENCODE = {
    "f32": lambda w: w.astype(np.float32),
    "f16": lambda w: w.astype(np.float16),
    "q8_0": q8_0, "q4_0": q4_0, "q4_1": q4_1, "q5_0": q5_0, "q5_1": q5_1,
}


def write_tensor(f, name, w, kind):
    raw = name.encode()
    f.write(struct.pack("i", len(raw)) + raw)
    f.write(struct.pack("i" * (2 + w.ndim), w.ndim, *w.shape, GGML_TYPES[kind]))
    f.seek((f.tell() + ALIGN - 1) // ALIGN * ALIGN)
    f.write(np.ascontiguousarray(ENCODE[kind](w)).tobytes())


def write_config(f, cfg, kind):
    """The config version (2), then ModelConfigRecordV2 (chatglm.h)."""
    checks = {"add_bias_linear": False, "add_qkv_bias": True, "multi_query_attention": True,
              "apply_residual_connection_post_layernorm": False, "original_rope": True,
              "post_layer_norm": True, "rmsnorm": True}
    for key, want in checks.items():
        if cfg.get(key) != want:
            raise ValueError(f"config.json: chatglm.cpp's ChatGLM3 needs {key}={want}, got {cfg.get(key)}")
    if cfg["kv_channels"] * cfg["num_attention_heads"] != cfg["hidden_size"]:
        raise ValueError("config.json: kv_channels * num_attention_heads must equal hidden_size")
    eos = cfg.get("eos_token_id", 2)
    eos = eos[0] if isinstance(eos, list) else eos
    f.write(struct.pack("iiiiiiiififiii", 2, GGML_TYPES[kind], cfg["padded_vocab_size"], cfg["hidden_size"],
                        cfg["num_attention_heads"], cfg["multi_query_group_num"], cfg["num_layers"],
                        cfg["ffn_hidden_size"], cfg["layernorm_epsilon"], 0,
                        10000.0 * cfg.get("rope_ratio", 1), min(cfg["seq_length"], MAX_LENGTH), eos,
                        cfg.get("pad_token_id", 0)))


def convert(model_dir, path, kind):
    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    weights = load_file(str(model_dir / "model.safetensors"))
    proto = (model_dir / "tokenizer.model").read_bytes()
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(b"ggml" + struct.pack("i", MODEL_TYPE_CHATGLM3))
        write_config(f, cfg, kind)
        f.write(struct.pack("i", len(proto)) + proto)
        names = ["transformer.embedding.word_embeddings.weight"]
        for i in range(cfg["num_layers"]):
            p = f"transformer.encoder.layers.{i}."
            names += [p + n for n in ("input_layernorm.weight", "self_attention.query_key_value.weight",
                                      "self_attention.query_key_value.bias", "self_attention.dense.weight",
                                      "post_attention_layernorm.weight", "mlp.dense_h_to_4h.weight",
                                      "mlp.dense_4h_to_h.weight")]
        names += ["transformer.encoder.final_layernorm.weight", "transformer.output_layer.weight"]
        for name in names:
            if name not in weights:
                raise ValueError(f"{model_dir}/model.safetensors: no tensor {name}")
            w = weights[name].astype(np.float32)
            write_tensor(f, name, w, kind if w.ndim == 2 else "f32")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--types", default=",".join(GGML_TYPES))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = max((Path(args.model) / n).stat().st_mtime for n in ("config.json", "model.safetensors", "tokenizer.model"))
    for kind in args.types.split(","):
        if kind not in GGML_TYPES:
            sys.exit(f"to_ggml.py: unknown weight type {kind!r} (want one of {', '.join(GGML_TYPES)})")
        path = out / f"chatglm3-bench-{kind}.bin"
        if path.exists() and path.stat().st_mtime >= stamp:
            continue
        convert(args.model, path, kind)
        print(f"to_ggml.py: wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
