package monitor

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
)

// ParseCommand checks a raw QMP command from outside vmsup, once, where it
// enters: exactly one JSON object whose members are "execute" (a non-empty
// string) and optionally "arguments" (an object or null), spelled exactly
// so (QMP's keys are case-sensitive, unlike encoding/json's matching),
// each at most once, with nothing after it. It returns the command's name
// and its arguments (nil when absent or null; a slice of command, not a
// copy). Build the wire form with AppendCommand; the transport then sends
// it without decoding it again. Errors wrap ErrBadCommand and say why.
//
// It allocates only the name: it checks the syntax with json.Valid and
// walks the object's top-level members without decoding them.
func ParseCommand(command []byte) (execute string, args json.RawMessage, err error) {
	obj := bytes.TrimSpace(command)
	if len(obj) == 0 || obj[0] != '{' || !json.Valid(obj) {
		return "", nil, badCommand(command, notObject(obj))
	}
	var exe, arg []byte
	var bad error
	walkMembers(obj, func(key, value []byte) bool {
		switch {
		case string(key) == "execute" && exe == nil:
			exe = value
		case string(key) == "arguments" && arg == nil:
			arg = value
		case string(key) == "execute" || string(key) == "arguments":
			bad = fmt.Errorf("duplicate member %q", key)
		default:
			bad = fmt.Errorf("unknown member %q", key)
		}
		return bad == nil
	})
	if bad != nil {
		return "", nil, badCommand(command, bad.Error())
	}
	if execute = jsonString(exe); execute == "" {
		return "", nil, badCommand(command, `"execute" must be a non-empty string`)
	}
	if len(arg) > 0 && string(arg) != "null" {
		if arg[0] != '{' {
			return "", nil, badCommand(command, `"arguments" must be an object`)
		}
		args = arg
	}
	return execute, args, nil
}

// AppendCommand appends the wire form of a command, {"execute":NAME} or
// {"execute":NAME,"arguments":ARGS}, to dst. args must be a JSON object
// (ParseCommand checked it) or empty.
func AppendCommand(dst []byte, execute string, args json.RawMessage) []byte {
	dst = append(dst, `{"execute":`...)
	dst, _ = appendJSONString(dst, execute)
	if len(args) > 0 {
		dst = append(dst, `,"arguments":`...)
		dst = append(dst, args...)
	}
	return append(dst, '}')
}

// appendJSONString appends s as a JSON string.
func appendJSONString(dst []byte, s string) ([]byte, error) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x7f {
			b, err := json.Marshal(s)
			return append(dst, b...), err
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"'), nil
}

func badCommand(command []byte, why string) error {
	return fmt.Errorf("%w %s: %s", ErrBadCommand, truncateCommand(command), why)
}

// notObject says why obj, which failed json.Valid or is no object, is not
// one command object.
func notObject(obj []byte) string {
	dec := json.NewDecoder(bytes.NewReader(obj))
	var first json.RawMessage
	if dec.Decode(&first) == nil && len(first) > 0 && first[0] == '{' {
		return "trailing data after the object"
	}
	return "not a JSON object"
}

func truncateCommand(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}

// commandHeader reads what the transport needs of a command given as bytes
// (qmp.Monitor's Run): the name in "execute" (or "exec-oob"), and whether
// it has an "id". Other members pass through untouched. obj must be
// trimmed.
func commandHeader(obj []byte) (name []byte, hasID bool, err error) {
	if len(obj) == 0 || obj[0] != '{' || !json.Valid(obj) {
		return nil, false, errors.New("not a JSON object")
	}
	var exe, oob []byte
	walkMembers(obj, func(key, value []byte) bool {
		switch string(key) {
		case "execute":
			exe = value
		case "exec-oob":
			oob = value
		case "id":
			hasID = true
		}
		return true
	})
	if exe == nil {
		exe = oob
	}
	return exe, hasID, nil
}

// jsonString returns the string a JSON string value holds, or "" when v
// is no string.
func jsonString(v []byte) string {
	if len(v) < 2 || v[0] != '"' {
		return ""
	}
	if inner := v[1 : len(v)-1]; plainASCII(inner) {
		return names.intern(inner)
	}
	var s string
	if json.Unmarshal(v, &s) != nil {
		return ""
	}
	return s
}

// plainASCII reports whether b is printable ASCII without escapes: a JSON
// string's bytes are then its value.
func plainASCII(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c >= 0x7f || c == '\\' {
			return false
		}
	}
	return true
}

// walkMembers calls fn with each top-level member of obj, a JSON object
// that json.Valid accepted, in order, until fn returns false. A key is
// given decoded when it has escapes (rare: it is then allocated), as its
// bytes otherwise; a value is given as its raw bytes.
func walkMembers(obj []byte, fn func(key, value []byte) bool) {
	i := skipSpace(obj, 1) // past '{'
	for i < len(obj) && obj[i] == '"' {
		end, escaped := skipString(obj, i)
		key := obj[i+1 : end-1]
		if escaped {
			var s string
			if json.Unmarshal(obj[i:end], &s) == nil {
				key = []byte(s)
			}
		}
		i = skipSpace(obj, skipSpace(obj, end)+1) // past ':'
		vend := skipValue(obj, i)
		if !fn(key, obj[i:vend]) {
			return
		}
		i = skipSpace(obj, vend)
		if i >= len(obj) || obj[i] != ',' {
			return // '}'
		}
		i = skipSpace(obj, i+1)
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] == '"',
// and whether it has escapes.
func skipString(b []byte, i int) (end int, escaped bool) {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			escaped = true
			i++
		case '"':
			return i + 1, escaped
		}
	}
	return len(b), escaped
}

// skipValue returns the index after the valid JSON value starting at b[i].
func skipValue(b []byte, i int) int {
	depth := 0
	for i < len(b) {
		switch b[i] {
		case '"':
			i, _ = skipString(b, i)
			if depth == 0 {
				return i
			}
			continue
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				return i + 1
			}
			if depth < 0 {
				return i // the end of the enclosing object
			}
		case ',', ' ', '\t', '\n', '\r':
			if depth == 0 {
				return i
			}
		}
		i++
	}
	return i
}

// names interns command names: a job's name is then no allocation. QEMU
// has a few hundred commands; the table stops growing at maxNames, so
// hostile names cost an allocation each and nothing more.
var names = nameTable{m: make(map[string]string)}

const (
	maxNames    = 1024
	maxNameSize = 64
)

type nameTable struct {
	mu sync.RWMutex
	m  map[string]string
}

func (t *nameTable) intern(b []byte) string {
	t.mu.RLock()
	s, ok := t.m[string(b)]
	t.mu.RUnlock()
	if ok {
		return s
	}
	s = string(b)
	if len(s) > maxNameSize {
		return s
	}
	t.mu.Lock()
	if len(t.m) < maxNames {
		t.m[s] = s
	}
	t.mu.Unlock()
	return s
}
