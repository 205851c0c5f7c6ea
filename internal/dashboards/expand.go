package dashboards

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Value is what a template variable holds when a query runs.
type Value struct {
	// All is true when "All" is selected; Values then holds every option
	// (Grafana's expansion of All when the variable has no custom all value).
	All    bool
	Values []string
}

// Env is what Grafana supplies when it runs a query: the dashboard's time
// range, the panel's interval and the template variables.
type Env struct {
	From, To time.Time
	// IntervalSeconds is $__interval_s: the panel's interval, at least its
	// minimum interval (1m on the dashboards' time series).
	IntervalSeconds int
	Vars            map[string]Value
}

// Expand returns the SQL that reaches ClickHouse for sql under env, in the
// order Grafana applies the steps:
//
//  1. $__conditionalAll(condition, $var) (the plugin, in the browser): 1=1
//     when All is selected, else the condition;
//  2. template variables (Grafana): ${var:singlequote} is every value in
//     single quotes with ' escaped as \', comma-separated; $var and ${var}
//     are the value as it is (single values only);
//  3. the plugin's macros (its backend): $__timeFilter(col) is
//     col >= toDateTime(from) AND col <= toDateTime(to) in Unix seconds,
//     $__fromTime and $__toTime are toDateTime(seconds), $__interval_s is
//     the interval in seconds.
//
// Other macros are refused, $__timeInterval among them: the plugin expands
// it to toStartOfInterval, which ClickHouse 18.16 lacks (the dashboards
// bucket with intDiv over $__interval_s instead). So is anything left with
// a $ after expansion.
func Expand(sql string, env Env) (string, error) {
	out, err := expandConditionalAll(sql, env)
	if err != nil {
		return "", err
	}
	if out, err = expandVariables(out, env); err != nil {
		return "", err
	}
	if out, err = expandTimeMacros(out, env); err != nil {
		return "", err
	}
	if i := strings.IndexByte(out, '$'); i >= 0 {
		return "", fmt.Errorf("unexpanded %q in %s", snippet(out[i:]), out)
	}
	return out, nil
}

func snippet(s string) string {
	if len(s) > 30 {
		return s[:30] + "..."
	}
	return s
}

// macroCall finds the first $__name( in s and returns where the call
// starts and ends (after its closing parenthesis) and its arguments, split
// at the top-level commas (outside parentheses, brackets and quotes).
func macroCall(s, name string) (start, end int, args []string, err error) {
	start = strings.Index(s, "$__"+name+"(")
	if start < 0 {
		return -1, -1, nil, nil
	}
	open := start + len("$__"+name)
	depth, last := 0, open+1
	var quote byte
	for i := open; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == '\\' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"' || c == '`':
			quote = c
		case c == '(' || c == '[':
			depth++
		case c == ')' || c == ']':
			depth--
			if depth == 0 {
				args = append(args, strings.TrimSpace(s[last:i]))
				return start, i + 1, args, nil
			}
		case c == ',' && depth == 1:
			args = append(args, strings.TrimSpace(s[last:i]))
			last = i + 1
		}
	}
	return -1, -1, nil, fmt.Errorf("$__%s( without its closing parenthesis", name)
}

var varRef = regexp.MustCompile(`^\$(?:\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*))$`)

func expandConditionalAll(sql string, env Env) (string, error) {
	for {
		start, end, args, err := macroCall(sql, "conditionalAll")
		if err != nil {
			return "", err
		}
		if start < 0 {
			return sql, nil
		}
		if len(args) != 2 {
			return "", fmt.Errorf("$__conditionalAll takes a condition and a variable, got %d arguments", len(args))
		}
		m := varRef.FindStringSubmatch(args[1])
		if m == nil {
			return "", fmt.Errorf("$__conditionalAll: %q is not a template variable", args[1])
		}
		name := m[1] + m[2]
		v, ok := env.Vars[name]
		if !ok {
			return "", fmt.Errorf("$__conditionalAll: no value for variable %q", name)
		}
		phrase := args[0]
		if v.All || (len(v.Values) == 1 && v.Values[0] == "") {
			phrase = "1=1"
		}
		sql = sql[:start] + phrase + sql[end:]
	}
}

// variable matches ${name}, ${name:format} and $name, but not the
// plugin's macros ($__name).
var variable = regexp.MustCompile(`\$\{([A-Za-z]\w*)(?::(\w+))?\}|\$([A-Za-z]\w*)`)

func expandVariables(sql string, env Env) (string, error) {
	var firstErr error
	out := variable.ReplaceAllStringFunc(sql, func(ref string) string {
		m := variable.FindStringSubmatch(ref)
		name, format := m[1]+m[3], m[2]
		v, ok := env.Vars[name]
		if !ok {
			if firstErr == nil {
				firstErr = fmt.Errorf("no value for template variable %q", name)
			}
			return ref
		}
		switch format {
		case "singlequote":
			quoted := make([]string, len(v.Values))
			for i, s := range v.Values {
				quoted[i] = "'" + strings.ReplaceAll(s, "'", `\'`) + "'"
			}
			if len(quoted) == 0 {
				return "''" // a variable without options is the empty string
			}
			return strings.Join(quoted, ",")
		case "":
			if len(v.Values) != 1 {
				if firstErr == nil {
					firstErr = fmt.Errorf("template variable %q has %d values: give it a format such as ${%s:singlequote}", name, len(v.Values), name)
				}
				return ref
			}
			return v.Values[0]
		}
		if firstErr == nil {
			firstErr = fmt.Errorf("template variable %q: format %q is not one this package expands", name, format)
		}
		return ref
	})
	return out, firstErr
}

// macro matches the name of any of the plugin's macros.
var macro = regexp.MustCompile(`\$__\w+`)

func expandTimeMacros(sql string, env Env) (string, error) {
	if env.To.Before(env.From) || env.IntervalSeconds <= 0 {
		return "", fmt.Errorf("time range %s to %s, interval %ds: want from <= to and a positive interval", env.From, env.To, env.IntervalSeconds)
	}
	from, to := strconv.FormatInt(env.From.Unix(), 10), strconv.FormatInt(env.To.Unix(), 10)
	for {
		start, end, args, err := macroCall(sql, "timeFilter")
		if err != nil {
			return "", err
		}
		if start < 0 {
			break
		}
		if len(args) != 1 || args[0] == "" {
			return "", fmt.Errorf("$__timeFilter takes one column, got %q", args)
		}
		col := args[0]
		sql = sql[:start] + col + " >= toDateTime(" + from + ") AND " + col + " <= toDateTime(" + to + ")" + sql[end:]
	}
	var unknown error
	sql = macro.ReplaceAllStringFunc(sql, func(m string) string {
		switch m {
		case "$__fromTime":
			return "toDateTime(" + from + ")"
		case "$__toTime":
			return "toDateTime(" + to + ")"
		case "$__interval_s":
			return strconv.Itoa(env.IntervalSeconds)
		}
		if unknown == nil {
			unknown = fmt.Errorf("macro %s: not one the dashboards may use (see Expand)", m)
		}
		return m
	})
	return sql, unknown
}
