package contract

import (
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// LiveRun is the run id of live traffic; replays carry their own run ids.
const LiveRun = "live"

// EmotionEvent is what ingest publishes for every valid chat message (JSON;
// the Kafka key is the conversation id). Events of one message can appear
// more than once on the topic (at-least-once delivery); the triple
// (MessageID, Adapter, RunID) identifies one classification, and sink's
// tables deduplicate on it.
type EmotionEvent struct {
	MessageID      string `json:"message_id"`
	ConversationID string `json:"conversation_id"`
	Tenant         string `json:"tenant"`
	SpeakerRole    string `json:"speaker_role"`
	Language       string `json:"language"`
	// TextFingerprint is the hex SHA-256 of the normalised text.
	TextFingerprint string `json:"text_fingerprint"`
	// Text is the normalised text, only when ingest is configured to include
	// it (-events-include-text).
	Text string `json:"text,omitempty"`

	Label         string             `json:"label"`
	Probabilities map[string]float64 `json:"probabilities"`
	// TrueLabel is the message's ground-truth label, when it had one.
	TrueLabel string `json:"true_label,omitempty"`
	// Truncated is true when the text was longer than the classifier's
	// maximum input and only its beginning was classified.
	Truncated bool `json:"truncated,omitempty"`
	// ContextMessages is how many previous messages of the conversation
	// were in the prompt (ingest -context-messages; 0 when classified
	// alone).
	ContextMessages int `json:"context_messages,omitempty"`
	// ContextSource says where the context came from when ingest keeps
	// conversation windows: "redis", or "memory" while Redis was
	// unavailable (the window this ingest process held, possibly shorter).
	ContextSource string `json:"context_source,omitempty"`

	// Model identifies the base model (name and weights fingerprint).
	Model string `json:"model"`
	// Adapter is the adapter used, "id@version"; empty for the base model.
	Adapter string `json:"adapter"`
	// LabelSet identifies the prompt template and label set (a hash).
	LabelSet string `json:"label_set"`
	// RunID is LiveRun for live traffic, or the replay's run id.
	RunID    string `json:"run_id"`
	CacheHit bool   `json:"cache_hit"`

	SentAt       time.Time `json:"sent_at"`
	ReceivedAt   time.Time `json:"received_at"`
	ClassifiedAt time.Time `json:"classified_at"`
	Timings      Timings   `json:"timings"`

	// Source locates the chat message this event answers.
	Source Source `json:"source"`
}

// Timings are the durations, in milliseconds, of the steps of one event.
type Timings struct {
	// CacheMs is the time spent in the cache lookup of the message's batch.
	CacheMs float64 `json:"cache_ms"`
	// ClassifyMs is the classifier call of the message's batch (0 on a
	// cache hit).
	ClassifyMs float64 `json:"classify_ms"`
	// PipelineMs is from consuming the message to handing its event to the
	// producer.
	PipelineMs float64 `json:"pipeline_ms"`
}

// Source is the Kafka position of a chat message.
type Source struct {
	Topic     string `json:"topic"`
	Partition int    `json:"partition"`
	Offset    int64  `json:"offset"`
}

// Fingerprint is the hex SHA-256 of a (normalised) text.
func Fingerprint(text string) string {
	sum := sha256.Sum256([]byte(text))
	return hex.EncodeToString(sum[:])
}
