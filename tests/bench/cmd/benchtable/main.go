// Command benchtable runs vmsup's benchmarks side by side with their
// baselines, prints one table and, with -out, writes docs/BENCHMARKS.md.
// `make bench` runs it. Each row of the table names the command that
// reproduces it (benchtable -only GROUP).
//
//	go run ./tests/bench/cmd/benchtable -out docs/BENCHMARKS.md
//	go run ./tests/bench/cmd/benchtable -only floor,contention -cpuprofile /tmp/cpu.prof
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/vmsup/vmsup/tests/bench"
)

func main() {
	out := flag.String("out", "", "write the report (markdown) to this file, for example docs/BENCHMARKS.md")
	only := flag.String("only", "", "comma-separated row groups to run (job, floor, info, daemon, contention, scale, real100, lifecycle, trace, overlay, ssh, security); all when empty")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	heapprofile := flag.String("heapprofile", "", "write a heap profile taken while vmsup runs 100 real QEMUs (real100) to this file")
	vmsupBin := flag.String("vmsup", "", "a built cmd/vmsup, with cmd/vmsupd next to it, for the daemon rows (default: build both)")
	child := flag.String("child", "", "internal: run one measurement in a child process")
	flag.Parse()

	if *child != "" {
		if err := bench.RunChild(*child); err != nil {
			fmt.Fprintln(os.Stderr, "benchtable child:", err)
			os.Exit(1)
		}
		return
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	modDir, err := moduleDir()
	if err != nil {
		fatal(err)
	}
	var groups []string
	if *only != "" {
		groups = strings.Split(*only, ",")
	}
	opts := bench.Options{
		Progress: func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
		},
		Repro:       "go run ./tests/bench/cmd/benchtable",
		VmsupBinary: *vmsupBin,
		ModuleDir:   modDir,
		HeapProfile: *heapprofile,
	}
	rep, err := bench.Run(ctx, opts, groups)
	if err != nil && rep == nil {
		fatal(err)
	}
	rep.Command = "go run ./tests/bench/cmd/benchtable -out docs/BENCHMARKS.md"
	fmt.Println()
	fmt.Printf("Machine: %d cores, %s, %s; %s; %s\n\n", rep.Machine.Cores, rep.Machine.CPUModel, rep.Machine.Accel, rep.Machine.Go, rep.Machine.QEMU)
	fmt.Print(rep.Table())
	if lost := rep.Lost(); len(lost) > 0 {
		fmt.Printf("\nvmsup missed %d goal(s); see the notes in the report.\n", len(lost))
	}
	if *out != "" {
		if err := os.WriteFile(*out, []byte(rep.Markdown()), 0o644); err != nil {
			fatal(err)
		}
		fmt.Fprintf(os.Stderr, "wrote %s\n", *out)
	}
	if err != nil {
		fatal(err)
	}
}

// moduleDir is the directory of go.mod.
func moduleDir() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("run benchtable from inside the vmsup module")
	}
	return filepath.Dir(mod), nil
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "benchtable:", err)
	bench.ReapAll()
	os.Exit(1)
}
