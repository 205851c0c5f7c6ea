package alerts

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/emoflow/emoflow/internal/contract"
)

// DefaultLabels is the label set rules are checked against when the rules
// file names none: the default prompt template's (Ekman's six and neutral).
var DefaultLabels = []string{"anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"}

// MaxWindow bounds a share rule's window, and so the state kept per
// conversation and rule.
const MaxWindow = 1000

// Rule kinds.
const (
	// KindShare: the share of some labels among a role's last N messages.
	KindShare = "share"
	// KindRun: a run of consecutive negative labels after a start label.
	KindRun = "run"
)

// RulesFile is the rules file as written (JSON).
type RulesFile struct {
	// Labels is the label set the events carry; every label a rule names
	// must be in it. Empty means DefaultLabels.
	Labels []string `json:"labels"`
	Rules  []Rule   `json:"rules"`
}

// Rule is one escalation rule. Which fields apply depends on Kind.
type Rule struct {
	// Name identifies the rule in alerts and in the alert id; letters,
	// digits, '.', '_' and '-'.
	Name string `json:"name"`
	// Kind is KindShare or KindRun.
	Kind string `json:"kind"`
	// Role restricts the rule to messages of one speaker role (one of
	// contract.SpeakerRoles); empty means every role. Messages of other
	// roles do not change the rule's state.
	Role string `json:"role,omitempty"`

	// Share rules.

	// Labels are the labels counted (for example anger, disgust, sadness).
	Labels []string `json:"labels,omitempty"`
	// Window is N, how many of the role's last messages are looked at.
	Window int `json:"window,omitempty"`
	// MinMessages is how many messages the window must hold before the
	// rule can fire (default: Window).
	MinMessages int `json:"min_messages,omitempty"`
	// Threshold: the episode opens (and alerts) when the share reaches it.
	Threshold float64 `json:"threshold,omitempty"`
	// ClearBelow: the episode closes when the share falls below it
	// (default: Threshold); lower than Threshold gives hysteresis.
	ClearBelow *float64 `json:"clear_below,omitempty"`

	// Run rules.

	// Negative are the labels that make up a run.
	Negative []string `json:"negative,omitempty"`
	// Start are the labels that end a run and make the next run count: a
	// run alerts only after at least one start label was seen. Labels in
	// neither set leave the run as it is.
	Start []string `json:"start,omitempty"`
	// Length is M, the run length that alerts.
	Length int `json:"length,omitempty"`
}

// Rules are validated rules, ready to apply.
type Rules struct {
	rules []compiledRule
}

// Names returns the rules' names in file order.
func (r *Rules) Names() []string {
	out := make([]string, len(r.rules))
	for i := range r.rules {
		out[i] = r.rules[i].Name
	}
	return out
}

// compiledRule is a Rule with its label sets as lookups and its defaults
// filled in.
type compiledRule struct {
	Rule
	labels     map[string]bool // share: counted; run: negative
	start      map[string]bool // run: start labels
	minMsgs    int
	clearBelow float64
}

