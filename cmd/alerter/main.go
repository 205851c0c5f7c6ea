// Command alerter publishes escalation alerts when a conversation turns,
// from the emotion events of the events topic (see internal/alerts).
package main

import (
	"os"

	"github.com/emoflow/emoflow/internal/alerts"
	"github.com/emoflow/emoflow/internal/service"
)

func main() { os.Exit(service.Main("alerter", &alerts.Component{}, ":9103")) }
