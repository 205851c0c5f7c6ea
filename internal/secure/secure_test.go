package secure_test

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/secure"
	"github.com/emoflow/emoflow/internal/testenv"
)

func parse(t *testing.T, register func(*flag.FlagSet), args ...string) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
}

func TestSecretFromFileOrValue(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "pw")
	if err := os.WriteFile(file, []byte("  s3cret-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args    []string
		want    string
		wantErr string
	}{
		{nil, "", ""},
		{[]string{"-pw=s3cret-value"}, "s3cret-value", ""},
		{[]string{"-pw-file=" + file}, "s3cret-from-file", ""},
		{[]string{"-pw=s3cret-value", "-pw-file=" + file}, "", "exclude each other"},
		{[]string{"-pw-file=" + empty}, "", "is empty"},
		{[]string{"-pw-file=" + filepath.Join(dir, "absent")}, "", "no such file"},
	} {
		var s secure.Secret
		parse(t, func(fs *flag.FlagSet) { s.Register(fs, "pw", "password") }, tc.args...)
		got, err := s.Get()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v: error %v, want one containing %q", tc.args, err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "s3cret") {
				t.Errorf("%v: the error shows the secret: %v", tc.args, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%v: got %q, %v; want %q", tc.args, got, err, tc.want)
		}
	}
}

func TestTokens(t *testing.T) {
	adminSum := sha256.Sum256([]byte("token-of-emoctl-0123456789"))
	raw := "# clients of the classifier\n\ningest  token-of-ingest-0123456789\nemoctl sha256:" + hex.EncodeToString(adminSum[:]) + "\n"
	tokens, err := secure.ParseTokens([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	for token, want := range map[string]string{
		"token-of-ingest-0123456789": "ingest",
		"token-of-emoctl-0123456789": "emoctl",
		"token-of-ingest-012345678":  "",
		"":                           "",
		"sha256:" + hex.EncodeToString(adminSum[:]): "", // the hash is not the token
	} {
		got, ok := tokens.Client(token)
		if got != want || ok != (want != "") {
			t.Errorf("Client(%q) = %q, %v; want %q", token, got, ok, want)
		}
	}
	for _, bad := range []struct{ raw, want string }{
		{"ingest\n", "line 1"},
		{"ingest a b\n", "line 1"},
		{"# only a comment\n", "no tokens"},
		{"ingest token-of-ingest-0123456789\ningest token-of-ingest-9876543210\n", "listed twice"},
		{"ingest short-secret\n", "shorter than 16"},
		{"in/gest token-of-ingest-0123456789\n", "client name"},
		{"ingest sha256:abcd\n", "64 hexadecimal"},
	} {
		_, err := secure.ParseTokens([]byte(bad.raw))
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: error %v, want one containing %q", bad.raw, err, bad.want)
		}
		if err != nil && (strings.Contains(err.Error(), "short-secret") || strings.Contains(err.Error(), "0123456789")) {
			t.Errorf("%q: the error shows a token: %v", bad.raw, err)
		}
	}
	if !secure.TokenMatches("abc", "abc") || secure.TokenMatches("abc", "abd") || secure.TokenMatches("", "abc") {
		t.Error("TokenMatches")
	}
}

func TestBearerTokenAndLoopback(t *testing.T) {
	for h, want := range map[string]string{"Bearer abc": "abc", "bearer abc ": "abc", "Basic abc": "", "Bearer ": "", "": ""} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		if h != "" {
			r.Header.Set("Authorization", h)
		}
		if got, ok := secure.BearerToken(r); got != want || ok != (want != "") {
			t.Errorf("BearerToken(%q) = %q, %v", h, got, ok)
		}
	}
	for addr, want := range map[string]bool{"127.0.0.1:8080": true, "[::1]:8080": true, "localhost:80": true,
		"[::]:8080": false, "0.0.0.0:8080": false, "10.1.2.3:8080": false, ":8080": false, "bad": false} {
		if got := secure.IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q) = %v", addr, got)
		}
	}
}

