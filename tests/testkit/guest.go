package testkit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// GuestReady is the line the test guest's /init prints on the serial
// console once it handles the ACPI power button (tests/guest/init).
const GuestReady = "guest ready"

// Guest is the tiny test guest that tests/guest/build-guest.sh builds.
type Guest struct {
	Kernel string // vmlinuz
	Initrd string // initrd.img
	// Cache is the cache the guest is in: ${VMSUP_CACHE:-<repo>/.cache},
	// absolute.
	Cache string
	// Repo is the root of the vmsup checkout.
	Repo string
}

var (
	guestOnce sync.Once
	guest     Guest
	guestErr  error
)

// RequireGuest returns the test guest (tests/guest/README.md). It uses the
// one in ${VMSUP_CACHE:-<repo>/.cache}/guest when it was built from the
// current build-guest.sh and init; otherwise it runs build-guest.sh (at most
// 5 minutes, once per test binary) and fails the test with the script's
// output when that fails. It requires QEMU.
func RequireGuest(t testing.TB) Guest {
	t.Helper()
	RequireQEMU(t)
	guestOnce.Do(func() { guest, guestErr = locateGuest() })
	if guestErr != nil {
		t.Fatal(guestErr)
	}
	return guest
}

// RepoRoot returns the root of the vmsup checkout: the nearest directory
// above the working directory (a package directory, under go test) that
// holds go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

func locateGuest() (Guest, error) {
	repo, err := RepoRoot()
	if err != nil {
		return Guest{}, fmt.Errorf("test guest: %w", err)
	}
	cache := os.Getenv("VMSUP_CACHE")
	if cache == "" {
		cache = filepath.Join(repo, ".cache")
	}
	if cache, err = filepath.Abs(cache); err != nil {
		return Guest{}, err
	}
	dir := filepath.Join(cache, "guest")
	img := Guest{Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.img"), Cache: cache, Repo: repo}
	script := filepath.Join(repo, "tests", "guest", "build-guest.sh")
	recipe, err := guestRecipe(script, filepath.Join(repo, "tests", "guest", "init"))
	if err != nil {
		return Guest{}, fmt.Errorf("test guest: %w", err)
	}
	if guestBuilt(img, filepath.Join(dir, "stamp"), recipe) {
		return img, nil
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = append(os.Environ(), "VMSUP_CACHE="+cache)
	cmd.WaitDelay = 10 * time.Second
	began := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return Guest{}, fmt.Errorf("test guest: %s failed after %s: %v\n%s", script, time.Since(began).Round(time.Second), err, out)
	}
	if !guestBuilt(img, filepath.Join(dir, "stamp"), recipe) {
		return Guest{}, fmt.Errorf("test guest: %s succeeded but %s has no guest built from the current recipe %s\n%s", script, dir, recipe, out)
	}
	return img, nil
}

// guestRecipe is the hash that build-guest.sh writes as "recipe=" in its
// stamp: SHA-256 of the script followed by the init script.
func guestRecipe(files ...string) (string, error) {
	h := sha256.New()
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// guestBuilt reports whether the kernel, the initrd and a stamp with this
// recipe exist.
func guestBuilt(img Guest, stamp, recipe string) bool {
	for _, f := range []string{img.Kernel, img.Initrd} {
		if st, err := os.Stat(f); err != nil || st.Size() == 0 {
			return false
		}
	}
	data, err := os.ReadFile(stamp)
	if err != nil {
		return false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if sc.Text() == "recipe="+recipe {
			return true
		}
	}
	return false
}