var ruleName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$`)

// LoadRules reads and validates a rules file.
func LoadRules(path string) (*Rules, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("rules file: %w", err)
	}
	rules, err := ParseRules(raw)
	if err != nil {
		return nil, fmt.Errorf("rules file %s: %w", path, err)
	}
	return rules, nil
}

// ParseRules decodes and validates the JSON of a rules file. Unknown
// fields, unknown labels and roles, and thresholds outside (0, 1] are
// errors that name the rule and the value.
func ParseRules(raw []byte) (*Rules, error) {
	var f RulesFile
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if dec.More() {
		return nil, errors.New("decode: data after the rules object")
	}
	return compileRules(f)
}

func compileRules(f RulesFile) (*Rules, error) {
	labelSet := f.Labels
	if len(labelSet) == 0 {
		labelSet = DefaultLabels
	}
	known := map[string]bool{}
	for _, l := range labelSet {
		if l == "" || known[l] {
			return nil, fmt.Errorf("labels: empty or repeated label %q", l)
		}
		known[l] = true
	}
	if len(f.Rules) == 0 {
		return nil, errors.New("no rules")
	}
	var errs []error
	seen := map[string]bool{}
	out := &Rules{}
	for i, r := range f.Rules {
		c, err := compileRule(r, known)
		if err != nil {
			errs = append(errs, fmt.Errorf("rule %d (%q): %w", i+1, r.Name, err))
			continue
		}
		if seen[r.Name] {
			errs = append(errs, fmt.Errorf("rule %d: name %q is used twice", i+1, r.Name))
			continue
		}
		seen[r.Name] = true
		out.rules = append(out.rules, c)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

func compileRule(r Rule, known map[string]bool) (compiledRule, error) {
	c := compiledRule{Rule: r}
	if !ruleName.MatchString(r.Name) {
		return c, errors.New("name must be 1-100 letters, digits, '.', '_' or '-'")
	}
	if r.Role != "" && !slices.Contains(contract.SpeakerRoles, r.Role) {
		return c, fmt.Errorf("unknown role %q (roles: %s)", r.Role, strings.Join(contract.SpeakerRoles, ", "))
	}
	labels := func(field string, ls []string) (map[string]bool, error) {
		if len(ls) == 0 {
			return nil, fmt.Errorf("%s is empty", field)
		}
		set := map[string]bool{}
		for _, l := range ls {
			if !known[l] {
				return nil, fmt.Errorf("%s: unknown label %q (labels: %s)", field, l, strings.Join(sortedKeys(known), ", "))
			}
			set[l] = true
		}
		return set, nil
	}
	var err error
	switch r.Kind {
	case KindShare:
		if len(r.Negative) > 0 || len(r.Start) > 0 || r.Length != 0 {
			return c, errors.New("negative, start and length belong to run rules")
		}
		if c.labels, err = labels("labels", r.Labels); err != nil {
			return c, err
		}
		if r.Window < 1 || r.Window > MaxWindow {
			return c, fmt.Errorf("window %d: want 1 to %d", r.Window, MaxWindow)
		}
		c.minMsgs = r.MinMessages
		if c.minMsgs == 0 {
			c.minMsgs = r.Window
		}
		if c.minMsgs < 1 || c.minMsgs > r.Window {
			return c, fmt.Errorf("min_messages %d: want 1 to the window, %d", r.MinMessages, r.Window)
		}
		if !(r.Threshold > 0 && r.Threshold <= 1) || math.IsNaN(r.Threshold) {
			return c, fmt.Errorf("threshold %v: want a share in (0, 1]", r.Threshold)
		}
		c.clearBelow = r.Threshold
		if r.ClearBelow != nil {
			c.clearBelow = *r.ClearBelow
		}
		if !(c.clearBelow >= 0 && c.clearBelow <= r.Threshold) {
			return c, fmt.Errorf("clear_below %v: want 0 to the threshold, %v", c.clearBelow, r.Threshold)
		}
	case KindRun:
		if len(r.Labels) > 0 || r.Window != 0 || r.MinMessages != 0 || r.Threshold != 0 || r.ClearBelow != nil {
			return c, errors.New("labels, window, min_messages, threshold and clear_below belong to share rules")
		}
		if c.labels, err = labels("negative", r.Negative); err != nil {
			return c, err
		}
		if c.start, err = labels("start", r.Start); err != nil {
			return c, err
		}
		for l := range c.start {
			if c.labels[l] {
				return c, fmt.Errorf("label %q is both negative and start", l)
			}
		}
		if r.Length < 1 || r.Length > MaxWindow {
			return c, fmt.Errorf("length %d: want 1 to %d", r.Length, MaxWindow)
		}
	default:
		return c, fmt.Errorf("kind %q: want %q or %q", r.Kind, KindShare, KindRun)
	}
	return c, nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
