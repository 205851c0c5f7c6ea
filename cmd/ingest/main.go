// Command ingest consumes chat messages from Kafka, classifies their emotion
// through the classifier workers (with a Redis cache) and publishes emotion
// events back to Kafka. See internal/ingest; run with -help for the flags.
package main

import (
	"os"

	"github.com/emoflow/emoflow/internal/ingest"
	"github.com/emoflow/emoflow/internal/service"
)

func main() { os.Exit(service.Main("ingest", &ingest.Component{}, ":9101")) }
