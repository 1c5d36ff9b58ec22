package trace

import (
	"strings"
	"testing"

	"github.com/vmsup/vmsup/actors"
)

func TestStampRoundTrip(t *testing.T) {
	st := stamp{enqueued: 12345, parent: "p-1", trace: "t-1", sender: "driver/web1@2"}
	v := st.encode()
	if st.span == "" || !strings.HasPrefix(st.span, spanPrefix+"-s") {
		t.Fatalf("encode made span %q", st.span)
	}
	if got := parseStamp(v); got != st {
		t.Fatalf("parseStamp(%q) = %+v, want %+v", v, got, st)
	}
	again := st
	if v2 := again.encode(); v2 != v || again.span != st.span {
		t.Fatalf("encoding a stamp with a span changed it: %q, %q", v2, again.span)
	}
	if got := parseStampTime(v, false); got.enqueued != 0 || got.span != st.span {
		t.Fatalf("parseStampTime without time = %+v", got)
	}
	if got := parseStamp(""); got != (stamp{}) {
		t.Fatalf("empty header: %+v", got)
	}
	if got := parseStamp("7|s"); got.enqueued != 7 || got.span != "s" || got.trace != "" {
		t.Fatalf("short header: %+v", got)
	}
	if a, b := NewSpanID(), NewSpanID(); a == b {
		t.Fatal("NewSpanID repeats")
	}
}

func TestResolve(t *testing.T) {
	req := func(id, parent string) any {
		return &struct{ actors.Request }{actors.Request{RequestID: id, ParentID: parent}}
	}
	for _, c := range []struct {
		name string
		msg  any
		st   stamp
		want SpanContext
	}{
		{"header only", 1, stamp{span: "s", parent: "p", trace: "t"}, SpanContext{"t", "s", "p"}},
		{"no parent: under the root", 1, stamp{span: "s", trace: "t"}, SpanContext{"t", "s", "t"}},
		{"untraced", 1, stamp{span: "s"}, SpanContext{"", "s", ""}},
		{"the Request wins", req("r", "job-1"), stamp{span: "s", parent: "p", trace: "r"}, SpanContext{"r", "s", "job-1"}},
		{"Request without parent", req("r", ""), stamp{span: "s", parent: "p", trace: "r"}, SpanContext{"r", "s", "p"}},
		{"parent of another trace", req("r", ""), stamp{span: "s", parent: "p", trace: "x"}, SpanContext{"r", "s", "r"}},
	} {
		if got := resolve(c.msg, c.st); got != c.want {
			t.Errorf("%s: resolve = %+v, want %+v", c.name, got, c.want)
		}
	}
}
