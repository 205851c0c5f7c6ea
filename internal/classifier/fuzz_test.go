package classifier

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/emoflow/emoflow/internal/batcher"
	"github.com/emoflow/emoflow/internal/classifyapi"
)

// fuzzLimits are the limits the request fuzz targets check against: small,
// so that the fuzzer reaches them.
var fuzzLimits = Component{MaxTexts: 3, MaxTextBytes: 16, DefaultDL: 30 * time.Second, MaxDL: 10 * time.Minute}

// FuzzClassifyRequest feeds arbitrary bodies to the decoding of POST
// /v1/classify. A refusal is a 400 or 413 with a stable code and a message;
// an accepted body is exactly one JSON value, within every limit, with a
// deadline in (0, -max-deadline], and re-encoded it decodes to the same
// request; cut short by its last byte it is refused.
func FuzzClassifyRequest(f *testing.F) {
	for _, s := range []string{
		`{"texts":["hi"]}`,
		`{"texts":["a","b"],"adapter":"lora@1","priority":"replay","deadline_ms":250}`,
		`{"texts":["a","b","c","d"]}`,
		`{"texts":[""]}`,
		`{"texts":["hi"],"deadline_ms":600001}`,
	} {
		f.Add([]byte(s))
	}
	c := fuzzLimits
	f.Fuzz(func(t *testing.T, body []byte) {
		in, bad := c.parseClassify(body)
		if bad != nil {
			checkRefusal(t, bad)
			return
		}
		req := in.req
		if !json.Valid(body) {
			t.Fatalf("accepted a body that is not one JSON value: %q", body)
		}
		if len(req.Texts) == 0 || len(req.Texts) > c.MaxTexts {
			t.Fatalf("accepted %d texts, limit %d", len(req.Texts), c.MaxTexts)
		}
		for _, s := range req.Texts {
			if s == "" || len(s) > c.MaxTextBytes || !utf8.ValidString(s) {
				t.Fatalf("accepted text %q (limit %d bytes)", s, c.MaxTextBytes)
			}
		}
		if in.deadline <= 0 || in.deadline > c.MaxDL ||
			(req.DeadlineMs == 0 && in.deadline != c.DefaultDL) ||
			(req.DeadlineMs != 0 && in.deadline != time.Duration(req.DeadlineMs)*time.Millisecond) {
			t.Fatalf("deadline_ms %d gave a deadline of %v (default %v, max %v)", req.DeadlineMs, in.deadline, c.DefaultDL, c.MaxDL)
		}
		if want := batcher.Live; req.Priority == classifyapi.PriorityReplay {
			if in.prio != batcher.Replay {
				t.Fatalf("priority %q gave class %v", req.Priority, in.prio)
			}
		} else if in.prio != want {
			t.Fatalf("priority %q gave class %v", req.Priority, in.prio)
		}
		again, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		in2, bad := c.parseClassify(again)
		if bad != nil || !reflect.DeepEqual(in2, in) {
			t.Fatalf("re-encoded %s: %+v, %+v; want %+v", again, in2, bad, in)
		}
		trimmed := bytes.TrimSpace(body)
		if _, bad := c.parseClassify(trimmed[:len(trimmed)-1]); bad == nil {
			t.Fatalf("accepted %q cut by its last byte", trimmed)
		}
	})
}

func checkRefusal(t *testing.T, bad *requestError) {
	t.Helper()
	switch {
	case bad.msg == "":
		t.Fatalf("refusal without a message: %+v", bad)
	case bad.status == http.StatusBadRequest && bad.code == classifyapi.CodeBadRequest:
	case bad.status == http.StatusRequestEntityTooLarge && bad.code == classifyapi.CodeTooLarge:
	default:
		t.Fatalf("refusal with status %d and code %q", bad.status, bad.code)
	}
}

// FuzzAdminBody feeds arbitrary bodies to the decoding of the admin
// endpoints (POST /v1/admin/adapters, PUT /v1/admin/default): a refusal is
// a 400 with an error body; an accepted body is exactly one JSON value of at
// most 64 KiB that writes nothing, and re-encoded it decodes to the same
// value.
func FuzzAdminBody(f *testing.F) {
	for _, s := range []string{`{"path":"/adapters/x/3"}`, `{"adapter":"support@2"}`, `{"path":1}`, `{}`, `null`} {
		f.Add([]byte(s))
	}
	type adminRequest struct {
		Path    string `json:"path"`
		Adapter string `json:"adapter"`
	}
	decode := func(body []byte) (adminRequest, *httptest.ResponseRecorder, bool) {
		var req adminRequest
		rec := httptest.NewRecorder()
		ok := decodeBody(rec, httptest.NewRequest(http.MethodPost, "/v1/admin/adapters", bytes.NewReader(body)), &req)
		return req, rec, ok
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, rec, ok := decode(body)
		if !ok {
			var e classifyapi.ErrorResponse
			if rec.Code != http.StatusBadRequest || json.Unmarshal(rec.Body.Bytes(), &e) != nil ||
				e.Error.Code != classifyapi.CodeBadRequest || e.Error.Message == "" {
				t.Fatalf("refusal: status %d body %s", rec.Code, rec.Body.Bytes())
			}
			return
		}
		if rec.Body.Len() != 0 {
			t.Fatalf("accepted body but wrote %q", rec.Body.Bytes())
		}
		if !json.Valid(body) || len(body) > 1<<16 {
			t.Fatalf("accepted %d bytes that are not one JSON value within 64 KiB: %.200q", len(body), body)
		}
		again, _ := json.Marshal(req)
		if req2, _, ok := decode(again); !ok || req2 != req {
			t.Fatalf("re-encoded %s: %+v, want %+v", again, req2, req)
		}
	})
}
