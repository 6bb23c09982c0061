// Command ameshctl is amesh's operator tool. Today it has one verb, bench: the side-by-side
// benchmark suite (direct, amesh's same-node modes and HBONE, ghostunnel and stunnel pairs) on a
// two-node netns lab that it builds and tears down on this machine.
package main

import (
	"fmt"
	"os"

	"github.com/amesh-dev/amesh/bench"
)

const usage = `ameshctl: amesh's operator tool.

Usage:
  ameshctl bench [flags]   run the side-by-side benchmark suite in a netns lab (root; -h for flags)
  ameshctl help
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "bench":
		self, err := os.Executable()
		if err != nil {
			fmt.Fprintln(os.Stderr, "ameshctl:", err)
			os.Exit(1)
		}
		os.Exit(bench.Main([]string{self, "bench"}, os.Args[2:]))
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "ameshctl: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
}
