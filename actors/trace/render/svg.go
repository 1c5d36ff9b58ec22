package render

import (
	"bufio"
	"encoding/xml"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/vmsup/vmsup/actors/trace/record"
)

// Layout of the SVG sequence diagram, in pixels.
const (
	svgMargin    = 30
	svgColumn    = 190
	svgBoxWidth  = 160
	svgBoxHeight = 32
	svgRow       = 32
	svgCharWidth = 7 // estimate for 12px sans-serif
	svgActWidth  = 12
)

// WriteSVG writes a self-contained SVG sequence diagram of the records,
// with the same content as WriteMermaid: a box and a lifeline per
// participant, arrows with labels for messages, QMP commands and replies,
// activation bars and notes for jobs. The output depends only on the
// records.
func WriteSVG(w io.Writer, records []record.Record) error {
	seq := buildSequence(records)
	col := make(map[string]int, len(seq.participants))
	for i, p := range seq.participants {
		col[p] = i
	}
	x := func(p string) int { return svgMargin + svgColumn/2 + col[p]*svgColumn }

	// First pass: rows, activation bars, and the height of the diagram.
	type bar struct{ p, y0, y1, depth int }
	var (
		bars   []bar
		open   = map[int][]int{} // participant → start y of open activations
		body   strings.Builder
		y      = svgMargin + svgBoxHeight + 24
		maxX   = svgMargin*2 + len(seq.participants)*svgColumn
		labels []string
	)
	for _, s := range seq.steps {
		switch s.kind {
		case stepActivate:
			open[col[s.from]] = append(open[col[s.from]], y-svgRow/2)
		case stepDeactivate:
			stack := open[col[s.from]]
			if len(stack) == 0 {
				continue
			}
			bars = append(bars, bar{col[s.from], stack[len(stack)-1], y - svgRow/2, len(stack) - 1})
			open[col[s.from]] = stack[:len(stack)-1]
		case stepArrow, stepReply:
			text := clip(s.text, maxLabel)
			dash := ""
			if s.kind == stepReply {
				dash = ` stroke-dasharray="6,4"`
			}
			x1, x2 := x(s.from), x(s.to)
			// An arrow leaves from the edge of an activation bar.
			if len(open[col[s.from]]) > 0 && x1 != x2 {
				if x2 > x1 {
					x1 += svgActWidth / 2
				} else {
					x1 -= svgActWidth / 2
				}
			}
			if x1 == x2 {
				fmt.Fprintf(&body, `<path d="M%d %d h40 v14 h-34" fill="none" stroke="#333"%s marker-end="url(#arrow)"/>`+"\n", x1+svgActWidth/2, y-8, dash)
				labels = append(labels, fmt.Sprintf(`<text x="%d" y="%d">%s</text>`, x1+48, y+2, xmlText(text)))
				maxX = max(maxX, x1+48+textWidth(text)+svgMargin)
				y += svgRow / 2
			} else {
				end := x2 - svgActWidth/2
				if x2 < x1 {
					end = x2 + svgActWidth/2
				}
				fmt.Fprintf(&body, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"%s marker-end="url(#arrow)"/>`+"\n", x1, y, end, y, dash)
				labels = append(labels, fmt.Sprintf(`<text x="%d" y="%d" text-anchor="middle">%s</text>`, (x1+x2)/2, y-6, xmlText(text)))
				maxX = max(maxX, (x1+x2)/2+textWidth(text)/2+svgMargin)
			}
			y += svgRow
		case stepNote:
			text := clip(s.text, maxLabel)
			wNote := max(textWidth(text)+16, svgBoxWidth-40)
			cx := x(s.from)
			fmt.Fprintf(&body, `<rect x="%d" y="%d" width="%d" height="22" fill="#fff8c4" stroke="#a89a3c"/>`+"\n", cx-wNote/2, y-16, wNote)
			labels = append(labels, fmt.Sprintf(`<text x="%d" y="%d" text-anchor="middle">%s</text>`, cx, y-1, xmlText(text)))
			maxX = max(maxX, cx+wNote/2+svgMargin)
			y += svgRow
		}
	}
	// Activations still open run to the end.
	for p := range seq.participants {
		for depth, y0 := range open[p] {
			bars = append(bars, bar{p, y0, y, depth})
		}
	}
	footer := y + 8
	height := footer + svgBoxHeight + svgMargin

	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, `<?xml version="1.0" encoding="UTF-8"?>`+"\n")
	fmt.Fprintf(bw, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", maxX, height, maxX, height)
	fmt.Fprintf(bw, "<title>%s</title>\n", xmlText(seq.title()))
	bw.WriteString(`<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0 0 L10 5 L0 10 z" fill="#333"/></marker></defs>` + "\n")
	fmt.Fprintf(bw, `<rect x="0" y="0" width="%d" height="%d" fill="#ffffff"/>`+"\n", maxX, height)
	for _, p := range seq.participants {
		fmt.Fprintf(bw, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#999" stroke-dasharray="4,4"/>`+"\n", x(p), svgMargin+svgBoxHeight, x(p), footer)
	}
	for _, b := range bars {
		fmt.Fprintf(bw, `<rect x="%d" y="%d" width="%d" height="%d" fill="#dde6f7" stroke="#4a6fa5"/>`+"\n",
			svgMargin+svgColumn/2+b.p*svgColumn-svgActWidth/2+b.depth*4, b.y0, svgActWidth, max(b.y1-b.y0, 4))
	}
	bw.WriteString(body.String())
	for _, l := range labels {
		bw.WriteString(l + "\n")
	}
	for _, p := range seq.participants {
		for _, top := range []int{svgMargin, footer} {
			fmt.Fprintf(bw, `<rect x="%d" y="%d" width="%d" height="%d" rx="4" fill="#eef2fa" stroke="#4a6fa5"/>`+"\n", x(p)-svgBoxWidth/2, top, svgBoxWidth, svgBoxHeight)
			fmt.Fprintf(bw, `<text x="%d" y="%d" text-anchor="middle" font-weight="bold">%s</text>`+"\n", x(p), top+svgBoxHeight/2+4, xmlText(clip(p, 22)))
		}
	}
	bw.WriteString("</svg>\n")
	return bw.Flush()
}

func textWidth(s string) int {
	return utf8.RuneCountInString(s) * svgCharWidth
}

func xmlText(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
