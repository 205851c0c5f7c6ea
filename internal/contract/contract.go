// Package contract owns the messages that cross Kafka: the chat messages
// ingest consumes and the emotion events it publishes (and sink stores),
// their validation, and the text normalisation that decides what "the same
// text" means for the cache. The JSON Schema files in api/schemas describe
// the same contracts for other languages; a test keeps them in step.
package contract

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// ChatMessage is one chat message on the input topic (JSON; the Kafka key is
// the conversation id, so a conversation stays in order on one partition).
type ChatMessage struct {
	ID             string    `json:"id"`
	ConversationID string    `json:"conversation_id"`
	Tenant         string    `json:"tenant"`
	SpeakerRole    string    `json:"speaker_role"`
	Text           string    `json:"text"`
	SentAt         time.Time `json:"sent_at"`
	Language       string    `json:"language"`
	// Label is the ground-truth emotion, when the message comes from a
	// labelled data set (replays and evaluations).
	Label string `json:"label,omitempty"`
	// Adapter asks for an adapter, "id" or "id@version"; empty means the
	// classifier's default.
	Adapter string `json:"adapter,omitempty"`
}

// SpeakerRoles are the accepted values of ChatMessage.SpeakerRole.
var SpeakerRoles = []string{"customer", "agent", "user", "bot", "moderator", "system"}

// Limits bound what a valid message may carry.
type Limits struct {
	// MaxTextBytes is the longest text accepted, in bytes of UTF-8 after
	// normalisation.
	MaxTextBytes int
	// MaxMessageBytes is the largest raw Kafka value accepted.
	MaxMessageBytes int
}

// DefaultLimits are the limits when none are configured.
var DefaultLimits = Limits{MaxTextBytes: 4096, MaxMessageBytes: 64 << 10}

// Reason says why a message was rejected; it is stable and goes into the
// dead-letter topic's "reason" header and the metrics.
type Reason string

// The rejection reasons.
const (
	ReasonTooLarge      Reason = "too_large"
	ReasonInvalidUTF8   Reason = "invalid_utf8"
	ReasonMalformedJSON Reason = "malformed_json"
	ReasonSchema        Reason = "schema_violation"
	ReasonEmptyText     Reason = "empty_text"
	ReasonTextTooLong   Reason = "text_too_long"
)

// InvalidError is a message that cannot be processed, with the reason.
type InvalidError struct {
	Reason Reason
	Detail string
}

func (e *InvalidError) Error() string { return string(e.Reason) + ": " + e.Detail }

func invalid(r Reason, format string, args ...any) error {
	return &InvalidError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

var (
	idPattern       = regexp.MustCompile(`^[\x21-\x7e]{1,128}$`)
	tenantPattern   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
	languagePattern = regexp.MustCompile(`^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$`)
	labelPattern    = regexp.MustCompile(`^[\p{L}\p{N}_ -]{1,64}$`)
	adapterPattern  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(@[A-Za-z0-9][A-Za-z0-9_.+-]{0,63})?$`)
)

// DecodeChatMessage parses and validates a raw Kafka value. The returned
// message's Text is normalised (see NormalizeText). Errors are
// *InvalidError.
func DecodeChatMessage(raw []byte, lim Limits) (ChatMessage, error) {
	var m ChatMessage
	if lim.MaxMessageBytes > 0 && len(raw) > lim.MaxMessageBytes {
		return m, invalid(ReasonTooLarge, "message is %d bytes, limit %d", len(raw), lim.MaxMessageBytes)
	}
	if !utf8.Valid(raw) {
		return m, invalid(ReasonInvalidUTF8, "message is not valid UTF-8")
	}
	// Unmarshal, not a Decoder: it is a fifth faster on small objects and
	// refuses trailing data itself.
	if err := json.Unmarshal(raw, &m); err != nil {
		return m, invalid(UnmarshalReason(err), "%v", err)
	}
	if err := m.validate(lim); err != nil {
		return m, err
	}
	return m, nil
}

// UnmarshalReason is the dead-letter reason of a json.Unmarshal error:
// malformed JSON for a syntax error; the rest (a field of the wrong type, a
// time that is not an RFC 3339 string) break the schema of a well-formed
// document.
func UnmarshalReason(err error) Reason {
	var syntaxErr *json.SyntaxError
	if errors.As(err, &syntaxErr) {
		return ReasonMalformedJSON
	}
	return ReasonSchema
}

func (m *ChatMessage) validate(lim Limits) error {
	switch {
	case !idPattern.MatchString(m.ID):
		return invalid(ReasonSchema, "id must be 1-128 printable ASCII characters, got %q", m.ID)
	case !idPattern.MatchString(m.ConversationID):
		return invalid(ReasonSchema, "conversation_id must be 1-128 printable ASCII characters, got %q", m.ConversationID)
	case !tenantPattern.MatchString(m.Tenant):
		return invalid(ReasonSchema, "tenant must match %s, got %q", tenantPattern, m.Tenant)
	case !validRole(m.SpeakerRole):
		return invalid(ReasonSchema, "speaker_role must be one of %s, got %q", strings.Join(SpeakerRoles, ", "), m.SpeakerRole)
	case m.SentAt.IsZero():
		return invalid(ReasonSchema, "sent_at is required (RFC 3339 time)")
	case !languagePattern.MatchString(m.Language):
		return invalid(ReasonSchema, "language must be a BCP 47 tag such as en or zh-CN, got %q", m.Language)
	case m.Label != "" && !labelPattern.MatchString(m.Label):
		return invalid(ReasonSchema, "label must be 1-64 letters, digits, spaces, _ or -, got %q", m.Label)
	case m.Adapter != "" && !adapterPattern.MatchString(m.Adapter):
		return invalid(ReasonSchema, "adapter must be id or id@version, got %q", m.Adapter)
	}
	m.Text = NormalizeText(m.Text)
	if m.Text == "" {
		return invalid(ReasonEmptyText, "text is empty after normalisation")
	}
	if lim.MaxTextBytes > 0 && len(m.Text) > lim.MaxTextBytes {
		return invalid(ReasonTextTooLong, "text is %d bytes after normalisation, limit %d", len(m.Text), lim.MaxTextBytes)
	}
	return nil
}

// ValidTenant reports whether s is a well-formed tenant id.
func ValidTenant(s string) bool { return tenantPattern.MatchString(s) }

func validRole(r string) bool {
	for _, v := range SpeakerRoles {
		if r == v {
			return true
		}
	}
	return false
}

// NormalizeText is the normalisation applied to every message text before it
// is cached or classified:
//
//  1. control and format characters (other than white space) removed,
//     zero-width spaces and BOMs among them, and invalid UTF-8 with them;
//  2. Unicode NFC, so that composed and decomposed accents are one text;
//  3. every run of white space (newlines and tabs included) becomes one
//     ASCII space, and leading and trailing space is dropped.
//
// Removing before composing makes it idempotent: a format character between
// a letter and its accent, removed after NFC, would leave the pair
// uncomposed and the text different from its own normalisation.
// Letter case and punctuation are kept: "I AM FINE!!!" and "i am fine" can
// carry different emotions.
func NormalizeText(s string) string {
	s = norm.NFC.String(strings.Map(func(r rune) rune {
		if !unicode.IsSpace(r) && (unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == utf8.RuneError) {
			return -1
		}
		return r
	}, s))
	var b strings.Builder
	b.Grow(len(s))
	space := false
	for _, r := range s {
		if unicode.IsSpace(r) {
			space = true
			continue
		}
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		b.WriteRune(r)
	}
	return b.String()
}
