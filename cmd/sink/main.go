// Command sink stores the emotion events of the events topic in ClickHouse
// (see internal/sink).
package main

import (
	"os"

	"github.com/emoflow/emoflow/internal/service"
	"github.com/emoflow/emoflow/internal/sink"
)

func main() { os.Exit(service.Main("sink", &sink.Component{}, ":9102")) }
