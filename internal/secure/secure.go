// Package secure owns the transport security and credentials of every
// connection emoflow makes or serves: it declares the flags (TLS files,
// SASL mechanism, user names, passwords and tokens, from files or the
// environment) and turns them into *tls.Config values, Kafka dialers and
// transports, Redis and ClickHouse client settings, and the bearer tokens of
// the classifier's API. Every binary uses these types, so an option is
// spelled and behaves the same everywhere.
//
// Secrets (passwords, tokens) are read from a file (-x-file) or from the
// environment (EMOFLOW_X); they are never logged and never appear in an
// error message.
package secure

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
)

// Secret is a password or token: the value itself (meant for the
// environment variable; a flag shows in the process list) or a file that
// holds it.
type Secret struct {
	name  string
	value string
	file  string
}

// Register declares -name and -name-file on fs.
func (s *Secret) Register(fs *flag.FlagSet, name, what string) {
	s.name = name
	fs.StringVar(&s.value, name, "", what+" (set it in the environment variable, not as a flag, which the process list shows; or use -"+name+"-file)")
	fs.StringVar(&s.file, name+"-file", "", "file holding the "+what+" (surrounding white space is ignored)")
}

// Get returns the secret: the file's contents, the value, or "" when
// neither is set. Setting both is an error.
func (s *Secret) Get() (string, error) {
	switch {
	case s.value != "" && s.file != "":
		return "", fmt.Errorf("-%s and -%s-file exclude each other", s.name, s.name)
	case s.file != "":
		raw, err := os.ReadFile(s.file)
		if err != nil {
			return "", fmt.Errorf("-%s-file: %w", s.name, err)
		}
		v := strings.TrimSpace(string(raw))
		if v == "" {
			return "", fmt.Errorf("-%s-file %s is empty", s.name, s.file)
		}
		return v, nil
	}
	return s.value, nil
}

// Set is true when the secret is given either way.
func (s *Secret) Set() bool { return s.value != "" || s.file != "" }

// args returns the flags that reproduce s (for a component run in-process
// with the same settings).
func (s *Secret) args() []string {
	var out []string
	if s.value != "" {
		out = append(out, "-"+s.name+"="+s.value)
	}
	if s.file != "" {
		out = append(out, "-"+s.name+"-file="+s.file)
	}
	return out
}

// TLSClient is the TLS of a client connection. TLS is on when -P-tls is set
// or any of the files is given; the server's certificate is always
// verified, against -P-tls-ca-file or the system's roots.
type TLSClient struct {
	prefix     string
	Enabled    bool
	CAFile     string
	CertFile   string
	KeyFile    string
	ServerName string
}

// Register declares -P-tls, -P-tls-ca-file, -P-tls-cert-file,
// -P-tls-key-file and -P-tls-server-name on fs, P being prefix.
func (t *TLSClient) Register(fs *flag.FlagSet, prefix, service string) {
	t.prefix = prefix
	fs.BoolVar(&t.Enabled, prefix+"-tls", false, "connect to "+service+" over TLS (implied by the other -"+prefix+"-tls-* flags)")
	fs.StringVar(&t.CAFile, prefix+"-tls-ca-file", "", "PEM file of the certificate authorities that sign "+service+"'s certificate; empty: the system's")
	fs.StringVar(&t.CertFile, prefix+"-tls-cert-file", "", "PEM client certificate presented to "+service+" (mutual TLS; with -"+prefix+"-tls-key-file)")
	fs.StringVar(&t.KeyFile, prefix+"-tls-key-file", "", "PEM private key of -"+prefix+"-tls-cert-file")
	fs.StringVar(&t.ServerName, prefix+"-tls-server-name", "", "name the server's certificate must carry; empty: the host of the address")
}

// On reports whether the connection uses TLS.
func (t *TLSClient) On() bool {
	return t.Enabled || t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != ""
}

// Config returns the client TLS configuration, or nil when TLS is off.
func (t *TLSClient) Config() (*tls.Config, error) {
	if !t.On() {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if t.CAFile != "" {
		pool, err := readPool(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("-%s-tls-ca-file: %w", t.prefix, err)
		}
		cfg.RootCAs = pool
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, fmt.Errorf("-%s-tls-cert-file and -%s-tls-key-file go together", t.prefix, t.prefix)
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("-%s-tls-cert-file/-key-file: %w", t.prefix, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func (t *TLSClient) args() []string {
	var out []string
	add := func(name, v string) {
		if v != "" {
			out = append(out, "-"+t.prefix+name+"="+v)
		}
	}
	if t.Enabled {
		out = append(out, "-"+t.prefix+"-tls")
	}
	add("-tls-ca-file", t.CAFile)
	add("-tls-cert-file", t.CertFile)
	add("-tls-key-file", t.KeyFile)
	add("-tls-server-name", t.ServerName)
	return out
}

// TLSServer is the TLS of a server: its certificate and key, and
// optionally the authorities whose client certificates it requires.
type TLSServer struct {
	CertFile     string
	KeyFile      string
	ClientCAFile string
}

// Register declares -tls-cert-file, -tls-key-file and -tls-client-ca-file.
func (t *TLSServer) Register(fs *flag.FlagSet, what string) {
	fs.StringVar(&t.CertFile, "tls-cert-file", "", "PEM certificate (chain) of "+what+"; with -tls-key-file it serves HTTPS only; empty: plain HTTP")
	fs.StringVar(&t.KeyFile, "tls-key-file", "", "PEM private key of -tls-cert-file")
	fs.StringVar(&t.ClientCAFile, "tls-client-ca-file", "", "PEM certificate authorities whose client certificates are required (mutual TLS); empty: none asked for")
}

// Config returns the server TLS configuration, or nil when no certificate
// is configured.
func (t *TLSServer) Config() (*tls.Config, error) {
	if t.CertFile == "" && t.KeyFile == "" {
		if t.ClientCAFile != "" {
			return nil, errors.New("-tls-client-ca-file needs -tls-cert-file and -tls-key-file")
		}
		return nil, nil
	}
	if t.CertFile == "" || t.KeyFile == "" {
		return nil, errors.New("-tls-cert-file and -tls-key-file go together")
	}
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("-tls-cert-file/-tls-key-file: %w", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if t.ClientCAFile != "" {
		pool, err := readPool(t.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("-tls-client-ca-file: %w", err)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

func readPool(path string) (*x509.CertPool, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(raw) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}
