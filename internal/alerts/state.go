package alerts

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"time"

	"github.com/emoflow/emoflow/internal/contract"
)

// Alert is what the alerter publishes on the alerts topic (JSON, key = the
// conversation id) and stores in ClickHouse: a conversation whose rule
// opened an episode at one message.
type Alert struct {
	// AlertID is ID(tenant, conversation, rule, message id): the same on
	// every redelivery of the alert.
	AlertID        string `json:"alert_id"`
	Tenant         string `json:"tenant"`
	ConversationID string `json:"conversation_id"`
	Rule           string `json:"rule"`
	Kind           string `json:"kind"`
	// MessageID is the message that opened the episode; SpeakerRole and
	// Label are its role and label.
	MessageID   string `json:"message_id"`
	SpeakerRole string `json:"speaker_role"`
	Label       string `json:"label"`
	// Share rules: the share of the rule's labels among the window's
	// messages (MatchingMessages of WindowMessages) and the threshold.
	Share            float64 `json:"share,omitempty"`
	WindowMessages   int     `json:"window_messages,omitempty"`
	MatchingMessages int     `json:"matching_messages,omitempty"`
	Threshold        float64 `json:"threshold,omitempty"`
	// Run rules: the length of the negative run.
	RunLength int `json:"run_length,omitempty"`
	// ConversationMessages counts the conversation's messages applied to
	// the state so far, this one included (since the state began: see the
	// state TTL).
	ConversationMessages int64  `json:"conversation_messages"`
	Adapter              string `json:"adapter"`
	// SentAt is the triggering message's time: alerts carry no clock of
	// their own, so a redelivered alert is byte-for-byte the same.
	SentAt time.Time `json:"sent_at"`
	// Source is the triggering chat message's Kafka position.
	Source contract.Source `json:"source"`
}

