package secure

import (
	"crypto/tls"
	"errors"
	"flag"

	"github.com/redis/go-redis/v9"
)

// Redis is how a client reaches Redis: an ACL user and TLS.
type Redis struct {
	TLS      TLSClient
	Username string
	Password Secret
}

// Register declares -redis-tls*, -redis-username and -redis-password* on fs.
func (r *Redis) Register(fs *flag.FlagSet) {
	r.TLS.Register(fs, "redis", "Redis")
	fs.StringVar(&r.Username, "redis-username", "", "Redis ACL user (AUTH username password); empty: the default user")
	r.Password.Register(fs, "redis-password", "Redis password")
}

// Apply sets the user, password and TLS configuration on o.
func (r *Redis) Apply(o *redis.Options) error {
	tlsCfg, err := r.TLS.Config()
	if err != nil {
		return err
	}
	password, err := r.Password.Get()
	if err != nil {
		return err
	}
	if r.Username != "" && password == "" {
		return errors.New("-redis-username needs a password (-redis-password-file or EMOFLOW_REDIS_PASSWORD)")
	}
	o.Username, o.Password, o.TLSConfig = r.Username, password, tlsCfg
	return nil
}

// Args returns the flags that reproduce r.
func (r *Redis) Args() []string {
	out := r.TLS.args()
	if r.Username != "" {
		out = append(out, "-redis-username="+r.Username)
	}
	return append(out, r.Password.args()...)
}

// ClickHouse is how a client reaches ClickHouse: user, password and TLS
// (the server's secure native port, 9440 by default).
type ClickHouse struct {
	TLS      TLSClient
	User     string
	Password Secret
}

// Register declares -clickhouse-user, -clickhouse-password* and
// -clickhouse-tls* on fs.
func (c *ClickHouse) Register(fs *flag.FlagSet) {
	fs.StringVar(&c.User, "clickhouse-user", "default", "ClickHouse user")
	c.Password.Register(fs, "clickhouse-password", "ClickHouse password")
	c.TLS.Register(fs, "clickhouse", "ClickHouse (its secure native port, tcp_port_secure)")
}

// Credentials returns the user, the password and the TLS configuration
// (nil: plain TCP).
func (c *ClickHouse) Credentials() (user, password string, tlsCfg *tls.Config, err error) {
	if tlsCfg, err = c.TLS.Config(); err != nil {
		return "", "", nil, err
	}
	if password, err = c.Password.Get(); err != nil {
		return "", "", nil, err
	}
	return c.User, password, tlsCfg, nil
}
