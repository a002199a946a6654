package storm

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// SVG draws the run: devices committed over time against the line the
// quota bound allows (N devices in Bound), and below it the throttles per
// API per second.
func (r *Result) SVG(w io.Writer) {
	const W, H, top, mid, left = 900, 560, 40, 330, 60
	span := max(r.Elapsed.Seconds(), r.Bound.Seconds(), 1)
	x := func(sec float64) float64 { return left + (W-left-20)*sec/span }
	yc := func(n int) float64 { return top + (mid-top-20)*(1-float64(n)/float64(max(r.Devices, 1))) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", W, H)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="14">%d devices powered on within %s, aws-default quotas x%g: all committed after %.1f s, bound %.1f s (%s), efficiency %.2f</text>`+"\n",
		left, r.Devices, r.Window, r.Scale, r.Elapsed.Seconds(), r.Bound.Seconds(), r.BoundAPI, r.Efficiency())
	// axes
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, mid-20, W-20, mid-20)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, top, left, mid-20)
	fmt.Fprintf(&b, `<text x="5" y="%d">%d</text><text x="5" y="%.0f">0</text>`+"\n", top+4, r.Devices, yc(0)+4)
	for i := 0; i <= 5; i++ {
		sec := span * float64(i) / 5
		fmt.Fprintf(&b, `<text x="%.0f" y="%d" text-anchor="middle">%.0f s</text>`+"\n", x(sec), mid-5, sec)
	}
	// the bound: N devices at the limiting API's pace
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="gray" stroke-dasharray="6,4"/>`+"\n", x(0), yc(0), x(r.Bound.Seconds()), yc(r.Devices))
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="gray">quota bound (%s)</text>`+"\n", x(r.Bound.Seconds())+4, yc(r.Devices)+14, r.BoundAPI)
	// committed
	pts := []string{fmt.Sprintf("%.1f,%.1f", x(0), yc(0))}
	for _, s := range r.Timeline {
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.At.Seconds()), yc(s.Committed)))
	}
	fmt.Fprintf(&b, `<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="%s"/>`+"\n", strings.Join(pts, " "))
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#1f77b4">devices committed</text>`+"\n", left+8, top+14)
	// the binding API's work done: its accepted calls so far, in devices'
	// worth (calls ÷ calls per device). Against the bound line it shows
	// whether the API ran at its quota the whole time (parallel) or idled.
	if secs, c := r.PerSecond[r.BoundAPI], r.Calls[r.BoundAPI]; len(secs) > 0 && c != nil && c.OK > 0 {
		perDev := float64(c.OK) / float64(max(r.Devices, 1))
		last := 0
		for sec := range secs {
			last = max(last, sec)
		}
		pts := []string{fmt.Sprintf("%.1f,%.1f", x(0), yc(0))}
		sum := 0
		for sec := 0; sec <= last; sec++ {
			sum += secs[sec]
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(float64(sec+1)), yc(int(float64(sum)/perDev))))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="#2ca02c" stroke-width="2" points="%s"/>`+"\n", strings.Join(pts, " "))
		fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#2ca02c">%s calls so far, in devices' worth (%.2f per device)</text>`+"\n", left+8, top+28, r.BoundAPI, perDev)
	}
	// throttles per API per second
	apis := map[string]bool{}
	peak := 1
	for _, s := range r.Timeline {
		for op, n := range s.Throttles {
			apis[op] = true
			peak = max(peak, n)
		}
	}
	names := make([]string, 0, len(apis))
	for op := range apis {
		names = append(names, op)
	}
	sort.Strings(names)
	bot := float64(H - 30)
	yt := func(n int) float64 { return bot - (bot-mid-10)*float64(n)/float64(peak) }
	fmt.Fprintf(&b, `<line x1="%d" y1="%.0f" x2="%d" y2="%.0f" stroke="black"/>`+"\n", left, bot, W-20, bot)
	fmt.Fprintf(&b, `<text x="5" y="%d">%d/s</text><text x="%d" y="%d">throttles per second, by API (none: no line)</text>`+"\n", mid+14, peak, left+8, mid+14)
	colors := []string{"#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"}
	for i, op := range names {
		c := colors[i%len(colors)]
		pts := []string{}
		for _, s := range r.Timeline {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.At.Seconds()), yt(s.Throttles[op])))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" points="%s"/>`+"\n", c, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<text x="%d" y="%d" fill="%s">%s</text>`+"\n", W-200, mid+30+14*i, c, op)
	}
	b.WriteString("</svg>\n")
	io.WriteString(w, b.String())
}
