package contract

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalizeText(t *testing.T) {
	for in, want := range map[string]string{
		"  Hello\t\tworld \n": "Hello world",
		"e\u0301t\u00e9":      "\u00e9t\u00e9", // decomposed é becomes composed
		"zero\u200bwidth":     "zerowidth",
		"I AM FINE!!!":        "I AM FINE!!!",
		"\x00\x07bell":        "bell",
		" \n\t ":              "",
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

func FuzzDecodeChatMessage(f *testing.F) {
	f.Add([]byte(valid))
	f.Add([]byte(`{"id":1}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := DecodeChatMessage(raw, DefaultLimits)
		if err == nil && (m.Text == "" || m.Text != NormalizeText(m.Text)) {
			t.Fatalf("accepted a message whose text is not normalised: %q", m.Text)
		}
		var inv *InvalidError
		if err != nil && !errors.As(err, &inv) {
			t.Fatalf("error of another type: %v", err)
		}
	})
}