// ID is the deterministic alert id: the first 128 bits of the SHA-256 of
// tenant, conversation, rule and the id of the message that opened the
// episode, in hex.
func ID(tenant, conversationID, rule, messageID string) string {
	h := sha256.New()
	for _, s := range []string{tenant, conversationID, rule, messageID} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// convState is one conversation's state: where in the conversation's
// messages it stands and each rule's state. Its size is bounded by the
// rules (a share rule keeps at most Window labels), however long the
// conversation.
type convState struct {
	// Topic, Partition and Offset are the source position of the last
	// message applied; Messages counts the messages applied.
	Topic     string `json:"topic"`
	Partition int    `json:"partition"`
	Offset    int64  `json:"offset"`
	Messages  int64  `json:"messages"`
	// Rules holds each rule's state by name.
	Rules map[string]*ruleState `json:"rules,omitempty"`
	// Outbox holds the alerts of the last applied events until they are
	// published and stored: the decision is saved before its effects, so a
	// crash in between publishes them again rather than deciding anew.
	Outbox []Alert `json:"outbox,omitempty"`
}

// ruleState is one rule's state in one conversation.
type ruleState struct {
	// Window (share rules) is the role's last messages, oldest first: '1'
	// for a counted label, '0' otherwise.
	Window string `json:"window,omitempty"`
	// Run (run rules) is the length of the current negative run; Started
	// says a start label was seen.
	Run     int  `json:"run,omitempty"`
	Started bool `json:"started,omitempty"`
	// Open says an episode is open: the rule alerted and has not cleared.
	Open bool `json:"open,omitempty"`
	// OpenedBy is the message id that opened the episode.
	OpenedBy string `json:"opened_by,omitempty"`
}

// Outcome is what applying one event did.
type Outcome string

// Outcomes of apply, the label values of the events metric.
const (
	// Applied: the event advanced the conversation's state.
	Applied Outcome = "applied"
	// Duplicate: an event of the message last applied (a redelivery, or a
	// second event of the same message).
	Duplicate Outcome = "duplicate"
	// Late: the event's message comes before the last one applied, in the
	// same source partition: an event delivered again after the state was
	// saved, or one published after a later message's event; it is not
	// applied.
	Late Outcome = "late"
)

// apply advances st by ev, in conversation order: an event whose source
// offset is at or below the last applied one of the same source partition
// is a duplicate or late and changes nothing. It returns the alerts of the
// episodes ev opened.
func (r *Rules) apply(st *convState, ev *contract.EmotionEvent) (Outcome, []Alert) {
	if st.Messages > 0 && st.Topic == ev.Source.Topic && st.Partition == ev.Source.Partition {
		switch {
		case ev.Source.Offset == st.Offset:
			return Duplicate, nil
		case ev.Source.Offset < st.Offset:
			return Late, nil
		}
	}
	// A different source partition (or the first message) moves the
	// position there: the conversation's messages were re-keyed to another
	// partition, whose offsets are not comparable with the old ones.
	st.Topic, st.Partition, st.Offset = ev.Source.Topic, ev.Source.Partition, ev.Source.Offset
	st.Messages++
	if st.Rules == nil {
		st.Rules = map[string]*ruleState{}
	}
	var alerts []Alert
	for i := range r.rules {
		c := &r.rules[i]
		rs := st.Rules[c.Name]
		if rs == nil {
			rs = &ruleState{}
			st.Rules[c.Name] = rs
		}
		if c.Role != "" && ev.SpeakerRole != c.Role {
			continue
		}
		var fired bool
		var a Alert
		switch c.Kind {
		case KindShare:
			fired, a = c.applyShare(rs, ev.Label)
		case KindRun:
			fired, a = c.applyRun(rs, ev.Label)
		}
		if !fired {
			continue
		}
		rs.Open, rs.OpenedBy = true, ev.MessageID
		a.AlertID = ID(ev.Tenant, ev.ConversationID, c.Name, ev.MessageID)
		a.Tenant, a.ConversationID, a.Rule, a.Kind = ev.Tenant, ev.ConversationID, c.Name, c.Kind
		a.MessageID, a.SpeakerRole, a.Label = ev.MessageID, ev.SpeakerRole, ev.Label
		a.ConversationMessages = st.Messages
		a.Adapter, a.SentAt, a.Source = ev.Adapter, ev.SentAt.UTC(), ev.Source
		alerts = append(alerts, a)
	}
	// Rules no longer in the file leave no state behind.
	if len(st.Rules) > len(r.rules) {
		for name := range st.Rules {
			if !r.has(name) {
				delete(st.Rules, name)
			}
		}
	}
	return Applied, alerts
}

func (r *Rules) has(name string) bool {
	for i := range r.rules {
		if r.rules[i].Name == name {
			return true
		}
	}
	return false
}

// applyShare adds label to the window; the rule fires when no episode is
// open, the window holds at least MinMessages and the share reaches the
// threshold; an open episode closes when the share falls below
// clear_below.
func (c *compiledRule) applyShare(rs *ruleState, label string) (bool, Alert) {
	mark := "0"
	if c.labels[label] {
		mark = "1"
	}
	rs.Window += mark
	if n := len(rs.Window) - c.Window; n > 0 {
		rs.Window = rs.Window[n:]
	}
	size := len(rs.Window)
	matching := strings.Count(rs.Window, "1")
	share := float64(matching) / float64(size)
	if rs.Open {
		if share < c.clearBelow {
			rs.Open, rs.OpenedBy = false, ""
		}
		return false, Alert{}
	}
	if size < c.minMsgs || share < c.Threshold {
		return false, Alert{}
	}
	return true, Alert{Share: share, WindowMessages: size, MatchingMessages: matching, Threshold: c.Threshold}
}

// applyRun extends or ends the negative run; the rule fires when the run
// reaches Length after a start label and no episode is open; a start
// label ends the run and the episode.
func (c *compiledRule) applyRun(rs *ruleState, label string) (bool, Alert) {
	switch {
	case c.start[label]:
		rs.Run, rs.Started = 0, true
		rs.Open, rs.OpenedBy = false, ""
		return false, Alert{}
	case c.labels[label]:
		// Capped: past Length the exact count changes nothing.
		rs.Run = min(rs.Run+1, c.Length)
		if rs.Open || !rs.Started || rs.Run < c.Length {
			return false, Alert{}
		}
		return true, Alert{RunLength: rs.Run}
	}
	return false, Alert{}
}

// Fold applies events, in the order given, to fresh conversation states
// (one per tenant and conversation), as the alerter applies the events it
// consumes, and returns the alerts in order. Filtering by run and adapter
// is the caller's. Given each conversation's events in source order, it is
// what the alerter decides offline: a stream without late events gives the
// same alerts.
func (r *Rules) Fold(events []contract.EmotionEvent) []Alert {
	states := map[convKey]*convState{}
	var out []Alert
	for i := range events {
		k := convKey{events[i].Tenant, events[i].ConversationID}
		st := states[k]
		if st == nil {
			st = &convState{}
			states[k] = st
		}
		_, alerts := r.apply(st, &events[i])
		out = append(out, alerts...)
	}
	return out
}
