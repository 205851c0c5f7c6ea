// Package classifyapi owns the wire types of the classifier's HTTP API, shared
// by the server (internal/classifier) and its Go client
// (internal/classifyclient). api/openapi.yaml documents the same API.
package classifyapi

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// Priority classes: live traffic is served before replays.
const (
	PriorityLive   = "live"
	PriorityReplay = "replay"
)

// ClassifyRequest is the body of POST /v1/classify.
type ClassifyRequest struct {
	// Texts are classified independently; at most the server's -max-texts.
	Texts []string `json:"texts"`
	// Contexts, when present, has one entry per text: the previous
	// messages of its conversation, oldest first. Adapters whose template
	// takes context use its last k turns that fit its token budget (see
	// Result.ContextMessages); others ignore it.
	Contexts [][]Turn `json:"contexts,omitempty"`
	// Adapter is "id" or "id@version"; empty means the default adapter.
	Adapter string `json:"adapter,omitempty"`
	// Priority is PriorityLive (the default) or PriorityReplay.
	Priority string `json:"priority,omitempty"`
	// DeadlineMs is how long the caller will wait, from the moment the server
	// receives the request. Work not started by then is not done: the
	// request fails with 504. 0 means the server's default.
	DeadlineMs int64 `json:"deadline_ms,omitempty"`
}

// ClassifyResponse is the answer to a ClassifyRequest: one Result per text,
// in order.
type ClassifyResponse struct {
	// Model is the base model: its name and weights fingerprint.
	Model string `json:"model"`
	// Adapter is the adapter that computed the results, "id@version"; the
	// base model with the server's prompt template is the pseudo-adapter
	// "base@<template version>".
	Adapter string `json:"adapter"`
	// LabelSet identifies the prompt template and label set (a hash), so
	// that cached results of another prompt are never reused.
	LabelSet string `json:"label_set"`
	// Labels is the label set, in the model's order.
	Labels  []string `json:"labels"`
	Results []Result `json:"results"`
}

// Result is the classification of one text.
type Result struct {
	// Label is the most probable label.
	Label string `json:"label"`
	// Probabilities maps every label of the set to its probability; they
	// sum to 1.
	Probabilities map[string]float64 `json:"probabilities"`
	// Truncated is true when the text was cut to the server's maximum input
	// length before classification.
	Truncated bool `json:"truncated,omitempty"`
	// ContextMessages is how many previous messages were in the prompt.
	ContextMessages int `json:"context_messages,omitempty"`
}

// MaxContextTurns is the most previous messages a request may send with
// one text.
const MaxContextTurns = 32

// Turn is a previous message of a text's conversation.
type Turn struct {
	// Role is the speaker role (contract.SpeakerRoles).
	Role string `json:"role"`
	Text string `json:"text"`
}

// ContextFingerprint is a hex SHA-256 over turns (roles and texts), or ""
// for none. Cached results are keyed by it, so a result computed with one
// context is never served for another, and a text without context keeps
// the key it always had.
func ContextFingerprint(turns []Turn) string {
	if len(turns) == 0 {
		return ""
	}
	h := sha256.New()
	for _, t := range turns {
		fmt.Fprintf(h, "%d:%s%d:%s", len(t.Role), t.Role, len(t.Text), t.Text)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// AdaptersResponse is the body of GET /v1/adapters.
type AdaptersResponse struct {
	Model string `json:"model"`
	// Default is the adapter used when a request names none, "id@version".
	Default  string        `json:"default"`
	Adapters []AdapterInfo `json:"adapters"`
}

// AdapterInfo describes one loaded adapter version.
type AdapterInfo struct {
	ID      string `json:"id"`
	Version string `json:"version"`
	// Method is "lora", "ptuning-v2", "prefix-tuning" or "none" (the bare
	// base model with a prompt).
	Method   string   `json:"method"`
	Labels   []string `json:"labels"`
	LabelSet string   `json:"label_set"`
	Language string   `json:"language,omitempty"`
	Default  bool     `json:"default"`
	// Merged is true when the adapter's weights are merged into the base
	// model (one adapter per worker) rather than applied per row.
	Merged bool `json:"merged,omitempty"`
	// ContextMessages is the most previous messages the adapter's template
	// puts in the prompt (0: messages are classified alone).
	ContextMessages int `json:"context_messages,omitempty"`
}

// Ref returns "id@version".
func (a AdapterInfo) Ref() string { return a.ID + "@" + a.Version }

// ErrorResponse is the body of every 4xx and 5xx answer.
type ErrorResponse struct {
	Error ErrorBody `json:"error"`
}

// ErrorBody says what went wrong. Code is stable, Message is for people.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes.
const (
	CodeBadRequest     = "bad_request"     // 400: malformed or invalid request
	CodeUnknownAdapter = "unknown_adapter" // 404: no such adapter or version
	CodeTooLarge       = "too_large"       // 413: body, text count or text size over the limit
	CodeOverloaded     = "overloaded"      // 429: queue full; retry later (Retry-After)
	CodeDeadline       = "deadline"        // 504: deadline passed before the work was done
	CodeUnavailable    = "unavailable"     // 503: not ready or shutting down
	CodeInternal       = "internal"        // 500: a bug or a failed computation
	CodeUnauthorized   = "unauthorized"    // 401: no bearer token, or not one the server knows
	CodeForbidden      = "forbidden"       // 403: the token (or the client's address) may not use this endpoint
)

// ParseAdapterRef splits "id" or "id@version"; version is empty for "id".
func ParseAdapterRef(ref string) (id, version string, err error) {
	id, version, _ = strings.Cut(ref, "@")
	if id == "" || strings.Contains(version, "@") || (strings.Contains(ref, "@") && version == "") {
		return "", "", fmt.Errorf("adapter %q: want id or id@version", ref)
	}
	return id, version, nil
}
