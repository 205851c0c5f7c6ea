package contract

// Rejection reasons that come from classification rather than from the
// message itself: the message is valid but cannot be classified.
const (
	// ReasonUnknownAdapter: the message asks for an adapter (or version) that
	// no classifier serves.
	ReasonUnknownAdapter Reason = "unknown_adapter"
	// ReasonClassifierRejected: the classifier refused the text as invalid
	// (400 or 413) even when sent on its own.
	ReasonClassifierRejected Reason = "classifier_rejected"
)

// Headers that ingest adds to a dead-lettered message, after the original
// message's own headers. The value and key are the original bytes.
const (
	// HeaderReason is the Reason.
	HeaderReason = "emoflow-reason"
	// HeaderDetail says what exactly was wrong, for people.
	HeaderDetail = "emoflow-detail"
	// HeaderSourceTopic, HeaderSourcePartition and HeaderSourceOffset locate
	// the original message (partition and offset in decimal).
	HeaderSourceTopic     = "emoflow-source-topic"
	HeaderSourcePartition = "emoflow-source-partition"
	HeaderSourceOffset    = "emoflow-source-offset"
	// HeaderRejectedAt is when ingest rejected the message (RFC 3339).
	HeaderRejectedAt = "emoflow-rejected-at"
	// HeaderValueTruncated is present when the original value was too large
	// to forward whole; it holds the original size in bytes, and the value
	// holds only its beginning.
	HeaderValueTruncated = "emoflow-value-truncated"
	// HeaderValueRedacted is "true" when the original value was dropped
	// because the message's tenant is listed in ingest's
	// -dead-letter-redact-tenants: the value is then empty, and only the key,
	// the original headers and ingest's headers remain.
	HeaderValueRedacted = "emoflow-value-redacted"
)
