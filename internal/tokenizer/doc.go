// Package tokenizer owns the text tokenizers of the ChatGLM model family, in
// pure Go and id-for-id equal to the Python libraries the models ship with:
//
//   - a SentencePiece reader and encoder/decoder (BPE and Unigram models, byte
//     fallback, user-defined symbols, the identity and precompiled-charsmap
//     normalizers), equal to sentencepiece's EncodeAsIds and DecodeIds;
//   - a tiktoken-format byte-level BPE with GLM-4's pre-tokenizer;
//   - the family wrappers of THUDM's tokenization_chatglm.py: ChatGLM-6B
//     (ice_text.model), ChatGLM2-6B and ChatGLM3-6B (tokenizer.model) and
//     GLM-4 (tiktoken tokenizer.model), with their special tokens, the
//     [gMASK]/sop prefix or suffix and single-turn chat prompts.
//
// Load picks the family from a model folder. Every tokenizer is safe for
// concurrent use once loaded.
package tokenizer
