"""Reference tokenizations for internal/tokenizer's parity tests.

Usage: tokenize_ref.py REQUEST.json RESPONSE.json

The request holds jobs; each names a tokenizer kind and a vocabulary file and
lists texts to encode, id lists to decode and chat queries:

  {"jobs": [{"name": "bpe", "kind": "sentencepiece", "model": "/x.model",
             "texts": ["..."], "decode": [[1, 2]], "chat": ["..."],
             "image_tokens": 0, "encode_special": false}]}

Kinds: "sentencepiece" (the sentencepiece library itself), "tiktoken-glm4"
(tiktoken with GLM-4's pattern), and the ChatGLM family wrappers
"chatglm-6b", "chatglm2-6b", "chatglm3-6b" and "glm-4", which restate the
logic of THUDM's tokenization_chatglm.py (text preprocessing, special
tokens, prompt building, Hugging Face style decoding) on top of those
libraries, since transformers and the real tokenizer files are not available
to the tests.

The response maps each job name to {"encode": [[ids]], "decode_encoded":
[text], "decode": [text], "chat": [[ids]], "meta": {...}}, where
decode_encoded[i] decodes encode[i], or is null when that gives back texts[i]
(which keeps the answer small).
"""

import base64
import json
import re
import sys

import sentencepiece as spm
import tiktoken

GLM4_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GLM4_SPECIAL = [
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
    "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
]
CHATGLM2_SPECIAL = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]
CHATGLM3_ROLES = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
CHATGLM6B_SPECIAL = ["[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>"]


class Tokenizer:
    """Per-item encode and decode; subclasses may batch."""

    def encode_many(self, texts):
        return [self.encode(t) for t in texts]

    def decode_many(self, id_lists):
        return [self.decode(ids) for ids in id_lists]


class SentencePiece(Tokenizer):
    """The sentencepiece library as is."""

    def __init__(self, job):
        self.sp = spm.SentencePieceProcessor(model_file=job["model"])

    def encode(self, text):
        return self.sp.encode(text)

    def decode(self, ids):
        return self.sp.decode(ids)

    def encode_many(self, texts):
        return self.sp.encode(texts, num_threads=2)

    def decode_many(self, id_lists):
        return self.sp.decode(id_lists, num_threads=2)

    def meta(self):
        sp = self.sp
        kinds = []
        for i in range(sp.get_piece_size()):
            if sp.is_control(i):
                kind = "control"
            elif sp.is_unknown(i):
                kind = "unknown"
            elif sp.is_byte(i):
                kind = "byte"
            elif sp.is_unused(i):
                kind = "unused"
            else:
                kind = "normal"  # NORMAL or USER_DEFINED: the API cannot tell
            kinds.append([sp.id_to_piece(i), kind, sp.get_score(i)])
        return {"size": sp.get_piece_size(), "unk": sp.unk_id(), "bos": sp.bos_id(),
                "eos": sp.eos_id(), "pad": sp.pad_id(), "pieces": kinds}


class ChatGLM6B(Tokenizer):
    """THUDM's ChatGLM-6B SPTokenizer: whitespace preprocessing, ids offset by
    num_image_tokens, [gMASK] <sop> appended."""

    def __init__(self, job):
        self.sp = spm.SentencePieceProcessor(model_file=job["model"])
        self.offset = job.get("image_tokens", 20000)
        self.special = {name: self.sp.piece_to_id(name) + self.offset for name in CHATGLM6B_SPECIAL}

    @staticmethod
    def preprocess(text):
        text = text.replace("\n", "<n>")
        text = text.replace("\t", "<|tab|>")
        if "  " in text:  # (only saves time: the loop would change nothing)
            for i in range(80, 1, -1):
                text = text.replace(" " * i, f"<|blank_{i}|>")
        return text

    @staticmethod
    def postprocess(text):
        text = text.replace("<n>", "\n")
        text = text.replace("<|tab|>", "\t")
        if "<|blank_" in text:  # (only saves time: the loop would change nothing)
            for i in range(2, 81):
                text = text.replace(f"<|blank_{i}|>", " " * i)
        return text

    def encode(self, text):
        return [i + self.offset for i in self.sp.encode(self.preprocess(text))]

    def decode(self, ids):
        # Image-token ids are dropped (SPTokenizer.decode); special tokens
        # decode as empty pieces (skip_special_tokens).
        special = set(self.special.values())
        pieces = []
        for i in ids:
            if i < self.offset:
                continue
            pieces.append("" if i in special else self.sp.id_to_piece(i - self.offset))
        return self.postprocess(self.sp.decode_pieces(pieces))

    def chat(self, query):
        # chat() with no history: the prompt is the query itself.
        return self.encode(query) + [self.special["[gMASK]"], self.special["<sop>"]]

    def meta(self):
        return {"size": self.offset + self.sp.get_piece_size(), "special": self.special}


