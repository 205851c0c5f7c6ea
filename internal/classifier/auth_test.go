package classifier

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/service"
	"github.com/emoflow/emoflow/internal/testenv"
)

// TestAPIOverTLSWithClientAndAdminTokens serves the API over HTTPS with a
// tokens file and an admin token: each client gets in with its own token
// and is counted under its name, requests without a known token get 401
// with a JSON error, a client token does not open the admin endpoints
// (403), the admin token does, plain HTTP gets nothing, and no token
// appears in the log.
func TestAPIOverTLSWithClientAndAdminTokens(t *testing.T) {
	modelDir, _ := setup(t)
	ca := testenv.NewCA(t)
	cert, key := ca.Issue(t, "classifier", false)
	dir := t.TempDir()
	const ingestToken, emoctlToken, adminToken = "ingest-token-5f1c2a9e7b", "emoctl-token-0d3b8c6a41", "admin-token-9e8d7c6b5a4f"
	emoctlSum := sha256.Sum256([]byte(emoctlToken))
	tokensFile := filepath.Join(dir, "tokens")
	writeFile(t, tokensFile, "# client  token or sha256:<hex>\ningest "+ingestToken+"\nemoctl sha256:"+hex.EncodeToString(emoctlSum[:])+"\n")
	adminFile := filepath.Join(dir, "admin-token")
	writeFile(t, adminFile, adminToken+"\n")

	c := testenv.Start(t, "classifier", &Component{}, "-dtype=float32", "-model-dir="+modelDir, "-tls-cert-file="+cert, "-tls-key-file="+key,
		"-tokens-file="+tokensFile, "-admin-token-file="+adminFile)
	if !c.RT.TLS {
		t.Fatal("the runtime does not report TLS")
	}
	pem, err := os.ReadFile(ca.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	base := "https://" + c.RT.Addr
	call := func(method, path, token, body string) (int, classifyapi.ErrorResponse) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var e classifyapi.ErrorResponse
		if resp.StatusCode >= 400 {
			if err := json.Unmarshal(raw, &e); err != nil || e.Error.Code == "" {
				t.Fatalf("%s %s: %d without a JSON error: %s", method, path, resp.StatusCode, raw)
			}
		}
		return resp.StatusCode, e
	}
	body := `{"texts": ["I am so happy with the new plan, thank you!"]}`
	for _, tc := range []struct {
		method, path, token, body string
		status                    int
		code                      string
	}{
		{"POST", "/v1/classify", ingestToken, body, 200, ""},
		{"POST", "/v1/classify", emoctlToken, body, 200, ""},
		{"POST", "/v1/classify", ingestToken, body, 200, ""},
		{"GET", "/v1/adapters", emoctlToken, "", 200, ""},
		{"POST", "/v1/classify", "", body, 401, classifyapi.CodeUnauthorized},
		{"POST", "/v1/classify", "ingest-token-5f1c2a9e7c", body, 401, classifyapi.CodeUnauthorized},
		{"POST", "/v1/classify", "sha256:" + hex.EncodeToString(emoctlSum[:]), body, 401, classifyapi.CodeUnauthorized},
		{"POST", "/v1/classify", adminToken, body, 401, classifyapi.CodeUnauthorized},
		{"GET", "/v1/adapters", "", "", 401, classifyapi.CodeUnauthorized},
		{"PUT", "/v1/admin/default", "", `{"adapter": "base"}`, 401, classifyapi.CodeUnauthorized},
		{"PUT", "/v1/admin/default", ingestToken, `{"adapter": "base"}`, 403, classifyapi.CodeForbidden},
		{"DELETE", "/v1/admin/adapters/none@1", "wrong-admin-token-123456", "", 401, classifyapi.CodeUnauthorized},
		{"PUT", "/v1/admin/default", adminToken, `{"adapter": "base"}`, 200, ""},
		{"DELETE", "/v1/admin/adapters/none@1", adminToken, "", 404, classifyapi.CodeUnknownAdapter},
	} {
		status, e := call(tc.method, tc.path, tc.token, tc.body)
		if status != tc.status || e.Error.Code != tc.code {
			t.Errorf("%s %s with token %q: %d %q, want %d %q (%s)", tc.method, tc.path, tc.token, status, e.Error.Code, tc.status, tc.code, e.Error.Message)
		}
	}

	// Plain HTTP to the HTTPS port is not served.
	if resp, err := http.Post("http://"+c.RT.Addr+"/v1/classify", "application/json", strings.NewReader(body)); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
			t.Errorf("plain HTTP got %d from the API", resp.StatusCode)
		}
	}

	// The metrics name the clients.
	resp, err := client.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`emoflow_classifier_http_requests_total{client="ingest",endpoint="classify",status="200"} 2`,
		`emoflow_classifier_http_requests_total{client="emoctl",endpoint="classify",status="200"} 1`,
		`emoflow_classifier_http_requests_total{client="emoctl",endpoint="adapters",status="200"} 1`,
		`emoflow_classifier_http_requests_total{client="unauthenticated",endpoint="classify",status="401"} 4`,
		`emoflow_classifier_http_requests_total{client="ingest",endpoint="admin_default",status="403"} 1`,
		`emoflow_classifier_http_requests_total{client="admin",endpoint="admin_default",status="200"} 1`,
	} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	for _, secret := range []string{ingestToken, emoctlToken, adminToken} {
		if strings.Contains(c.Logs(), secret) {
			t.Errorf("the log shows a token")
		}
	}
}

// TestAdminAPINeverOpenOnTheNetwork: without an admin token the classifier
// refuses to listen on a non-loopback address while the admin API is on.
func TestAdminAPINeverOpenOnTheNetwork(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	writeFile(t, short, "too-short\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-http-addr=0.0.0.0:0"}, "not a loopback address"},
		{[]string{"-http-addr=:0"}, "not a loopback address"},
		{[]string{"-http-addr=127.0.0.1:0", "-admin-token-file=" + short}, "shorter than 16"},
		{[]string{"-http-addr=127.0.0.1:0", "-tokens-file=" + filepath.Join(dir, "absent")}, "-tokens-file"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var logs testenv.LogBuffer
		err := service.Run(ctx, "classifier", &Component{}, "127.0.0.1:0", append([]string{"-model-dir=" + dir}, tc.args...),
			func(string) (string, bool) { return "", false }, &logs, nil)
		cancel()
		var cfgErr *service.ConfigError
		if !errors.As(err, &cfgErr) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want a configuration error about %q", tc.args, err, tc.want)
		}
	}
	// With the admin API off, or with a token, the address is allowed: the
	// start then gets as far as the (absent) model.
	for _, args := range [][]string{{"-http-addr=0.0.0.0:0", "-admin-api=false"}, {"-http-addr=0.0.0.0:0", "-admin-token=an-admin-token-of-length"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var logs testenv.LogBuffer
		err := service.Run(ctx, "classifier", &Component{}, "127.0.0.1:0", append([]string{"-model-dir=" + dir}, args...),
			func(string) (string, bool) { return "", false }, &logs, nil)
		cancel()
		if err == nil || strings.Contains(err.Error(), "loopback") || !strings.Contains(err.Error(), "load model") {
			t.Errorf("%v: %v, want it past the address check, failing to load the model", args, err)
		}
		if strings.Contains(logs.String(), "an-admin-token-of-length") {
			t.Errorf("%v: the log shows the admin token", args)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