// TestTLSServerAndClient serves HTTPS with a certificate of a throwaway CA
// and checks that a client configured with the CA gets through, one
// without it does not, and that -tls-client-ca-file requires a client
// certificate.
func TestTLSServerAndClient(t *testing.T) {
	ca := testenv.NewCA(t)
	srvCert, srvKey := ca.Issue(t, "server", false)
	cliCert, cliKey := ca.Issue(t, "client", true)

	serve := func(t *testing.T, args ...string) string {
		var st secure.TLSServer
		parse(t, func(fs *flag.FlagSet) { st.Register(fs, "the server") }, args...)
		cfg, err := st.Config()
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
		srv.TLS = cfg
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv.URL
	}
	get := func(t *testing.T, url string, args ...string) error {
		var c secure.TLSClient
		parse(t, func(fs *flag.FlagSet) { c.Register(fs, "x", "the server") }, args...)
		cfg, err := c.Config()
		if err != nil {
			return err
		}
		if cfg == nil {
			t.Fatal("TLS is off")
		}
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}

	url := serve(t, "-tls-cert-file="+srvCert, "-tls-key-file="+srvKey)
	if err := get(t, url, "-x-tls-ca-file="+ca.CAFile); err != nil {
		t.Errorf("with the CA: %v", err)
	}
	if err := get(t, url, "-x-tls"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without the CA (system roots): %v, want a certificate error", err)
	}
	if err := get(t, url, "-x-tls-ca-file="+ca.CAFile, "-x-tls-server-name=other.example"); err == nil {
		t.Error("a server name the certificate lacks was accepted")
	}

	mutual := serve(t, "-tls-cert-file="+srvCert, "-tls-key-file="+srvKey, "-tls-client-ca-file="+ca.CAFile)
	if err := get(t, mutual, "-x-tls-ca-file="+ca.CAFile); err == nil {
		t.Error("mutual TLS: a client without a certificate got through")
	}
	if err := get(t, mutual, "-x-tls-ca-file="+ca.CAFile, "-x-tls-cert-file="+cliCert, "-x-tls-key-file="+cliKey); err != nil {
		t.Errorf("mutual TLS with the client certificate: %v", err)
	}

	var off secure.TLSClient
	parse(t, func(fs *flag.FlagSet) { off.Register(fs, "x", "s") })
	if cfg, err := off.Config(); cfg != nil || err != nil {
		t.Errorf("no flags: %v, %v; want TLS off", cfg, err)
	}
	for _, bad := range [][]string{
		{"-x-tls-cert-file=" + cliCert},
		{"-x-tls-ca-file=" + cliKey},
		{"-x-tls-ca-file=" + filepath.Join(ca.Dir, "absent")},
	} {
		var c secure.TLSClient
		parse(t, func(fs *flag.FlagSet) { c.Register(fs, "x", "s") }, bad...)
		if _, err := c.Config(); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
	for _, bad := range [][]string{{"-tls-cert-file=" + srvCert}, {"-tls-client-ca-file=" + ca.Dir + "/ca.crt"}, {"-tls-cert-file=" + srvKey, "-tls-key-file=" + srvKey}} {
		var st secure.TLSServer
		parse(t, func(fs *flag.FlagSet) { st.Register(fs, "s") }, bad...)
		if _, err := st.Config(); err == nil {
			t.Errorf("server %v: no error", bad)
		}
	}
}

func TestKafkaOptions(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("kafka-password"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args    []string
		secured bool
		wantErr string
	}{
		{nil, false, ""},
		{[]string{"-kafka-tls"}, true, ""},
		{[]string{"-kafka-sasl-mechanism=scram-sha-512", "-kafka-sasl-username=u", "-kafka-sasl-password-file=" + pw}, true, ""},
		{[]string{"-kafka-tls", "-kafka-sasl-mechanism=PLAIN", "-kafka-sasl-username=u", "-kafka-sasl-password=kafka-password"}, true, ""},
		{[]string{"-kafka-sasl-mechanism=plain", "-kafka-sasl-username=u", "-kafka-sasl-password-file=" + pw}, false, "use it with -kafka-tls"},
		{[]string{"-kafka-sasl-mechanism=scram-sha-256", "-kafka-sasl-username=u", "-kafka-sasl-password-file=" + pw}, false, "want plain or scram-sha-512"},
		{[]string{"-kafka-sasl-mechanism=scram-sha-512", "-kafka-sasl-username=u"}, false, "needs -kafka-sasl-username and a password"},
		{[]string{"-kafka-sasl-username=u", "-kafka-sasl-password-file=" + pw}, false, "without -kafka-sasl-mechanism"},
	} {
		var k secure.Kafka
		parse(t, k.Register, tc.args...)
		conn, err := k.Connect()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v: error %v, want %q", tc.args, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tc.args, err)
			continue
		}
		if conn.Secured() != tc.secured {
			t.Errorf("%v: secured %v", tc.args, conn.Secured())
		}
		d := conn.Dialer(0)
		if (d.TLS != nil) != k.TLS.On() || (d.SASLMechanism != nil) != (k.Mechanism != "") {
			t.Errorf("%v: the dialer does not carry the settings", tc.args)
		}
		if tr, ok := conn.Transport().(*kafka.Transport); !ok || (conn.Secured() != (tr != kafka.DefaultTransport)) ||
			(tr.TLS != nil) != k.TLS.On() || (tr.SASL != nil) != (k.Mechanism != "") {
			t.Errorf("%v: the transport does not carry the settings", tc.args)
		}
		if conn.Transport() != conn.Transport() {
			t.Errorf("%v: the clients of one connection must share its transport", tc.args)
		}
		// Args reproduces the settings.
		var again secure.Kafka
		parse(t, again.Register, k.Args()...)
		if again.Mechanism != k.Mechanism || again.Username != k.Username || again.TLS.On() != k.TLS.On() {
			t.Errorf("%v: Args() = %v does not reproduce them", tc.args, k.Args())
		}
	}
	var nilConn *secure.KafkaConn
	if nilConn.Secured() || nilConn.Dialer(0).TLS != nil || nilConn.Transport() != kafka.DefaultTransport {
		t.Error("a nil KafkaConn must build plain connections")
	}
}
