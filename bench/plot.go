package bench

import (
	"encoding/json"
	"flag"
	"fmt"
	"image/color"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var palette = []color.Color{
	color.RGBA{0x1f, 0x77, 0xb4, 0xff},
	color.RGBA{0xff, 0x7f, 0x0e, 0xff},
	color.RGBA{0x2c, 0xa0, 0x2c, 0xff},
	color.RGBA{0xd6, 0x27, 0x28, 0xff},
}

// writePlot draws latency percentiles (fixed 1,000 RPS) and throughput per scenario, one panel
// above the other, into a PNG at path.
func writePlot(path string, rs []Result) error {
	names := make([]string, len(rs))
	for i, r := range rs {
		names[i] = shortName(r.Scenario)
	}
	lat := plot.New()
	lat.Title.Text = "1 KiB request/response at 1,000 RPS (fortio), lower is better"
	lat.Y.Label.Text = "latency µs"
	pcts := []string{"p50", "p90", "p99", "p99.9"}
	w := vg.Points(9)
	for i, p := range pcts {
		vals := make(plotter.Values, len(rs))
		for j, r := range rs {
			vals[j] = r.RR1000[p]
		}
		b, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		b.Color, b.LineStyle.Width = palette[i], 0
		b.Offset = w * vg.Length(i-len(pcts)/2)
		lat.Add(b)
		lat.Legend.Add(p, b)
	}
	lat.Legend.Top, lat.Legend.Left = true, true
	lat.NominalX(names...)
	lat.X.Min, lat.X.Max = -0.6, float64(len(rs))-0.4

	thr := plot.New()
	thr.Title.Text = "throughput (iperf3; none for the HTTP scenarios), higher is better"
	thr.Y.Label.Text = "Gbit/s"
	for i, streams := range []string{"1 stream", "4 streams"} {
		vals := make(plotter.Values, len(rs))
		for j, r := range rs {
			vals[j] = r.Gbps1
			if i == 1 {
				vals[j] = r.Gbps4
			}
		}
		b, err := plotter.NewBarChart(vals, vg.Points(14))
		if err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		b.Color, b.LineStyle.Width = palette[i], 0
		b.Offset = vg.Points(14) * vg.Length(2*i-1) / 2
		thr.Add(b)
		thr.Legend.Add(streams, b)
	}
	thr.Legend.Top, thr.Legend.Left = true, true
	thr.NominalX(names...)
	thr.X.Min, thr.X.Max = -0.6, float64(len(rs))-0.4

	return writeStacked(path, 13*vg.Inch, 10*vg.Inch, lat, thr)
}

// writeStacked draws the plots one above the other into a PNG of the size given, at path.
func writeStacked(path string, width, height vg.Length, plots ...*plot.Plot) error {
	img := vgimg.New(width, height)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(plots), Cols: 1, PadTop: vg.Points(8), PadBottom: vg.Points(8), PadX: vg.Points(8), PadY: vg.Points(16)}
	rows := make([][]*plot.Plot, len(plots))
	for i, p := range plots {
		rows[i] = []*plot.Plot{p}
	}
	canvases := plot.Align(rows, tiles, dc)
	for i, p := range plots {
		p.Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	defer f.Close()
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	return f.Close()
}

// replot is `bench plot -in results.json -out results.png`: redraw a saved run.
func replot(args []string) int {
	fs := flag.NewFlagSet("plot", flag.ExitOnError)
	in := fs.String("in", "bench-out/results.json", "results of a run")
	out := fs.String("out", "bench-out/results.png", "PNG to write")
	fs.Parse(args)
	b, err := os.ReadFile(*in)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var saved struct{ Results []Result }
	if err := json.Unmarshal(b, &saved); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := writePlot(*out, saved.Results); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// shortName fits a scenario under its bar group.
func shortName(s string) string {
	switch s {
	case "direct same-node (no mesh)":
		return "direct same-node"
	case "direct cross-node (no mesh)":
		return "direct cross-node"
	case "amesh same-node (splice)":
		return "amesh same (splice)"
	case "amesh same-node (hbone)":
		return "amesh same (hbone)"
	case "amesh same-node (kernel)":
		return "amesh same (kernel)"
	case "amesh cross-node (HBONE)":
		return "amesh cross (HBONE)"
	case httpDirect:
		return "direct cross (HTTP)"
	case httpNoWaypoint:
		return "amesh cross (HTTP)"
	case httpWaypoint:
		return "amesh via waypoint"
	}
	return s
}
