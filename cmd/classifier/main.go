// Command classifier serves emotion classification over HTTP with a ChatGLM
// model on libtorch. See internal/classifier and the README.
package main

import (
	"os"

	"github.com/emoflow/emoflow/internal/classifier"
	"github.com/emoflow/emoflow/internal/service"
)

func main() { os.Exit(service.Main("classifier", &classifier.Component{}, ":8080")) }
