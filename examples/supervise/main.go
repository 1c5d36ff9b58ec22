// Command supervise boots one VM under vmsup, as an embedding Go service
// would: it defines the VM, starts it, prints its lifecycle events and its
// serial console, and on Ctrl-C shuts it down gracefully (destroying it if
// the guest does not power off in time).
//
//	go run ./examples/supervise -kernel .cache/guest/vmlinuz -initrd .cache/guest/initrd.img
//
// Without -kernel it runs a QEMU with "-machine none": a monitor and no guest.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "supervise:", err)
		os.Exit(1)
	}
}

func run() error {
	kernel := flag.String("kernel", "", "guest kernel (absolute or relative path); empty runs -machine none")
	initrd := flag.String("initrd", "", "guest initrd")
	appendLine := flag.String("append", "console=ttyS0 panic=-1", "kernel command line")
	memory := flag.String("memory", "256M", "guest memory")
	stateDir := flag.String("state-dir", "", "state dir (default: a new temp dir, removed at exit)")
	flag.Parse()

	if *stateDir == "" {
		dir, err := os.MkdirTemp("", "vmsup-demo")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		*stateDir = dir
	}
	logger := zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: "15:04:05.000"}).With().Timestamp().Logger()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	open, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := driver.Open(open, driver.Config{StateDir: *stateDir, Logger: &logger})
	if err != nil {
		return err
	}
	defer d.Close(context.Background())

	size, err := domain.ParseSize(*memory)
	if err != nil {
		return fmt.Errorf("-memory: %w", err)
	}
	serialLog := filepath.Join(*stateDir, "serial.log")
	spec := &domain.Spec{Name: "demo", Machine: "none", Memory: size, Accel: "auto"}
	if *kernel != "" {
		spec.Machine = "q35"
		spec.Append = *appendLine
		spec.Serial = &domain.Serial{Type: "file", Path: serialLog}
		if spec.Kernel, err = filepath.Abs(*kernel); err != nil {
			return err
		}
		if *initrd != "" {
			if spec.Initrd, err = filepath.Abs(*initrd); err != nil {
				return err
			}
		}
	}
	if _, err := d.Define(open, spec); err != nil {
		return err
	}
	vm := d.Domain("demo")
	events := vm.Subscribe(ctx, 0)
	go func() {
		for ev := range events.Events() {
			logger.Info().Str("domain", ev.Domain).Str("state", string(ev.State)).Str("reason", string(ev.Reason)).Msgf("event %s", ev.Type)
		}
	}()

	startCtx, cancelStart := context.WithTimeout(ctx, 60*time.Second)
	defer cancelStart()
	if err := vm.Start(startCtx, driver.StartOptions{}); err != nil {
		return err
	}
	info, err := vm.Info(ctx)
	if err != nil {
		return err
	}
	logger.Info().Int("pid", info.PID).Str("uuid", info.UUID).Msg("VM running; Ctrl-C shuts it down")

	consoleDone := make(chan struct{})
	if spec.Serial != nil {
		go func() {
			defer close(consoleDone)
			follow(ctx, serialLog, os.Stdout)
		}()
	} else {
		close(consoleDone)
	}

	// Wait for Ctrl-C or for the VM to stop on its own.
	for {
		select {
		case <-ctx.Done():
			<-consoleDone
			return shutdown(vm, &logger)
		case <-time.After(500 * time.Millisecond):
			in, err := vm.Info(context.Background())
			if err != nil {
				return err
			}
			if in.State == domain.StateShutoff || in.State == domain.StateCrashed {
				logger.Info().Msgf("VM stopped: %s/%s", in.State, in.Reason)
				return nil
			}
		}
	}
}

func shutdown(vm *driver.Domain, logger *zerolog.Logger) error {
	logger.Info().Msg("shutting down (ACPI powerdown, up to 30s)")
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	err := vm.Shutdown(ctx, driver.ShutdownOptions{Timeout: 30 * time.Second})
	if err == nil {
		logger.Info().Msg("guest powered off")
		return nil
	}
	logger.Warn().Err(err).Msg("graceful shutdown failed; destroying")
	if derr := vm.Destroy(ctx); derr != nil && !errors.Is(derr, domain.ErrNotRunning) {
		return derr
	}
	return nil
}

// follow copies what is appended to path to w until ctx ends.
func follow(ctx context.Context, path string, w io.Writer) {
	var f *os.File
	for f == nil {
		var err error
		if f, err = os.Open(path); err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	defer f.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			_, _ = w.Write(buf[:n])
		}
		if err == nil {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}
