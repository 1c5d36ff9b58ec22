package monitor

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

func TestParseCommand(t *testing.T) {
	for _, c := range []struct {
		in, execute, args string
	}{
		{`{"execute":"query-status"}`, "query-status", ""},
		{` {"execute" : "stop" , "arguments" : null }` + "\n", "stop", ""},
		{`{"arguments":{"a":[1,{"b":"}"}]},"execute":"qom-get"}`, "qom-get", `{"a":[1,{"b":"}"}]}`},
		{`{"execute":"x\u002dy"}`, "x-y", ""},
		{`{"\u0065xecute":"stop"}`, "stop", ""},
	} {
		execute, args, err := ParseCommand([]byte(c.in))
		if err != nil || execute != c.execute || string(args) != c.args {
			t.Errorf("ParseCommand(%s) = %q, %s, %v; want %q, %s", c.in, execute, args, err, c.execute, c.args)
		}
	}
	for _, c := range []struct{ in, why string }{
		{``, "not a JSON object"},
		{`[]`, "not a JSON object"},
		{`{"execute":"stop"} {}`, "trailing data"},
		{`{"execute":"stop"`, "not a JSON object"},
		{`{"execute":"stop","id":"x"}`, `unknown member "id"`},
		{`{"Execute":"stop"}`, `unknown member "Execute"`},
		{`{"execute":"stop","execute":"quit"}`, `duplicate member "execute"`},
		{`{"execute":"stop","arguments":{},"arguments":{"a":1}}`, `duplicate member "arguments"`},
		{`{"execute":""}`, `"execute" must be a non-empty string`},
		{`{"execute":1}`, `"execute" must be a non-empty string`},
		{`{"arguments":{}}`, `"execute" must be a non-empty string`},
		{`{"execute":"stop","arguments":[1]}`, `"arguments" must be an object`},
	} {
		_, _, err := ParseCommand([]byte(c.in))
		if !errors.Is(err, ErrBadCommand) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("ParseCommand(%s): %v, want ErrBadCommand saying %s", c.in, err, c.why)
		}
	}
}

// TestParseCommandAllocations pins the edge's cost: a command with a
// known name and arguments is checked without an allocation, and its
// wire form takes one.
func TestParseCommandAllocations(t *testing.T) {
	cmd := []byte(`{"execute":"qom-get","arguments":{"path":"/machine","property":"type"}}`)
	if _, _, err := ParseCommand(cmd); err != nil {
		t.Fatal(err)
	}
	// AllocsPerRun counts the whole process: many runs drown what other
	// tests' goroutines allocate meanwhile.
	if n := testing.AllocsPerRun(5000, func() { _, _, _ = ParseCommand(cmd) }); n > 0 {
		t.Errorf("ParseCommand allocates %.0f times, want none for a name seen before", n)
	}
	execute, args, _ := ParseCommand(cmd)
	if n := testing.AllocsPerRun(100, func() { _ = AppendCommand(make([]byte, 0, 128), execute, args) }); n > 1 {
		t.Errorf("AppendCommand allocates %.0f times, want at most 1", n)
	}
}

// TestNameTableIsBounded: hostile names do not grow the table past its
// bound, and each still parses.
func TestNameTableIsBounded(t *testing.T) {
	names.mu.Lock()
	saved := names.m
	names.m = make(map[string]string)
	names.mu.Unlock()
	t.Cleanup(func() {
		names.mu.Lock()
		names.m = saved
		names.mu.Unlock()
	})
	for i := range maxNames + 10 {
		name := "x-hostile-" + strings.Repeat("a", i%50) + string(rune('a'+i%26)) + strconv.Itoa(i)
		got, _, err := ParseCommand([]byte(`{"execute":"` + name + `"}`))
		if err != nil || got != name {
			t.Fatalf("ParseCommand of %q = %q, %v", name, got, err)
		}
	}
	names.mu.RLock()
	n := len(names.m)
	names.mu.RUnlock()
	if n > maxNames {
		t.Errorf("the name table holds %d names, more than %d", n, maxNames)
	}
}
