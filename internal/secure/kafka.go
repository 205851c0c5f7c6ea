package secure

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// Kafka is how a client reaches the brokers: TLS and SASL.
type Kafka struct {
	TLS       TLSClient
	Mechanism string
	Username  string
	Password  Secret
}

// SASL mechanisms of -kafka-sasl-mechanism.
const (
	SASLPlain       = "plain"
	SASLScramSHA512 = "scram-sha-512"
)

// Register declares the -kafka-tls* and -kafka-sasl-* flags on fs.
func (k *Kafka) Register(fs *flag.FlagSet) {
	k.TLS.Register(fs, "kafka", "the Kafka brokers")
	fs.StringVar(&k.Mechanism, "kafka-sasl-mechanism", "", "SASL authentication with the brokers: plain or scram-sha-512 (plain needs -kafka-tls); empty: none")
	fs.StringVar(&k.Username, "kafka-sasl-username", "", "SASL user name")
	k.Password.Register(fs, "kafka-sasl-password", "SASL password")
}

// Args returns the flags that reproduce k, for a component started
// in-process with the same connection settings.
func (k *Kafka) Args() []string {
	out := k.TLS.args()
	if k.Mechanism != "" {
		out = append(out, "-kafka-sasl-mechanism="+k.Mechanism)
	}
	if k.Username != "" {
		out = append(out, "-kafka-sasl-username="+k.Username)
	}
	return append(out, k.Password.args()...)
}

// Connect checks the settings and returns what builds the connections.
func (k *Kafka) Connect() (*KafkaConn, error) {
	tlsCfg, err := k.TLS.Config()
	if err != nil {
		return nil, err
	}
	conn := &KafkaConn{tls: tlsCfg}
	mech := strings.ToLower(strings.TrimSpace(k.Mechanism))
	if mech == "" {
		if k.Username != "" || k.Password.Set() {
			return nil, errors.New("-kafka-sasl-username or -kafka-sasl-password given without -kafka-sasl-mechanism")
		}
		return conn.withTransport(), nil
	}
	password, err := k.Password.Get()
	if err != nil {
		return nil, err
	}
	if k.Username == "" || password == "" {
		return nil, fmt.Errorf("-kafka-sasl-mechanism %s needs -kafka-sasl-username and a password (-kafka-sasl-password-file or EMOFLOW_KAFKA_SASL_PASSWORD)", mech)
	}
	switch mech {
	case SASLPlain:
		if tlsCfg == nil {
			return nil, errors.New("-kafka-sasl-mechanism plain sends the password as it is: use it with -kafka-tls")
		}
		conn.mech = plain.Mechanism{Username: k.Username, Password: password}
	case SASLScramSHA512:
		m, err := scram.Mechanism(scram.SHA512, k.Username, password)
		if err != nil {
			return nil, fmt.Errorf("-kafka-sasl-mechanism %s: %w", mech, err)
		}
		conn.mech = m
	default:
		return nil, fmt.Errorf("-kafka-sasl-mechanism %q: want %s or %s", k.Mechanism, SASLPlain, SASLScramSHA512)
	}
	return conn.withTransport(), nil
}

// withTransport makes the transport that every writer and admin client of
// this connection shares, as kafka-go's default transport is shared: one
// connection pool and one metadata cache per process (what one client
// learns about new topics, the others see).
func (c *KafkaConn) withTransport() *KafkaConn {
	if c.Secured() {
		c.transport = &kafka.Transport{Dial: (&net.Dialer{Timeout: 3 * time.Second}).DialContext, TLS: c.tls, SASL: c.mech}
	}
	return c
}

// KafkaConn builds kafka-go's dialers (readers, consumer groups) and
// transports (writers, admin clients) with the configured TLS and SASL.
// A nil *KafkaConn builds plain connections.
type KafkaConn struct {
	tls       *tls.Config
	mech      sasl.Mechanism
	transport *kafka.Transport
}

// Secured reports whether connections use TLS or SASL.
func (c *KafkaConn) Secured() bool { return c != nil && (c.tls != nil || c.mech != nil) }

// Dialer returns a dialer for kafka.ReaderConfig and
// kafka.ConsumerGroupConfig, with timeout as its dial timeout (0: 10 s, as
// kafka-go's default dialer).
func (c *KafkaConn) Dialer(timeout time.Duration) *kafka.Dialer {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	d := &kafka.Dialer{Timeout: timeout, DualStack: true}
	if c != nil {
		d.TLS, d.SASLMechanism = c.tlsConfig(), c.mech
	}
	return d
}

// Transport returns the transport for kafka.Writer and kafka.Client:
// kafka-go's shared default for plain connections, else the connection's
// own, shared by all its clients.
func (c *KafkaConn) Transport() kafka.RoundTripper {
	if c == nil || c.transport == nil {
		return kafka.DefaultTransport
	}
	return c.transport
}

// Client returns an admin client of brokers whose requests time out after
// timeout.
func (c *KafkaConn) Client(brokers []string, timeout time.Duration) *kafka.Client {
	return &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: timeout, Transport: c.Transport()}
}

// tlsConfig returns a copy: kafka-go sets ServerName per broker on the
// configuration it is given.
func (c *KafkaConn) tlsConfig() *tls.Config {
	if c.tls == nil {
		return nil
	}
	return c.tls.Clone()
}
