// Command classifier serves emotion classification over HTTP with a ChatGLM
// model on libtorch. See internal/classifier and the README.
package main

import (
	"os"

	"github.com/emoflow/emoflow/internal/classifier"
	"github.com/emoflow/emoflow/internal/service"
)

// The API listens on loopback unless -http-addr says otherwise: the admin
// endpoints must never be reachable from the network without a token.
func main() { os.Exit(service.Main("classifier", &classifier.Component{}, "127.0.0.1:8080")) }