class ChatGLM23(Tokenizer):
    """THUDM's ChatGLM2/ChatGLM3 tokenizer: special tokens numbered after the
    SentencePiece vocabulary, [gMASK] sop prefix, Hugging Face decoding in
    which special tokens, <s>, </s> and <pad> (= <unk>) become empty pieces."""

    def __init__(self, job, roles):
        self.sp = spm.SentencePieceProcessor(model_file=job["model"])
        self.roles = roles
        n = self.sp.vocab_size()
        names = CHATGLM2_SPECIAL + (CHATGLM3_ROLES if roles else [])
        self.special = {name: n + i for i, name in enumerate(names)}
        self.encode_special = job.get("encode_special", False)
        self.hidden = {self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()}

    def encode(self, text):
        if not (self.roles and self.encode_special):
            return self.sp.encode(text)
        ids, last = [], 0
        expr = "|".join(re.escape(r) for r in CHATGLM3_ROLES)
        for m in re.finditer(expr, text):
            if last < m.start():
                ids += self.sp.encode(text[last:m.start()])
            ids.append(self.special[m.group(0)])
            last = m.end()
        if last < len(text):
            ids += self.sp.encode(text[last:])
        return ids

    def decode(self, ids):
        special = set(self.special.values())
        pieces = ["" if i in special or i in self.hidden else self.sp.id_to_piece(i) for i in ids]
        return self.sp.decode_pieces(pieces)

    def chat(self, query):
        prefix = [self.special["[gMASK]"], self.special["sop"]]
        if not self.roles:
            return prefix + self.sp.encode("[Round {}]\n\n问：{}\n\n答：".format(1, query))
        return (prefix + [self.special["<|user|>"]] + self.sp.encode("" + "\n")
                + self.sp.encode(query) + [self.special["<|assistant|>"]])

    def meta(self):
        return {"size": self.sp.vocab_size() + len(self.special), "special": self.special}


def load_ranks(path):
    ranks = {}
    with open(path, "rb") as f:
        for line in f.read().splitlines():
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


class TiktokenGLM4(Tokenizer):
    """tiktoken with GLM-4's pre-tokenizer pattern and no special tokens."""

    def __init__(self, job):
        self.ranks = load_ranks(job["model"])
        self.enc = tiktoken.Encoding(name="glm4-test", pat_str=GLM4_PATTERN,
                                     mergeable_ranks=self.ranks, special_tokens={})

    def encode(self, text):
        return self.enc.encode(text)

    def decode(self, ids):
        return self.enc.decode(ids)

    def meta(self):
        return {"size": len(self.ranks)}


class GLM4(TiktokenGLM4):
    """THUDM's ChatGLM4Tokenizer: special tokens after the ranks, [gMASK] <sop>
    prefix, build_single_message for chat, skip_special_tokens decoding."""

    def __init__(self, job):
        super().__init__(job)
        n = len(self.ranks)
        self.special = {name: n + i for i, name in enumerate(GLM4_SPECIAL)}
        self.encode_special = job.get("encode_special", False)

    def encode(self, text):
        if not self.encode_special:
            return self.enc.encode(text)
        ids, last = [], 0
        expr = "|".join(re.escape(s) for s in GLM4_SPECIAL)
        for m in re.finditer(expr, text):
            if last < m.start():
                ids += self.enc.encode(text[last:m.start()])
            ids.append(self.special[m.group(0)])
            last = m.end()
        if last < len(text):
            ids += self.enc.encode(text[last:])
        return ids

    def decode(self, ids):
        special = set(self.special.values())
        return self.enc.decode([i for i in ids if i not in special])

    def chat(self, query):
        return ([self.special["[gMASK]"], self.special["<sop>"], self.special["<|user|>"]]
                + self.enc.encode("" + "\n", disallowed_special=())
                + self.enc.encode(query, disallowed_special=()) + [self.special["<|assistant|>"]])

    def meta(self):
        return {"size": len(self.ranks) + len(self.special), "special": self.special}


KINDS = {
    "sentencepiece": SentencePiece,
    "chatglm-6b": ChatGLM6B,
    "chatglm2-6b": lambda job: ChatGLM23(job, roles=False),
    "chatglm3-6b": lambda job: ChatGLM23(job, roles=True),
    "tiktoken-glm4": TiktokenGLM4,
    "glm-4": GLM4,
}


def run(job):
    tok = KINDS[job["kind"]](job)
    texts = job.get("texts") or []
    encoded = tok.encode_many(texts)
    decoded = tok.decode_many(encoded)
    out = {
        "encode": encoded,
        "decode_encoded": [None if d == t else d for d, t in zip(decoded, texts)],
        "decode": tok.decode_many(job.get("decode") or []),
        "meta": tok.meta(),
    }
    if job.get("chat"):
        out["chat"] = [tok.chat(q) for q in job["chat"]]
    return out


def main():
    request_path, response_path = sys.argv[1], sys.argv[2]
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    response = {job["name"]: run(job) for job in request["jobs"]}
    with open(response_path, "w", encoding="utf-8") as f:
        json.dump(response, f, ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    main()
