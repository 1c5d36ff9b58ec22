package bench

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/cloudinit"
	"github.com/vmsup/vmsup/domain/hostres"
	"github.com/vmsup/vmsup/driver"
)

// Overlay measures Define of a domain whose disk is an image (vmsup
// inspects the base, makes the overlay with qemu-img and reads it back)
// against `qemu-img create -f qcow2 -F qcow2 -b base` alone, alternating.
func Overlay(ctx context.Context, o Options) (*Section, error) {
	const key = "overlay"
	const iterations = 15
	sec := &Section{Key: key}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return nil, errors.New("qemu-img not installed (qemu-utils)")
	}
	dir, err := shortDir("vbo")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	base := filepath.Join(dir, "base.qcow2")
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", base, "2G").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("qemu-img create base: %v: %s", err, out)
	}
	d, err := openRealDriver(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer d.Close(context.Background())
	var vDef, rCreate Samples
	vmsupOnce := func(i int) error {
		spec := &domain.Spec{Name: "ov" + strconv.Itoa(i), Machine: "q35",
			Disks: []domain.Disk{{Image: base, Format: domain.DiskFormatQCOW2, Size: 8 * domain.GiB}}}
		spec.ApplyDefaults()
		t := time.Now()
		if _, err := d.Define(ctx, spec); err != nil {
			return err
		}
		vDef.Add(time.Since(t))
		return d.Undefine(ctx, spec.Name)
	}
	rawOnce := func(i int) error {
		out := filepath.Join(dir, "raw"+strconv.Itoa(i)+".qcow2")
		t := time.Now()
		if b, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, out, "8G").CombinedOutput(); err != nil {
			return fmt.Errorf("qemu-img create: %v: %s", err, b)
		}
		rCreate.Add(time.Since(t))
		return os.Remove(out)
	}
	o.logf("overlay: %d defines with an image disk against as many qemu-img create, alternating", iterations)
	for i := 0; i < iterations; i++ {
		first, second := vmsupOnce, rawOnce
		if i%2 == 1 {
			first, second = second, first
		}
		if err := first(i); err != nil {
			return nil, err
		}
		if err := second(i); err != nil {
			return nil, err
		}
	}
	sec.Rows = []Row{{Measure: "define with an 8G overlay on a qcow2 base, p50", V: Secs(vDef.P50()), C: Secs(rCreate.P50()), Fmt: DurFmt,
		Against: "qemu-img create -f qcow2 -F qcow2 -b alone"}}
	sec.Notes = append(sec.Notes, fmt.Sprintf("Method: %d of each, alternating. vmsup's Define runs qemu-img three times (info on the base to refuse a backing chain or a wrong format, create into a temporary file, info on the result), then fsyncs and renames it, and writes the definition; "+
		"the comparison is the one qemu-img create. vmsup p50 %s max %s; qemu-img create p50 %s max %s.",
		iterations, Dur(vDef.P50()), Dur(vDef.Max()), Dur(rCreate.P50()), Dur(rCreate.Max())))
	return sec, nil
}

// debianImage returns the demo image's files from the cache, or an error
// saying how to build them.
func debianImage(o Options) (qcow, kernel, initrd string, err error) {
	cache := os.Getenv("VMSUP_CACHE")
	if cache == "" {
		cache = filepath.Join(o.ModuleDir, ".cache")
	}
	img := filepath.Join(cache, "image")
	qcow, kernel, initrd = filepath.Join(img, "debian-12.qcow2"), filepath.Join(img, "vmlinuz"), filepath.Join(img, "initrd.img")
	for _, f := range []string{qcow, kernel, initrd} {
		if _, err := os.Stat(f); err != nil {
			return "", "", "", fmt.Errorf("no demo image (%v); run make image", err)
		}
	}
	return qcow, kernel, initrd, nil
}

// benchKey writes an ed25519 key pair under dir and returns the private
// key's path and the public key line.
func benchKey(dir string) (string, string, error) {
	pk, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", "", err
	}
	block, err := ssh.MarshalPrivateKey(sk, "bench")
	if err != nil {
		return "", "", err
	}
	spk, err := ssh.NewPublicKey(pk)
	if err != nil {
		return "", "", err
	}
	path := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", "", err
	}
	return path, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(spk))), nil
}

