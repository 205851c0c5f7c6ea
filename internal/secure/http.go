package secure

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
)

// ClassifierClient is how ingest and emoctl reach the classifier's API:
// TLS and a bearer token.
type ClassifierClient struct {
	TLS   TLSClient
	Token Secret
}

// Register declares -classifier-tls* and -classifier-token* on fs.
func (c *ClassifierClient) Register(fs *flag.FlagSet) {
	c.TLS.Register(fs, "classifier", "the classifier (https:// URLs)")
	c.Token.Register(fs, "classifier-token", "bearer token sent to the classifier (one of its -tokens-file entries)")
}

// Args returns the flags that reproduce c.
func (c *ClassifierClient) Args() []string { return append(c.TLS.args(), c.Token.args()...) }

// Settings returns the TLS configuration (nil: plain HTTP unless the URL
// says https, then the system's roots) and the token ("" for none).
func (c *ClassifierClient) Settings() (*tls.Config, string, error) {
	tlsCfg, err := c.TLS.Config()
	if err != nil {
		return nil, "", err
	}
	token, err := c.Token.Get()
	if err != nil {
		return nil, "", err
	}
	return tlsCfg, token, nil
}

// Tokens are the bearer tokens a server accepts, each naming its client.
type Tokens struct {
	entries []tokenEntry
}

type tokenEntry struct {
	client string
	sum    [sha256.Size]byte
}

var clientName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ReadTokens reads a tokens file: one client a line, "name credential",
// where the credential is sha256:<hex> (the SHA-256 of the token; keeps
// the file harmless if read) or the token itself. Blank lines and lines
// starting with # are skipped. Errors name the line, never the token.
func ReadTokens(path string) (*Tokens, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokens file: %w", err)
	}
	t, err := ParseTokens(raw)
	if err != nil {
		return nil, fmt.Errorf("tokens file %s: %w", path, err)
	}
	return t, nil
}

// ParseTokens parses the contents of a tokens file (see ReadTokens).
func ParseTokens(raw []byte) (*Tokens, error) {
	t := &Tokens{}
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, fmt.Errorf("line %d: want \"client-name token\" or \"client-name sha256:<hex>\"", n)
		}
		name, cred := fields[0], fields[1]
		if !clientName.MatchString(name) {
			return nil, fmt.Errorf("line %d: client name %q: want letters, digits, '.', '_' or '-' (at most 64)", n, name)
		}
		if seen[name] {
			return nil, fmt.Errorf("line %d: client %s listed twice", n, name)
		}
		seen[name] = true
		e := tokenEntry{client: name}
		if h, ok := strings.CutPrefix(cred, "sha256:"); ok {
			b, err := hex.DecodeString(h)
			if err != nil || len(b) != sha256.Size {
				return nil, fmt.Errorf("line %d: sha256: needs 64 hexadecimal digits", n)
			}
			copy(e.sum[:], b)
		} else {
			if len(cred) < 16 {
				return nil, fmt.Errorf("line %d: the token of %s is shorter than 16 characters", n, name)
			}
			e.sum = sha256.Sum256([]byte(cred))
		}
		t.entries = append(t.entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(t.entries) == 0 {
		return nil, errors.New("no tokens")
	}
	return t, nil
}

// Client returns the name of the client whose token this is. Every entry
// is compared, in constant time, whatever matches.
func (t *Tokens) Client(token string) (string, bool) {
	sum := sha256.Sum256([]byte(token))
	found := -1
	for i := range t.entries {
		if subtle.ConstantTimeCompare(sum[:], t.entries[i].sum[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return "", false
	}
	return t.entries[found].client, true
}

// TokenMatches compares a presented token with the expected one in
// constant time (of their SHA-256 sums, so the length leaks nothing).
func TokenMatches(presented, expected string) bool {
	a, b := sha256.Sum256([]byte(presented)), sha256.Sum256([]byte(expected))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// BearerToken returns the token of an "Authorization: Bearer" header.
func BearerToken(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// IsLoopback reports whether a listen address (host:port, as the listener
// reports it) accepts loopback connections only.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
