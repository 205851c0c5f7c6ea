package classifyapi

import "testing"

func TestContextFingerprintSeparatesRolesAndTexts(t *testing.T) {
	a := ContextFingerprint([]Turn{{"customer", "ab"}, {"agent", "c"}})
	b := ContextFingerprint([]Turn{{"customer", "a"}, {"agent", "bc"}})
	c := ContextFingerprint([]Turn{{"agent", "ab"}, {"agent", "c"}})
	d := ContextFingerprint([]Turn{{"agent", "c"}})
	if a == b || a == c || b == c || a == d || ContextFingerprint(nil) != "" {
		t.Fatalf("fingerprints collide: %s %s %s %s", a, b, c, d)
	}
	if a != ContextFingerprint([]Turn{{"customer", "ab"}, {"agent", "c"}}) {
		t.Fatal("fingerprint is not deterministic")
	}
}