// waitSSH runs `ssh ... true` against port until it succeeds.
func waitSSH(ctx context.Context, port int, key string, exited <-chan struct{}) error {
	for {
		try, cancel := context.WithTimeout(ctx, 20*time.Second)
		err := exec.CommandContext(try, "ssh", "-p", strconv.Itoa(port), "-i", key, "-o", "IdentitiesOnly=yes",
			"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
			"-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "--", "debian@127.0.0.1", "true").Run()
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for SSH on port %d: %w", port, ctx.Err())
		case <-exited:
			return errors.New("QEMU exited before SSH answered")
		case <-time.After(time.Second):
		}
	}
}

// UpToSSH measures the demo VM (the Debian image) from Define + Start
// through vmsup until SSH runs a command, against the same QEMU command
// line (the same overlay, seed and resolved forward) started by hand and
// continued over QMP, one run of each.
func UpToSSH(ctx context.Context, o Options) (*Section, error) {
	const key = "ssh"
	sec := &Section{Key: key}
	qcow, kernel, initrd, err := debianImage(o)
	if err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("ssh"); err != nil {
		return nil, errors.New("no ssh command (openssh-client)")
	}
	dir, err := shortDir("vbs")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	priv, pub, err := benchKey(dir)
	if err != nil {
		return nil, err
	}
	spec := func(name string) *domain.Spec {
		s := &domain.Spec{Name: name, Machine: "q35", Accel: domain.AccelAuto, CPUs: 2, Memory: domain.GiB,
			Kernel: kernel, Initrd: initrd, Append: "root=/dev/vda console=ttyS0",
			Networks:  []domain.Network{{Forwards: []string{"tcp:127.0.0.1:0-:22"}}},
			Disks:     []domain.Disk{{Image: qcow, Format: domain.DiskFormatQCOW2, Size: 8 * domain.GiB}},
			CloudInit: &cloudinit.Config{Hostname: name, SSHAuthorizedKeys: []string{pub}},
			Serial:    &domain.Serial{Type: domain.SerialFile}}
		s.ApplyDefaults()
		return s
	}

	// vmsup: Define (overlay, seed) and Start, then SSH.
	d, err := openRealDriver(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer d.Close(context.Background())
	o.logf("ssh: the demo VM through vmsup, Define + Start until SSH runs true")
	t := time.Now()
	if _, err := d.Define(ctx, spec("up")); err != nil {
		return nil, err
	}
	vm := d.Domain("up")
	if err := vm.Start(ctx, driver.StartOptions{}); err != nil {
		return nil, err
	}
	in, err := vm.Info(ctx)
	if err != nil {
		return nil, err
	}
	NotePID(in.PID)
	if len(in.NICs) != 1 || len(in.NICs[0].Forwards) != 1 {
		return nil, fmt.Errorf("vmsup: NICs %+v", in.NICs)
	}
	if err := waitSSH(ctx, in.NICs[0].Forwards[0].HostPort, priv, nil); err != nil {
		return nil, fmt.Errorf("vmsup: %w", err)
	}
	vUp := time.Since(t)
	_ = vm.Destroy(ctx)

	// By hand: the overlay and seed made beforehand (not timed), the same
	// argv, then SSH.
	o.logf("ssh: the same QEMU command line by hand")
	m := hostres.New(hostres.Config{StateDir: filepath.Join(dir, "raw-state"), RunDir: filepath.Join(dir, "raw-run")})
	rs := spec("raw")
	if err := m.Define(ctx, rs); err != nil {
		return nil, err
	}
	host, release, err := m.Acquire(ctx, rs)
	if err != nil {
		return nil, err
	}
	defer release()
	t = time.Now()
	q, err := StartRawQEMUHost(filepath.Join(dir, "raw-run"), rs, host)
	if err != nil {
		return nil, err
	}
	defer q.Kill()
	conn, err := q.Handshake(30 * time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := waitSSH(ctx, int(host.NICs[0].Forwards[0].HostPort), priv, q.Done()); err != nil {
		return nil, fmt.Errorf("by hand: %w", err)
	}
	rUp := time.Since(t)
	sec.Rows = []Row{{Measure: "demo VM (Debian 12) up → SSH runs a command", V: Secs(vUp), C: Secs(rUp), Fmt: DurFmt,
		Against: "the same QEMU command line by hand"}}
	sec.Notes = append(sec.Notes, fmt.Sprintf("Method: one run of each, under %s. vmsup: Define (the overlay with qemu-img and the cloud-init seed) and Start, then `ssh ... true` every second until it succeeds. "+
		"By hand: the same argv (overlay and seed made beforehand, untimed; the forward's port resolved), QMP cont, then the same SSH loop. vmsup runs first, so it also pays for reading the base image into the page cache. The guest's boot dominates both: vmsup %s, by hand %s.", realAccel(), Dur(vUp), Dur(rUp)))
	return sec, nil
}
