package overlay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// needQemuImg returns the path of the real qemu-img, or skips the test.
func needQemuImg(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Skipf("qemu-img not installed: %v", err)
	}
	return p
}

func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// fileState is what must not change about a base image.
type fileState struct {
	sum   [32]byte
	size  int64
	mtime time.Time
	mode  fs.FileMode
}

func stateOf(t *testing.T, path string) fileState {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fileState{sha256.Sum256(b), st.Size(), st.ModTime(), st.Mode()}
}

// makeBases writes a raw and a qcow2 base with known data, their mtimes
// set in the past so that any write would show.
func makeBases(t *testing.T, dir string) (raw, qcow string) {
	t.Helper()
	raw = filepath.Join(dir, "base,1.raw") // a comma, which QEMU's option syntax treats specially
	data := bytes.Repeat([]byte("vmsup-base-data!"), (4<<20)/16)
	if err := os.WriteFile(raw, data, 0o644); err != nil {
		t.Fatal(err)
	}
	qcow = filepath.Join(dir, "base.qcow2")
	qemuImg(t, "convert", "-q", "-f", "raw", "-O", "qcow2", raw, qcow)
	qemuImg(t, "resize", "-q", "-f", "qcow2", qcow, "8M")
	past := time.Now().Add(-time.Hour).Truncate(time.Second)
	for _, p := range []string{raw, qcow} {
		if err := os.Chtimes(p, past, past); err != nil {
			t.Fatal(err)
		}
	}
	return raw, qcow
}

// dirEntries lists the names in dir.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestInfo(t *testing.T) {
	bin := needQemuImg(t)
	dir := t.TempDir()
	raw, qcow := makeBases(t, dir)
	q := QemuImg{Path: bin}
	ri, err := q.Info(context.Background(), raw)
	if err != nil {
		t.Fatal(err)
	}
	if ri.Format != "raw" || ri.VirtualSize != 4<<20 || ri.BackingFile != "" || ri.DataFile != "" {
		t.Errorf("raw: %+v", ri)
	}
	qi, err := q.Info(context.Background(), qcow)
	if err != nil {
		t.Fatal(err)
	}
	if qi.Format != "qcow2" || qi.VirtualSize != 8<<20 || qi.BackingFile != "" || qi.Corrupt || qi.Dirty || qi.Encrypted {
		t.Errorf("qcow2: %+v", qi)
	}
	chain := filepath.Join(dir, "chain.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", qcow, chain)
	ci, err := q.Info(context.Background(), chain)
	if err != nil {
		t.Fatal(err)
	}
	if ci.BackingFile != qcow || ci.FullBackingFile != qcow || ci.BackingFormat != "qcow2" {
		t.Errorf("chain: %+v", ci)
	}
	for _, p := range []string{"base.qcow2", "/a/../b", "nbd:localhost:10809", ""} {
		if _, err := q.Info(context.Background(), p); err == nil {
			t.Errorf("Info(%q): no error", p)
		}
	}
}

