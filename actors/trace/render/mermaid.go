package render

import (
	"bufio"
	"io"
	"strconv"
	"strings"

	"github.com/vmsup/vmsup/actors/trace/record"
)

// maxLabel bounds the length of a label in a diagram.
const maxLabel = 96

// WriteMermaid writes a Mermaid sequenceDiagram of the records, normally
// those of one request (Recorder.ByTrace). Participants appear in the order
// they are first involved (api, driver, domain/NAME, monitor/NAME, QEMU):
// an arrow per message with its type and mailbox wait, an arrow to QEMU per
// QMP command and its reply with outcome and duration, an activation with a
// note per job, and the API call's reply. The output depends only on the
// records.
func WriteMermaid(w io.Writer, records []record.Record) error {
	seq := buildSequence(records)
	ids := participantIDs(seq.participants)
	bw := bufio.NewWriter(w)
	bw.WriteString("sequenceDiagram\n")
	bw.WriteString("    %% " + mermaidText(seq.title()) + "\n")
	for _, p := range seq.participants {
		if ids[p] == p {
			bw.WriteString("    participant " + p + "\n")
		} else {
			bw.WriteString("    participant " + ids[p] + " as " + mermaidText(p) + "\n")
		}
	}
	for _, s := range seq.steps {
		switch s.kind {
		case stepArrow:
			bw.WriteString("    " + ids[s.from] + "->>" + ids[s.to] + ": " + mermaidText(s.text) + "\n")
		case stepReply:
			bw.WriteString("    " + ids[s.from] + "-->>" + ids[s.to] + ": " + mermaidText(s.text) + "\n")
		case stepActivate:
			bw.WriteString("    activate " + ids[s.from] + "\n")
		case stepDeactivate:
			bw.WriteString("    deactivate " + ids[s.from] + "\n")
		case stepNote:
			bw.WriteString("    Note over " + ids[s.from] + ": " + mermaidText(s.text) + "\n")
		}
	}
	return bw.Flush()
}

// participantIDs gives each participant a Mermaid identifier: its name
// with characters other than letters, digits and '_' replaced by '_',
// made unique.
func participantIDs(names []string) map[string]string {
	ids := make(map[string]string, len(names))
	used := map[string]bool{}
	for _, n := range names {
		var b strings.Builder
		for _, r := range n {
			if r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
				b.WriteRune(r)
			} else {
				b.WriteByte('_')
			}
		}
		id := b.String()
		if id == "" || id[0] >= '0' && id[0] <= '9' {
			id = "p_" + id
		}
		base := id
		for i := 2; used[id] || isMermaidKeyword(id); i++ {
			id = base + "_" + strconv.Itoa(i)
		}
		used[id] = true
		ids[n] = id
	}
	return ids
}

func isMermaidKeyword(id string) bool {
	switch strings.ToLower(id) {
	case "end", "participant", "actor", "activate", "deactivate", "note", "loop", "alt", "else", "opt", "par", "and", "rect", "critical", "break", "box", "autonumber", "title", "links", "link", "create", "destroy":
		return true
	}
	return false
}

// mermaidText makes text safe for a message or note: one line, bounded,
// with the characters that Mermaid treats specially written as entity
// codes.
func mermaidText(s string) string {
	s = clip(s, maxLabel)
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '#':
			b.WriteString("#35;")
		case ';':
			b.WriteString("#59;")
		case '<':
			b.WriteString("#lt;")
		case '>':
			b.WriteString("#gt;")
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
