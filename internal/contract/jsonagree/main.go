// Command jsonagree decodes JSON inputs the way the pipeline does and prints
// what it got: for every input (one base64 line on stdin), per contract
// type, "ok" and the value re-encoded, or "err" and the dead-letter reason.
// TestJSONImplementationsAgree (package contract) builds it with and without
// GOEXPERIMENT=jsonv2 and requires the same output: the faster
// implementation of encoding/json that the builds use must accept and
// refuse exactly what the classic one does, with the same values.
package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/contract"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for in.Scan() {
		raw, err := base64.StdEncoding.DecodeString(in.Text())
		if err != nil {
			fmt.Fprintln(os.Stderr, "jsonagree:", err)
			os.Exit(2)
		}
		m, err := contract.DecodeChatMessage(raw, contract.Limits{MaxTextBytes: 4096, MaxMessageBytes: 64 << 10})
		report(out, "message", m, err)
		var ev contract.EmotionEvent
		report(out, "event", ev, unmarshal(raw, &ev))
		var req classifyapi.ClassifyRequest
		report(out, "classify", req, unmarshal(raw, &req))
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "jsonagree:", err)
		os.Exit(2)
	}
}

func unmarshal(raw []byte, v any) error {
	if err := json.Unmarshal(raw, v); err != nil {
		return &contract.InvalidError{Reason: contract.UnmarshalReason(err), Detail: "-"}
	}
	return nil
}

func report(out *bufio.Writer, kind string, v any, err error) {
	if err != nil {
		var inv *contract.InvalidError
		reason := "other"
		if errors.As(err, &inv) {
			reason = string(inv.Reason)
		}
		fmt.Fprintf(out, "%s err %s\n", kind, reason)
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintf(out, "%s ok unencodable: %v\n", kind, err)
		return
	}
	fmt.Fprintf(out, "%s ok %s\n", kind, b)
}
