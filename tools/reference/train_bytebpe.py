"""Trains a small byte-level BPE vocabulary in tiktoken's file format.

Usage: train_bytebpe.py CORPUS.txt OUT.tiktoken MERGES

internal/tokenizer's tests use it to make a GLM-4-style tokenizer.model (the
real one is not available to them). Text is split with GLM-4's pre-tokenizer
pattern and merges are learnt per piece, the way tiktoken-style vocabularies
are built: every token is the concatenation of two earlier tokens, so the
rank order is the merge order. The 256 single bytes get ranks 0..255 in a
fixed shuffled order, so that a rank is never simply a byte value.
Deterministic for a given corpus.
"""

import base64
import collections
import heapq
import random
import sys

import regex

from tokenize_ref import GLM4_PATTERN


def train(lines, merges):
    pattern = regex.compile(GLM4_PATTERN)
    counts = collections.Counter()
    for line in lines:
        counts.update(pattern.findall(line))

    byte_order = list(range(256))
    random.Random(0).shuffle(byte_order)
    vocab = [bytes([b]) for b in byte_order]          # rank -> token bytes
    rank_of = {tok: r for r, tok in enumerate(vocab)}  # token bytes -> rank

    words = []  # [symbol ranks, frequency]
    for piece, freq in counts.items():
        words.append([[rank_of[bytes([b])] for b in piece.encode("utf-8")], freq])

    pair_freq = collections.Counter()
    where = collections.defaultdict(set)  # pair -> indexes of words holding it
    for w, (syms, freq) in enumerate(words):
        for pair in zip(syms, syms[1:]):
            pair_freq[pair] += freq
            where[pair].add(w)

    # Max-heap of (frequency, pair) with lazy updates: an entry whose count
    # is out of date is re-queued with the current count when it surfaces.
    # Ties go to the lowest ranks, for determinism.
    heap = [(-f, p) for p, f in pair_freq.items()]
    heapq.heapify(heap)
    done = 0
    while done < merges and heap:
        neg, best = heapq.heappop(heap)
        current = pair_freq.get(best, 0)
        if current != -neg:
            if current > 0:
                heapq.heappush(heap, (-current, best))
            continue
        if current < 2:
            break
        done += 1
        merged = vocab[best[0]] + vocab[best[1]]
        new = rank_of.get(merged)
        if new is None:
            new = len(vocab)
            vocab.append(merged)
            rank_of[merged] = new
        for w in list(where[best]):
            syms, freq = words[w]
            for pair in zip(syms, syms[1:]):
                pair_freq[pair] -= freq
                if pair_freq[pair] <= 0:
                    del pair_freq[pair]
                where[pair].discard(w)
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w][0] = out
            for pair in zip(out, out[1:]):
                pair_freq[pair] += freq
                where[pair].add(w)
                heapq.heappush(heap, (-pair_freq[pair], pair))
    return vocab


def main():
    corpus, out, merges = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(corpus, encoding="utf-8") as f:
        lines = f.read().splitlines()
    vocab = train(lines, merges)
    with open(out, "w", encoding="ascii") as f:
        for rank, token in enumerate(vocab):
            f.write(f"{base64.b64encode(token).decode('ascii')} {rank}\n")


if __name__ == "__main__":
    main()
