package confine

import (
	"fmt"
	"os"
	"os/user"
	"slices"
	"strconv"
	"syscall"
)

// DefaultUser is the user a root daemon runs QEMU as when none is given.
// .ci/run and the README create it as a system user.
const DefaultUser = "vmsup-qemu"

// User is the unprivileged identity QEMU runs as.
type User struct {
	Name string
	UID  uint32
	GID  uint32
	// Groups are its supplementary groups: the kvm group when /dev/kvm
	// belongs to one, so that an unprivileged QEMU can use KVM.
	Groups []uint32
}

// LookupUser finds the user name. Root (uid 0) is refused: it would
// confine nothing.
func LookupUser(name string) (*User, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("QEMU user %q: %w (create it with: useradd --system --no-create-home --shell /usr/sbin/nologin %s)", name, err, name)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("QEMU user %q: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("QEMU user %q: gid %q: %w", name, u.Gid, err)
	}
	if uid == 0 || gid == 0 {
		return nil, fmt.Errorf("QEMU user %q has uid %d gid %d: running QEMU as root confines nothing", name, uid, gid)
	}
	out := &User{Name: name, UID: uint32(uid), GID: uint32(gid)}
	if fi, err := os.Stat("/dev/kvm"); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Gid != 0 && st.Gid != out.GID {
			out.Groups = append(out.Groups, st.Gid)
		}
	}
	return out, nil
}

// Credential is what exec needs to start a process as u, with exactly u's
// groups (none of the daemon's).
func (u *User) Credential() *syscall.Credential {
	return &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: slices.Clone(u.Groups)}
}

// Own gives the files QEMU must open (its run dir, its overlays and seed)
// to u, without following symlinks.
func (u *User) Own(paths ...string) error {
	for _, p := range paths {
		if err := os.Lchown(p, int(u.UID), int(u.GID)); err != nil {
			return fmt.Errorf("give %s to the QEMU user %q: %w", p, u.Name, err)
		}
	}
	return nil
}

// CanOpen reports whether u may open path for reading (and writing when
// write is set), judged by the owner, group and mode of path and the
// search permission of its parent directories, as the kernel would judge
// it for a process with u's credentials (no ACLs). The error names the
// path and the missing permission.
func (u *User) CanOpen(path string, write bool) error {
	want := uint32(4)
	what := "read"
	if write {
		want, what = 6, "read and write"
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !u.allows(fi, want) {
		return fmt.Errorf("%s: the QEMU user %q (uid %d) may not %s it (mode %v)", path, u.Name, u.UID, what, fi.Mode().Perm())
	}
	for dir := parent(path); ; dir = parent(dir) {
		di, err := os.Stat(dir)
		if err != nil {
			return err
		}
		if !u.allows(di, 1) {
			return fmt.Errorf("%s: the QEMU user %q (uid %d) may not enter %s (mode %v)", path, u.Name, u.UID, dir, di.Mode().Perm())
		}
		if dir == "/" || dir == "." {
			return nil
		}
	}
}

func parent(p string) string {
	for i := len(p) - 1; i > 0; i-- {
		if p[i] == '/' {
			return p[:i]
		}
	}
	if len(p) > 0 && p[0] == '/' {
		return "/"
	}
	return "."
}

// allows applies the owner/group/other bits of fi for u to want (rwx as
// 4/2/1).
func (u *User) allows(fi os.FileInfo, want uint32) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	perm := uint32(fi.Mode().Perm())
	switch {
	case st.Uid == u.UID:
		return (perm>>6)&want == want
	case st.Gid == u.GID || slices.Contains(u.Groups, st.Gid):
		return (perm>>3)&want == want
	default:
		return perm&want == want
	}
}

// CanEnter reports whether u may search dir and every directory above it,
// so that it can reach what vmsup gives it there. The error names the
// first directory it may not enter.
func (u *User) CanEnter(dir string) error {
	for d := dir; ; d = parent(d) {
		di, err := os.Stat(d)
		if err != nil {
			return err
		}
		if !u.allows(di, 1) {
			return fmt.Errorf("the QEMU user %q (uid %d) may not enter %s (mode %v; it needs o+x or to own it)", u.Name, u.UID, d, di.Mode().Perm())
		}
		if d == "/" || d == "." {
			return nil
		}
	}
}
