package contract

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

func TestNormalizeText(t *testing.T) {
	for in, want := range map[string]string{
		"  Hello\t\tworld \n": "Hello world",
		"e\u0301t\u00e9":      "\u00e9t\u00e9", // decomposed é becomes composed
		"zero\u200bwidth":     "zerowidth",
		"I AM FINE!!!":        "I AM FINE!!!",
		"\x00\x07bell":        "bell",
		" \n\t ":              "",
		"e\u200b\u0301":       "\u00e9", // composed across a removed format character
	} {
		if got := NormalizeText(in); got != want {
			t.Errorf("NormalizeText(%q) = %q, want %q", in, got, want)
		}
	}
}

const valid = `{"id":"m1","conversation_id":"c1","tenant":"acme","speaker_role":"customer","text":" hi  there ","sent_at":"2026-01-02T03:04:05Z","language":"en"}`

func TestDecodeValidMessage(t *testing.T) {
	m, err := DecodeChatMessage([]byte(valid), DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	if m.Text != "hi there" || m.ID != "m1" || m.SentAt.Year() != 2026 {
		t.Fatalf("decoded %+v", m)
	}
}

func TestDecodeRejectsWithReasons(t *testing.T) {
	for name, tc := range map[string]struct {
		raw  string
		lim  Limits
		want Reason
	}{
		"too large":      {valid, Limits{MaxMessageBytes: 10}, ReasonTooLarge},
		"not utf-8":      {"{\"id\":\"\xff\"}", DefaultLimits, ReasonInvalidUTF8},
		"not json":       {`{"id": `, DefaultLimits, ReasonMalformedJSON},
		"trailing":       {valid + ` {}`, DefaultLimits, ReasonMalformedJSON},
		"wrong type":     {strings.Replace(valid, `"tenant":"acme"`, `"tenant":7`, 1), DefaultLimits, ReasonSchema},
		"bad time":       {strings.Replace(valid, `2026-01-02T03:04:05Z`, `yesterday`, 1), DefaultLimits, ReasonSchema},
		"numeric time":   {strings.Replace(valid, `"2026-01-02T03:04:05Z"`, `42`, 1), DefaultLimits, ReasonSchema},
		"missing id":     {strings.Replace(valid, `"id":"m1",`, ``, 1), DefaultLimits, ReasonSchema},
		"bad role":       {strings.Replace(valid, `customer`, `robot`, 1), DefaultLimits, ReasonSchema},
		"bad language":   {strings.Replace(valid, `"en"`, `"english!"`, 1), DefaultLimits, ReasonSchema},
		"bad adapter":    {strings.Replace(valid, `"language":"en"`, `"language":"en","adapter":"a@@b"`, 1), DefaultLimits, ReasonSchema},
		"empty text":     {strings.Replace(valid, ` hi  there `, `  \u200b\t `, 1), DefaultLimits, ReasonEmptyText},
		"text too long":  {valid, Limits{MaxTextBytes: 3}, ReasonTextTooLong},
		"missing sentAt": {strings.Replace(valid, `"sent_at":"2026-01-02T03:04:05Z",`, ``, 1), DefaultLimits, ReasonSchema},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := DecodeChatMessage([]byte(tc.raw), tc.lim)
			var inv *InvalidError
			if !errors.As(err, &inv) || inv.Reason != tc.want {
				t.Fatalf("err = %v, want reason %s", err, tc.want)
			}
		})
	}
}

// FuzzDecodeChatMessage feeds arbitrary Kafka values to the chat message
// decoder. A refusal is an *InvalidError with a known reason and a detail
// (too_large exactly when over the limit); an accepted message has a
// normalised text within the limit, re-encodes to a value that decodes to
// the same message, and cut short by its last byte is refused.
func FuzzDecodeChatMessage(f *testing.F) {
	f.Add([]byte(valid))
	f.Add([]byte(`{"id":1}`))
	lim := Limits{MaxTextBytes: 64, MaxMessageBytes: 1024}
	reasons := []Reason{ReasonTooLarge, ReasonInvalidUTF8, ReasonMalformedJSON, ReasonSchema, ReasonEmptyText, ReasonTextTooLong}
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := DecodeChatMessage(raw, lim)
		if err != nil {
			var inv *InvalidError
			if !errors.As(err, &inv) || !slices.Contains(reasons, inv.Reason) || inv.Detail == "" {
				t.Fatalf("error %v (%T) is not an InvalidError with a known reason and a detail", err, err)
			}
			if (len(raw) > lim.MaxMessageBytes) != (inv.Reason == ReasonTooLarge) {
				t.Fatalf("%d bytes refused as %s (limit %d)", len(raw), inv.Reason, lim.MaxMessageBytes)
			}
			return
		}
		if m.Text == "" || m.Text != NormalizeText(m.Text) || len(m.Text) > lim.MaxTextBytes {
			t.Fatalf("accepted a text that is empty, not normalised or over %d bytes: %q", lim.MaxTextBytes, m.Text)
		}
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := DecodeChatMessage(again, Limits{})
		if err != nil {
			t.Fatalf("re-encoded message %s: %v", again, err)
		}
		if !m2.SentAt.Equal(m.SentAt) {
			t.Fatalf("sent_at %v re-decoded as %v", m.SentAt, m2.SentAt)
		}
		m2.SentAt = m.SentAt
		if m2 != m {
			t.Fatalf("re-encoded message decodes to another:\n%+v\n%+v", m, m2)
		}
		trimmed := bytes.TrimSpace(raw)
		if _, err := DecodeChatMessage(trimmed[:len(trimmed)-1], lim); err == nil {
			t.Fatalf("accepted %q cut by its last byte", trimmed)
		}
	})
}

// FuzzNormalizeText checks what the cache relies on: normalising is
// idempotent, and its result is NFC, free of control and format
// characters, with single spaces between words and none at the ends.
func FuzzNormalizeText(f *testing.F) {
	for _, s := range []string{"  Hello\t\tworld \n", "e\u0301t\u00e9", "zero\u200bwidth", "\x00\x07bell", "a\xffb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n := NormalizeText(s)
		if again := NormalizeText(n); again != n {
			t.Fatalf("NormalizeText(%+q) = %+q, but normalised again %+q", s, n, again)
		}
		if !norm.NFC.IsNormalString(n) || !utf8.ValidString(n) {
			t.Fatalf("NormalizeText(%+q) = %+q is not NFC UTF-8", s, n)
		}
		if strings.HasPrefix(n, " ") || strings.HasSuffix(n, " ") || strings.Contains(n, "  ") {
			t.Fatalf("NormalizeText(%+q) = %+q has stray spaces", s, n)
		}
		for _, r := range n {
			if r != ' ' && (unicode.IsSpace(r) || unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == utf8.RuneError) {
				t.Fatalf("NormalizeText(%+q) = %+q keeps %U", s, n, r)
			}
		}
	})
}