func TestCreate(t *testing.T) {
	bin := needQemuImg(t)
	dir := t.TempDir()
	raw, qcow := makeBases(t, dir)
	q := QemuImg{Path: bin}
	cases := []struct {
		base, format string
		size, want   uint64
	}{
		{raw, FormatRaw, 0, 4 << 20},
		{raw, FormatRaw, 1 << 30, 1 << 30},
		{qcow, FormatQCOW2, 0, 8 << 20},
		{qcow, FormatQCOW2, 8 << 20, 8 << 20},
		{qcow, FormatQCOW2, 64 << 20, 64 << 20},
	}
	for i, c := range cases {
		before := stateOf(t, c.base)
		ovDir := filepath.Join(dir, "state"+strconv.Itoa(i))
		if err := os.Mkdir(ovDir, 0o700); err != nil {
			t.Fatal(err)
		}
		ov := filepath.Join(ovDir, "disk0.qcow2")
		info, err := q.Create(context.Background(), c.base, c.format, ov, c.size)
		if err != nil {
			t.Errorf("Create(%s, %s, %d): %v", c.base, c.format, c.size, err)
			continue
		}
		if info.Filename != ov || info.Format != "qcow2" || info.VirtualSize != c.want ||
			info.FullBackingFile != c.base || info.BackingFormat != c.format {
			t.Errorf("Create(%s, %d) = %+v", c.base, c.size, info)
		}
		// What is on disk, read by qemu-img itself.
		again, err := q.Info(context.Background(), ov)
		if err != nil || *again != *info {
			t.Errorf("Info of the overlay = %+v, %v; Create said %+v", again, err, info)
		}
		if got := dirEntries(t, ovDir); !slices.Equal(got, []string{"disk0.qcow2"}) {
			t.Errorf("overlay dir holds %q", got)
		}
		if after := stateOf(t, c.base); after != before {
			t.Errorf("Create changed the base %s: %+v -> %+v", c.base, before, after)
		}
		if _, err := q.Create(context.Background(), c.base, c.format, ov, c.size); !errors.Is(err, fs.ErrExist) {
			t.Errorf("second Create on %s: %v, want fs.ErrExist", ov, err)
		}
		if again2, err := q.Info(context.Background(), ov); err != nil || *again2 != *info {
			t.Errorf("the existing overlay changed: %+v, %v", again2, err)
		}
	}
}

// TestOverlayWrites writes through an overlay with qemu-io and checks that
// the guest-visible data changed while the base did not.
func TestOverlayWrites(t *testing.T) {
	bin := needQemuImg(t)
	qemuIO, err := exec.LookPath("qemu-io")
	if err != nil {
		t.Skipf("qemu-io not installed: %v", err)
	}
	dir := t.TempDir()
	_, qcow := makeBases(t, dir)
	before := stateOf(t, qcow)
	ov := filepath.Join(dir, "ov.qcow2")
	if _, err := (QemuImg{Path: bin}).Create(context.Background(), qcow, FormatQCOW2, ov, 16<<20); err != nil {
		t.Fatal(err)
	}
	io := func(cmd string) string {
		out, err := exec.Command(qemuIO, "-f", "qcow2", "-c", cmd, ov).CombinedOutput()
		if err != nil || strings.Contains(string(out), "Pattern verification failed") {
			t.Fatalf("qemu-io -c %q: %v: %s", cmd, err, out)
		}
		return string(out)
	}
	// The base's data shows through; then a write lands in the overlay,
	// also past the base's end.
	io("read -P 0x76 0 1") // 'v' of "vmsup-base-data!"
	io("write -P 0xab 0 64k")
	io("write -P 0xcd 12M 64k")
	io("read -P 0xab 0 64k")
	io("read -P 0xcd 12M 64k")
	if after := stateOf(t, qcow); after != before {
		t.Errorf("writing to the overlay changed the base: %+v -> %+v", before, after)
	}
	out, err := exec.Command(bin, "compare", "-f", "qcow2", "-F", "raw", qcow, filepath.Join(dir, "base,1.raw")).CombinedOutput()
	if err != nil {
		t.Errorf("base no longer holds its data: %v: %s", err, out)
	}
}

