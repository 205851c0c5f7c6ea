package tokenizer

import (
	"strings"
	"testing"
)

// benchModels loads the parity tests' generated models (training them on
// first use).
func benchModels(b *testing.B) (corpus []string, bpe, unigram *SentencePiece, bytes *ByteBPE) {
	b.Helper()
	env := newReferenceEnv(b)
	corpus = corpusLines(b)
	path, hash := env.trainingCorpus(b, corpus)
	var err error
	for _, r := range spmRecipes() {
		var dst **SentencePiece
		switch r.name {
		case "bpe":
			dst = &bpe
		case "unigram-nfkc":
			dst = &unigram
		default:
			continue
		}
		if *dst, err = LoadSentencePiece(env.spmModel(b, path, hash, r)); err != nil {
			b.Fatal(err)
		}
	}
	if bytes, err = LoadByteBPE(env.byteBPEModel(b, path, hash)); err != nil {
		b.Fatal(err)
	}
	return corpus, bpe, unigram, bytes
}

// BenchmarkEncode encodes the data sets' lines one by one (reporting bytes
// per second) and one long text, which shows that merging is not quadratic.
func BenchmarkEncode(b *testing.B) {
	corpus, bpe, unigram, bytes := benchModels(b)
	lines := corpus[:20000]
	size := 0
	for _, l := range lines {
		size += len(l)
	}
	long := strings.Join(corpus[:3000], " ") // about 200 KB
	for _, enc := range []struct {
		name   string
		encode func(string) []int
	}{
		{"sentencepiece-bpe", bpe.Encode},
		{"sentencepiece-unigram", unigram.Encode},
		{"bytebpe-glm4", bytes.Encode},
	} {
		b.Run(enc.name+"/lines", func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				for _, l := range lines {
					enc.encode(l)
				}
			}
		})
		b.Run(enc.name+"/long", func(b *testing.B) {
			b.SetBytes(int64(len(long)))
			for b.Loop() {
				enc.encode(long)
			}
		})
	}
}

// BenchmarkDecode decodes the ids of the data sets' lines.
func BenchmarkDecode(b *testing.B) {
	corpus, bpe, _, bytes := benchModels(b)
	lines := corpus[:20000]
	for _, dec := range []struct {
		name   string
		encode func(string) []int
		decode func([]int) (string, error)
	}{
		{"sentencepiece-bpe", bpe.Encode, bpe.Decode},
		{"bytebpe-glm4", bytes.Encode, bytes.Decode},
	} {
		ids := make([][]int, len(lines))
		for i, l := range lines {
			ids[i] = dec.encode(l)
		}
		b.Run(dec.name, func(b *testing.B) {
			for b.Loop() {
				for _, x := range ids {
					if _, err := dec.decode(x); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
