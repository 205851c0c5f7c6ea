package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// glm4PieceLen returns the byte length of the first pre-tokenizer piece of
// s (s must not be empty). It is a hand-written matcher for GLM-4's
// pattern, evaluated the way a backtracking engine does (first alternative
// that matches wins, quantifiers greedy):
//
//	(?i:'s|'t|'re|'ve|'m|'ll|'d)
//	|[^\r\n\p{L}\p{N}]?\p{L}+
//	|\p{N}{1,3}
//	| ?[^\s\p{L}\p{N}]+[\r\n]*
//	|\s*[\r\n]+
//	|\s+(?!\S)
//	|\s+
//
// Go's regexp has no look-ahead, and a direct matcher is faster anyway.
// Every position matches one of the alternatives, so pieces tile s.
func glm4PieceLen(s string) int {
	r, size := utf8.DecodeRuneInString(s)

	// 's 't 're 've 'm 'll 'd, case-insensitively.
	if r == '\'' {
		if n := contractionLen(s[1:]); n > 0 {
			return 1 + n
		}
	}

	// An optional non-letter, non-digit, non-newline, then letters.
	if unicode.IsLetter(r) {
		return size + runLen(s[size:], unicode.IsLetter, -1)
	}
	if r != '\r' && r != '\n' && !unicode.IsNumber(r) {
		if r2, size2 := utf8.DecodeRuneInString(s[size:]); size2 > 0 && unicode.IsLetter(r2) {
			return size + size2 + runLen(s[size+size2:], unicode.IsLetter, -1)
		}
	}

	// One to three digits.
	if unicode.IsNumber(r) {
		return size + runLen(s[size:], unicode.IsNumber, 2)
	}

	// An optional space, symbols, then newlines.
	if r == ' ' {
		if r2, size2 := utf8.DecodeRuneInString(s[1:]); size2 > 0 && isGLM4Symbol(r2) {
			return 1 + symbolsThenNewlines(s[1:])
		}
	}
	if isGLM4Symbol(r) {
		return symbolsThenNewlines(s)
	}

	// r is white space from here on.
	run, lastNewline, lastSize := 0, -1, 0
	for run < len(s) {
		c, n := utf8.DecodeRuneInString(s[run:])
		if !unicode.IsSpace(c) {
			break
		}
		if c == '\r' || c == '\n' {
			lastNewline = run
		}
		run, lastSize = run+n, n
	}
	// \s*[\r\n]+: the greedy \s* backs off to the last newline of the run.
	if lastNewline >= 0 {
		return lastNewline + 1
	}
	// \s+(?!\S): all of a run that ends the text, else all but its last
	// character; \s+ for a single space before non-space.
	if run < len(s) && run > lastSize {
		return run - lastSize
	}
	return run
}

// isGLM4Symbol reports whether r is in [^\s\p{L}\p{N}].
func isGLM4Symbol(r rune) bool {
	return !unicode.IsSpace(r) && !unicode.IsLetter(r) && !unicode.IsNumber(r)
}

// runLen is the byte length of the leading runes of s that satisfy ok, at
// most limit of them (no limit when limit < 0).
func runLen(s string, ok func(rune) bool, limit int) int {
	n := 0
	for count := 0; n < len(s) && count != limit; count++ {
		r, size := utf8.DecodeRuneInString(s[n:])
		if !ok(r) {
			break
		}
		n += size
	}
	return n
}

// symbolsThenNewlines matches [^\s\p{L}\p{N}]+[\r\n]* at the start of s.
func symbolsThenNewlines(s string) int {
	n := runLen(s, isGLM4Symbol, -1)
	for n < len(s) && (s[n] == '\r' || s[n] == '\n') {
		n++
	}
	return n
}

// contractionLen matches s|t|re|ve|m|ll|d case-insensitively (Unicode
// simple case folding, so U+017F LONG S counts as s) at the start of s and
// returns the matched length, or 0.
func contractionLen(s string) int {
	for _, suffix := range [...]string{"s", "t", "re", "ve", "m", "ll", "d"} {
		n := 0
		matched := true
		for _, want := range suffix {
			r, size := utf8.DecodeRuneInString(s[n:])
			if size == 0 || !foldsTo(r, want) {
				matched = false
				break
			}
			n += size
		}
		if matched {
			return n
		}
	}
	return 0
}

// foldsTo reports whether r and want are equal under simple case folding.
func foldsTo(r, want rune) bool {
	if r == want {
		return true
	}
	for f := unicode.SimpleFold(want); f != want; f = unicode.SimpleFold(f) {
		if f == r {
			return true
		}
	}
	return false
}