func TestCreateRefuses(t *testing.T) {
	bin := needQemuImg(t)
	dir := t.TempDir()
	raw, qcow := makeBases(t, dir)
	chain := filepath.Join(dir, "chain.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", qcow, chain)
	ext := filepath.Join(dir, "ext.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "ext.data"), ext, "1M")
	// A raw image that starts with a qcow2 header: probing calls it qcow2.
	fake := filepath.Join(dir, "fake.raw")
	hdr, err := os.ReadFile(chain)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fake, hdr, 0o644); err != nil {
		t.Fatal(err)
	}
	existing := filepath.Join(dir, "out", "existing.qcow2")
	if err := os.MkdirAll(filepath.Dir(existing), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(existing, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := func(name string) string { return filepath.Join(dir, "out", name) }

	cases := []struct {
		name         string
		base, format string
		overlay      string
		size         uint64
		is           error
		substr       string
	}{
		{"backing chain", chain, FormatQCOW2, out("a.qcow2"), 0, ErrBackingChain, strconv.Quote(qcow)},
		{"external data file", ext, FormatQCOW2, out("a.qcow2"), 0, ErrBackingChain, "external file"},
		{"qcow2 declared raw", qcow, FormatRaw, out("a.qcow2"), 0, ErrFormatMismatch, `declared "raw", qemu-img detects "qcow2"`},
		{"raw declared qcow2", raw, FormatQCOW2, out("a.qcow2"), 0, ErrFormatMismatch, `declared "qcow2", qemu-img detects "raw"`},
		{"raw with a qcow2 header", fake, FormatRaw, out("a.qcow2"), 0, ErrFormatMismatch, `detects "qcow2"`},
		{"unsupported format", qcow, "vmdk", out("a.qcow2"), 0, nil, `format "vmdk" is not supported`},
		{"too small", qcow, FormatQCOW2, out("a.qcow2"), 4 << 20, ErrTooSmall, "4194304 bytes, base " + qcow + " has 8388608"},
		{"not a multiple of 512", raw, FormatRaw, out("a.qcow2"), 8<<20 + 1, nil, "multiple of 512"},
		{"missing base", filepath.Join(dir, "nope.qcow2"), FormatQCOW2, out("a.qcow2"), 0, fs.ErrNotExist, "does not exist"},
		{"base is a directory", dir, FormatRaw, out("a.qcow2"), 0, nil, "not a file"},
		{"relative base", "base.qcow2", FormatQCOW2, out("a.qcow2"), 0, nil, "must be absolute"},
		{"protocol base", "nbd:localhost:10809", FormatRaw, out("a.qcow2"), 0, nil, "must be absolute"},
		{"relative overlay", qcow, FormatQCOW2, "a.qcow2", 0, nil, "must be absolute"},
		{"unclean overlay", qcow, FormatQCOW2, dir + "/out/../out/a.qcow2", 0, nil, "must be clean"},
		{"overlay exists", qcow, FormatQCOW2, existing, 0, fs.ErrExist, existing},
		{"overlay dir missing", qcow, FormatQCOW2, filepath.Join(dir, "none", "a.qcow2"), 0, nil, "does not exist"},
		{"overlay is the base", qcow, FormatQCOW2, qcow, 0, fs.ErrExist, ""},
	}
	q := QemuImg{Path: bin}
	bases := map[string]fileState{}
	for _, p := range []string{raw, qcow, chain, ext, fake} {
		bases[p] = stateOf(t, p)
	}
	for _, c := range cases {
		_, err := q.Create(context.Background(), c.base, c.format, c.overlay, c.size)
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if c.is != nil && !errors.Is(err, c.is) {
			t.Errorf("%s: %v, want %v", c.name, err, c.is)
		}
		if !strings.Contains(err.Error(), c.substr) {
			t.Errorf("%s: %q, want it to say %q", c.name, err, c.substr)
		}
	}
	if got := dirEntries(t, filepath.Join(dir, "out")); !slices.Equal(got, []string{"existing.qcow2"}) {
		t.Errorf("after refused creates the overlay dir holds %q", got)
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep me" {
		t.Errorf("existing file now holds %q", b)
	}
	for p, before := range bases {
		if after := stateOf(t, p); after != before {
			t.Errorf("a refused Create changed %s", p)
		}
	}
	// qemu-img itself would have made the too-small overlay.
	qemuImg(t, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", qcow, out("qemu-img-alone.qcow2"), "4M")
}

// fakeQemuImg writes a script standing in for qemu-img and returns its path.
func fakeQemuImg(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "qemu-img")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// gone reports whether pid no longer runs: it is reaped, or a zombie
// waiting for its new parent.
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

func waitGone(t *testing.T, what string, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			t.Errorf("%s (pid %d) still runs 10s after the deadline", what, pid)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the fake qemu-img wrote no pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestDeadline runs a qemu-img that hangs (and whose child holds its
// stdout open) and checks that Info returns at the deadline with an error
// that says so, and that the process and its child are gone.
func TestDeadline(t *testing.T) {
	dir := t.TempDir()
	pids := filepath.Join(dir, "pids")
	bin := fakeQemuImg(t, fmt.Sprintf("echo $$ > %s.self\nsleep 60 &\necho $! > %s.child\nwait\n", pids, pids))
	q := QemuImg{Path: bin, Timeout: 300 * time.Millisecond}
	start := time.Now()
	_, err := q.Info(context.Background(), "/some/image.qcow2")
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "deadline") {
		t.Errorf("Info with a hanging qemu-img: %v, want a deadline error", err)
	}
	var re *RunError
	if !errors.As(err, &re) || !slices.Equal(re.Args, []string{"info", "--output=json", "/some/image.qcow2"}) {
		t.Errorf("error %v is not a *RunError naming the arguments", err)
	}
	if took > 8*time.Second {
		t.Errorf("Info returned %s after a 300ms deadline", took)
	}
	waitGone(t, "fake qemu-img", readPid(t, pids+".self"))
	waitGone(t, "its child", readPid(t, pids+".child"))

	// The caller's context counts too.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	q.Timeout = time.Minute
	if _, err := q.Info(ctx, "/some/image.qcow2"); !errors.Is(err, context.Canceled) {
		t.Errorf("Info with a cancelled context: %v", err)
	}
	waitGone(t, "fake qemu-img", readPid(t, pids+".self"))
}

// TestCreateDeadline has the fake qemu-img answer info for a real base
// and hang in create after starting the temporary file: Create must fail
// at the deadline and leave no file behind.
func TestCreateDeadline(t *testing.T) {
	real := needQemuImg(t)
	dir := t.TempDir()
	_, qcow := makeBases(t, dir)
	before := stateOf(t, qcow)
	outDir := filepath.Join(dir, "out")
	if err := os.Mkdir(outDir, 0o700); err != nil {
		t.Fatal(err)
	}
	bin := fakeQemuImg(t, fmt.Sprintf(`case "$1" in
info) exec %s "$@" ;;
create) for a; do case "$a" in *.tmp-*) tmp=$a ;; esac; done; [ -n "$tmp" ] || exit 3; : > "$tmp.probe"; echo x > "$tmp"; sleep 60 ;;
esac
`, real))
	q := QemuImg{Path: bin, Timeout: time.Second}
	start := time.Now()
	_, err := q.Create(context.Background(), qcow, FormatQCOW2, filepath.Join(outDir, "disk0.qcow2"), 0)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Create with a hanging qemu-img create: %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Create returned after %s", took)
	}
	// The script made "<tmp>.probe" beside the temporary file, which is
	// proof that the temporary file was there and is now gone.
	got := dirEntries(t, outDir)
	if len(got) != 1 || !strings.HasPrefix(got[0], ".disk0.qcow2.tmp-") || !strings.HasSuffix(got[0], ".probe") {
		t.Errorf("out dir holds %q, want only the script's probe file", got)
	}
	if after := stateOf(t, qcow); after != before {
		t.Error("the base changed")
	}
}

func TestRunErrorQuotesStderr(t *testing.T) {
	bin := fakeQemuImg(t, "echo 'qemu-img: Could not open \"/x\": Permission denied' >&2\nexit 1\n")
	_, err := (QemuImg{Path: bin}).Info(context.Background(), "/x")
	want := `qemu-img info --output=json /x: exit status 1: "qemu-img: Could not open \"/x\": Permission denied"`
	if err == nil || err.Error() != want {
		t.Errorf("error:\n got %v\nwant %s", err, want)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("error does not wrap the *exec.ExitError: %v", err)
	}

	// A real qemu-img failure: an image with a damaged qcow2 header.
	real := needQemuImg(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", bad, "1M")
	b, _ := os.ReadFile(bad)
	b[4], b[5], b[6], b[7] = 0, 0, 0, 99 // version 99
	if err := os.WriteFile(bad, b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = (QemuImg{Path: real}).CheckBase(context.Background(), bad, FormatQCOW2)
	if err == nil || !strings.Contains(err.Error(), "base image "+bad+": qemu-img info --output=json "+bad+": exit status 1: \"qemu-img:") {
		t.Errorf("CheckBase of a damaged qcow2: %v", err)
	}

	// Huge output and a missing binary.
	bin = fakeQemuImg(t, "head -c 3000000 /dev/zero\n")
	if _, err := (QemuImg{Path: bin}).Info(context.Background(), "/x"); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("Info with 3 MB of output: %v", err)
	}
	if _, err := (QemuImg{Path: filepath.Join(dir, "no-qemu-img")}).Info(context.Background(), "/x"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing qemu-img: %v", err)
	}
}

func TestParseInfo(t *testing.T) {
	good := `{"virtual-size": 8388608, "filename": "/b.qcow2", "format": "qcow2", "actual-size": 200704,
		"format-specific": {"type": "qcow2", "data": {"compat": "1.1", "corrupt": true, "data-file": "/d"}},
		"backing-filename": "b", "full-backing-filename": "/x/b", "backing-filename-format": "raw",
		"dirty-flag": true, "encrypted": true, "new-field": [1, 2]}`
	info, err := parseInfo([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	want := Info{Filename: "/b.qcow2", Format: "qcow2", VirtualSize: 8388608, ActualSize: 200704,
		BackingFile: "b", FullBackingFile: "/x/b", BackingFormat: "raw", DataFile: "/d", Encrypted: true, Dirty: true, Corrupt: true}
	if *info != want {
		t.Errorf("parseInfo = %+v, want %+v", *info, want)
	}
	for _, bad := range []string{
		``, `null`, `[]`, `"qcow2"`, `{`, `{"format": "raw"}`, `{"virtual-size": 1}`,
		`{"format": "", "virtual-size": 1}`, `{"format": "raw", "virtual-size": -1}`,
		`{"format": "raw", "virtual-size": 1.5}`, `{"format": "raw", "virtual-size": 1e30}`,
		`{"format": "raw", "virtual-size": "1"}`, `{"format": "ra w", "virtual-size": 1}`,
		`{"format": "raw", "virtual-size": 1} {}`, `{"format": "raw", "virtual-size": 1} x`,
		`{"format": "raw", "virtual-size": 1, "format-specific": 7}`,
	} {
		if info, err := parseInfo([]byte(bad)); err == nil {
			t.Errorf("parseInfo(%q) = %+v, want an error", bad, info)
		}
	}
}

func TestRemove(t *testing.T) {
	bin := needQemuImg(t)
	dir := t.TempDir()
	_, qcow := makeBases(t, dir)
	before := stateOf(t, qcow)
	outDir := filepath.Join(dir, "out[1]") // glob characters in the name
	if err := os.Mkdir(outDir, 0o700); err != nil {
		t.Fatal(err)
	}
	ov := filepath.Join(outDir, "disk*0.qcow2")
	if _, err := (QemuImg{Path: bin}).Create(context.Background(), qcow, FormatQCOW2, ov, 0); err != nil {
		t.Fatal(err)
	}
	// A leftover temporary file of a crashed Create, and bystanders.
	for _, n := range []string{".disk*0.qcow2.tmp-0123", ".diskX0.qcow2.tmp-0123", "other.qcow2"} {
		if err := os.WriteFile(filepath.Join(outDir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A symlink to the base under an overlay's name.
	link := filepath.Join(outDir, "link.qcow2")
	if err := os.Symlink(qcow, link); err != nil {
		t.Fatal(err)
	}
	if err := Remove(ov); err != nil {
		t.Fatal(err)
	}
	if got := dirEntries(t, outDir); !slices.Equal(got, []string{".diskX0.qcow2.tmp-0123", "link.qcow2", "other.qcow2"}) {
		t.Errorf("after Remove: %q", got)
	}
	if err := Remove(ov); err != nil {
		t.Errorf("Remove of a missing overlay: %v", err)
	}
	if err := Remove(link); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("Remove of a symlink: %v", err)
	}
	if err := Remove(outDir); err == nil {
		t.Error("Remove of a directory: no error")
	}
	if err := Remove("rel.qcow2"); err == nil {
		t.Error("Remove of a relative path: no error")
	}
	if after := stateOf(t, qcow); after != before {
		t.Error("the base changed")
	}
	if _, err := os.Lstat(link); err != nil {
		t.Errorf("symlink removed: %v", err)
	}
}

// TestCreateOn stacks an overlay on an overlay (a chain, which Create
// refuses) without reading its backing: the new top has the right
// backing and size, reads the chain's data, leaves the backing as it
// was, and is never made over an existing file; bad arguments are
// refused before qemu-img runs.
func TestCreateOn(t *testing.T) {
	bin := needQemuImg(t)
	dir := t.TempDir()
	raw, _ := makeBases(t, dir)
	q := QemuImg{Path: bin}
	mid := filepath.Join(dir, "mid.qcow2")
	if _, err := q.Create(context.Background(), raw, FormatRaw, mid, 0); err != nil {
		t.Fatal(err)
	}
	before := stateOf(t, mid)
	top := filepath.Join(dir, "top.qcow2")
	if err := q.CreateOn(context.Background(), mid, FormatQCOW2, top, 4<<20); err != nil {
		t.Fatal(err)
	}
	info, err := q.Info(context.Background(), top)
	if err != nil || info.Format != FormatQCOW2 || info.BackingFile != mid || info.BackingFormat != FormatQCOW2 || info.VirtualSize != 4<<20 {
		t.Fatalf("Info of the top = %+v, %v", info, err)
	}
	out := filepath.Join(dir, "out.raw")
	qemuImg(t, "convert", "-O", "raw", top, out)
	want, _ := os.ReadFile(raw)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Error("the top does not read the chain's data")
	}
	if after := stateOf(t, mid); after != before {
		t.Errorf("CreateOn changed its backing: %+v -> %+v", before, after)
	}
	if err := q.CreateOn(context.Background(), mid, FormatQCOW2, top, 4<<20); !errors.Is(err, fs.ErrExist) {
		t.Errorf("CreateOn over an existing file: %v, want fs.ErrExist", err)
	}
	for _, c := range []struct {
		backing, format, path string
		size                  uint64
	}{
		{mid, FormatQCOW2, "rel.qcow2", 4 << 20},
		{"rel.qcow2", FormatQCOW2, filepath.Join(dir, "a.qcow2"), 4 << 20},
		{mid, "vmdk", filepath.Join(dir, "b.qcow2"), 4 << 20},
		{mid, FormatQCOW2, filepath.Join(dir, "c.qcow2"), 0},
		{mid, FormatQCOW2, filepath.Join(dir, "d.qcow2"), 1000},
		{mid, FormatQCOW2, mid, 4 << 20},
	} {
		if err := q.CreateOn(context.Background(), c.backing, c.format, c.path, c.size); err == nil {
			t.Errorf("CreateOn(%q, %q, %q, %d) succeeded", c.backing, c.format, c.path, c.size)
		}
	}
	if got := dirEntries(t, dir); slices.ContainsFunc(got, func(n string) bool { return strings.HasPrefix(n, ".") || n == "a.qcow2" || n == "c.qcow2" }) {
		t.Errorf("refused CreateOn calls left files: %q", got)
	}
}

// TestCommitRebase: Commit writes an overlay's data into its backing and
// leaves the overlay; Rebase repoints an image's header only.
func TestCommitRebase(t *testing.T) {
	bin := needQemuImg(t)
	dir := t.TempDir()
	raw, _ := makeBases(t, dir)
	q := QemuImg{Path: bin}
	mid := filepath.Join(dir, "mid.qcow2")
	if _, err := q.Create(context.Background(), raw, FormatRaw, mid, 0); err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(dir, "top.qcow2")
	if err := q.CreateOn(context.Background(), mid, FormatQCOW2, top, 4<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 512", mid).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v: %s", err, out)
	}
	rawBefore := stateOf(t, raw)
	over, err := os.Open(mid)
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	back, err := os.OpenFile(raw, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	// The backing's name now leads to a decoy: Commit must write into
	// the file it was given, not follow the overlay's header.
	kept := raw + ".kept"
	if err := os.Rename(raw, kept); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(raw, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	decoy := stateOf(t, raw)
	if err := q.Commit(context.Background(), mid, over, back, FormatRaw); err != nil {
		t.Fatal(err)
	}
	if stateOf(t, raw) != decoy {
		t.Fatal("Commit wrote into the file the overlay's header names, not the one it was given")
	}
	if err := os.Rename(kept, raw); err != nil {
		t.Fatal(err)
	}
	if after := stateOf(t, raw); after == rawBefore {
		t.Fatal("Commit did not write into the backing")
	}
	data, _ := os.ReadFile(raw)
	if !bytes.Equal(data[:512], bytes.Repeat([]byte{0x5a}, 512)) {
		t.Fatal("the backing does not hold the committed sector")
	}
	if err := q.Commit(context.Background(), mid, over, back, "vmdk"); err == nil {
		t.Error("Commit accepted a backing format it does not support")
	}
	if err := q.Rebase(context.Background(), top, raw, FormatRaw); err != nil {
		t.Fatal(err)
	}
	if info, err := q.Info(context.Background(), top); err != nil || info.BackingFile != raw || info.BackingFormat != FormatRaw {
		t.Fatalf("Info after Rebase = %+v, %v", info, err)
	}
	if err := q.Rebase(context.Background(), top, raw, "vmdk"); err == nil {
		t.Error("Rebase onto a vmdk backing succeeded")
	}
	if err := q.Commit(context.Background(), "rel.qcow2", over, back, FormatRaw); err == nil {
		t.Error("Commit of a relative path succeeded")
	}
}

// With OpenBase, qemu-img reads the base that OpenBase opened, never the
// name: here the name is swapped for a symlink to another image after the
// open, and the overlay is still made on what was opened, with the name
// in its header. An OpenBase error is the check's.
func TestOpenBaseReadsTheOpenedFile(t *testing.T) {
	bin := needQemuImg(t)
	dir := t.TempDir()
	raw, qcow := makeBases(t, dir)
	name := filepath.Join(dir, "named.qcow2")
	if err := os.Link(qcow, name); err != nil {
		t.Fatal(err)
	}
	opened := 0
	q := QemuImg{Path: bin, OpenBase: func(path string) (*os.File, error) {
		if path != name {
			return nil, fmt.Errorf("asked for %s", path)
		}
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		opened++
		// Swapped once opened: by name, qemu-img would find a raw image.
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(raw, path); err != nil {
			t.Fatal(err)
		}
		return f, nil
	}}
	ov := filepath.Join(dir, "ov.qcow2")
	info, err := q.Create(context.Background(), name, FormatQCOW2, ov, 16<<20)
	if err != nil {
		t.Fatalf("Create on the opened qcow2 base: %v", err)
	}
	if opened != 1 || info.FullBackingFile != name || info.BackingFormat != FormatQCOW2 {
		t.Fatalf("opened %d times; overlay %+v, want it on %s (qcow2)", opened, info, name)
	}
	q.OpenBase = func(string) (*os.File, error) { return nil, errors.New("refused by the policy") }
	if _, err := q.CheckBase(context.Background(), qcow, FormatQCOW2); err == nil || !strings.Contains(err.Error(), "refused by the policy") {
		t.Fatalf("CheckBase with a refusing OpenBase: %v", err)
	}
}
