package render_test

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/vmsup/vmsup/actors/trace/internal/fixture"
	"github.com/vmsup/vmsup/actors/trace/render"
)

func TestMermaidGolden(t *testing.T) {
	var buf bytes.Buffer
	if err := render.WriteMermaid(&buf, fixture.StartRequest()); err != nil {
		t.Fatal(err)
	}
	golden(t, "start.mmd", buf.Bytes())

	// The order of the input does not matter.
	shuffled := fixture.StartRequest()
	rand.New(rand.NewPCG(3, 4)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	var again bytes.Buffer
	if err := render.WriteMermaid(&again, shuffled); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Errorf("output depends on the order of the records:\n%s\n---\n%s", buf.Bytes(), again.Bytes())
	}
}

func TestMermaidParticipantsAndEscaping(t *testing.T) {
	recs := fixture.StartRequest()
	recs[4].QMP.Outcome = "error: #1; <bad>\nthing"
	var buf bytes.Buffer
	if err := render.WriteMermaid(&buf, recs); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	var order []string
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "participant "); ok {
			if _, name, ok := strings.Cut(rest, " as "); ok {
				rest = name
			}
			order = append(order, rest)
		}
	}
	if want := []string{"api", "domain/web1", "monitor/web1", "QEMU"}; !slices.Equal(order, want) {
		t.Errorf("participants %v, want %v", order, want)
	}
	if !strings.Contains(out, "QEMU-->>monitor_web1: error: #35;1#59; #lt;bad#gt; thing (2.4ms)") {
		t.Errorf("the error outcome is not escaped on one line:\n%s", out)
	}
}

func TestSVG(t *testing.T) {
	var buf bytes.Buffer
	if err := render.WriteSVG(&buf, fixture.StartRequest()); err != nil {
		t.Fatal(err)
	}
	golden(t, "start.svg", buf.Bytes())

	// Well-formed XML whose root is an svg element.
	dec := xml.NewDecoder(bytes.NewReader(buf.Bytes()))
	var root string
	var texts []string
	inText := false
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v", err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = tok.Name.Local
				if tok.Name.Space != "http://www.w3.org/2000/svg" {
					t.Errorf("root namespace %q", tok.Name.Space)
				}
			}
			inText = tok.Name.Local == "text"
		case xml.CharData:
			if inText {
				texts = append(texts, string(tok))
			}
		case xml.EndElement:
			inText = false
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q, want svg", root)
	}
	for _, p := range []string{"api", "domain/web1", "monitor/web1", "QEMU"} {
		if !slices.Contains(texts, p) {
			t.Errorf("participant %q is not in the SVG", p)
		}
	}
	for _, label := range []string{"domain.StartRequest (wait 40µs)", "query-status", "ok (1.2ms)"} {
		if !slices.Contains(texts, label) {
			t.Errorf("label %q is not in the SVG", label)
		}
	}

	// Text that needs escaping stays well-formed.
	recs := fixture.StartRequest()
	recs[4].QMP.Outcome = `error: <"&'>`
	buf.Reset()
	if err := render.WriteSVG(&buf, recs); err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(buf.Bytes(), new(struct{})); err != nil {
		t.Fatalf("escaped SVG: %v", err)
	}
}
