//go:build linux

// Package tap creates, lists and deletes the host tap devices that carry a
// domain's "tap" NICs, through netlink and /dev/net/tun (never the ip
// command).
//
// A tap is persistent: it stays after the process that created it closes
// it, and QEMU opens it by name (-netdev tap,ifname=NAME,script=no,
// downscript=no). Each tap carries a tag in its link alias naming the
// domain it belongs to; Delete and DeleteStale remove only taps with the
// expected tag, so after a QEMU crash or a daemon restart the domain's
// taps are found by name prefix and tag and removed, and nobody else's.
//
// Every function works in the network namespace of the calling thread.
package tap

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Errors that Create wraps, for errors.Is.
var (
	// ErrBridgeNotFound: the bridge does not exist.
	ErrBridgeNotFound = errors.New("bridge does not exist")
	// ErrNotBridge: the named master exists but is not a bridge.
	ErrNotBridge = errors.New("not a bridge")
	// ErrPermission: the process lacks CAP_NET_ADMIN (is not root).
	ErrPermission = errors.New("permission denied: creating a tap and enslaving it to a bridge needs root (CAP_NET_ADMIN)")
	// ErrExist: an interface with the tap's name already exists.
	ErrExist = errors.New("an interface with this name already exists")
	// ErrNotOurs: the interface is not a tap, or carries another tag.
	ErrNotOurs = errors.New("interface is not a tap with the expected tag")
)

// MaxNameLen is the longest Linux interface name (IFNAMSIZ less the NUL).
const MaxNameLen = 15

// MaxTagLen is the longest tag: the kernel's limit on a link alias.
const MaxTagLen = 255

// Config describes a tap to create.
type Config struct {
	// Name is the interface name, 1 to 15 bytes.
	Name string
	// Bridge is the name of an existing bridge to enslave the tap to.
	Bridge string
	// Tag marks the tap as its owner's (stored as the link alias); it
	// must not be empty.
	Tag string
	// MAC is the host side's address; nil leaves the kernel's random one.
	// Give it a high first octet (0xfe) so the bridge does not adopt it.
	MAC net.HardwareAddr
	// Owner is who may open the tap by name; nil is this process's
	// effective uid and gid. A root daemon that runs QEMU as an
	// unprivileged user gives the tap to that user.
	Owner *Owner
}

// Owner is the uid and gid of a tap's owner.
type Owner struct{ UID, GID uint32 }

// Info describes an existing tap.
type Info struct {
	Name  string
	Index int
	// Tag is the link alias ("" when none).
	Tag string
	// Bridge is the name of the master ("" when none).
	Bridge string
	MAC    net.HardwareAddr
	// Up is true when the interface is administratively up.
	Up bool
	// Carrier is true when a process (QEMU) has the tap open.
	Carrier bool
	// Persistent is true when the tap outlives the processes that open it.
	Persistent bool
}

// Create creates the persistent tap cfg.Name, owned by cfg.Owner or this
// process's effective uid and gid (so QEMU started by this process may open
// it by name), tags it, sets its address, enslaves it to cfg.Bridge and brings it
// up. On any error it removes the tap again. It refuses a name that is
// taken (ErrExist), even by a tap of the same tag: call DeleteStale first to
// clear taps that a crash left behind.
func Create(cfg Config) (*Info, error) {
	if err := checkName(cfg.Name); err != nil {
		return nil, err
	}
	if cfg.Tag == "" || len(cfg.Tag) > MaxTagLen {
		return nil, fmt.Errorf("tap %q: the tag must be 1 to %d bytes", cfg.Name, MaxTagLen)
	}
	if cfg.MAC != nil && len(cfg.MAC) != 6 {
		return nil, fmt.Errorf("tap %q: MAC %s is not an Ethernet address", cfg.Name, cfg.MAC)
	}
	if err := checkNetAdmin(); err != nil {
		return nil, fmt.Errorf("creating tap %q: %w", cfg.Name, err)
	}
	br, err := bridge(cfg.Bridge)
	if err != nil {
		return nil, fmt.Errorf("tap %q: %w", cfg.Name, err)
	}
	if l, err := netlink.LinkByName(cfg.Name); err == nil {
		return nil, fmt.Errorf("creating tap %q: %w (a %s device with alias %q)", cfg.Name, ErrExist, l.Type(), l.Attrs().Alias)
	} else if !isNotFound(err) {
		return nil, fmt.Errorf("creating tap %q: looking it up: %w", cfg.Name, linkErr(err))
	}

	t := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: cfg.Name},
		Mode:      netlink.TUNTAP_MODE_TAP,
		// TUN_EXCL makes the create fail instead of attaching to a tap
		// that appeared since the lookup.
		Flags: netlink.TUNTAP_TUN_EXCL | netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
		Owner: uint32(os.Geteuid()),
		Group: uint32(os.Getegid()),
	}
	if cfg.Owner != nil {
		t.Owner, t.Group = cfg.Owner.UID, cfg.Owner.GID
	}
	if err := netlink.LinkAdd(t); err != nil {
		// netlink reports the ioctl's errno as text only: an interface
		// that exists now is the likely cause of EBUSY.
		if _, lerr := netlink.LinkByName(cfg.Name); lerr == nil {
			return nil, fmt.Errorf("creating tap %q: %w (created by someone else meanwhile): %v", cfg.Name, ErrExist, err)
		}
		return nil, fmt.Errorf("creating tap %q: %w", cfg.Name, linkErr(err))
	}
	fail := func(step string, err error) (*Info, error) {
		err = fmt.Errorf("tap %q: %s: %w", cfg.Name, step, linkErr(err))
		if l, lerr := netlink.LinkByName(cfg.Name); lerr == nil {
			if derr := netlink.LinkDel(l); derr != nil {
				err = errors.Join(err, fmt.Errorf("tap %q: removing it again: %w", cfg.Name, linkErr(derr)))
			}
		}
		return nil, err
	}
	link, err := netlink.LinkByName(cfg.Name)
	if err != nil {
		return fail("looking it up after creating it", err)
	}
	if err := netlink.LinkSetAlias(link, cfg.Tag); err != nil {
		return fail("setting its tag", err)
	}
	if cfg.MAC != nil {
		if err := netlink.LinkSetHardwareAddr(link, cfg.MAC); err != nil {
			return fail("setting its MAC "+cfg.MAC.String(), err)
		}
	}
	if err := netlink.LinkSetMaster(link, br); err != nil {
		return fail(fmt.Sprintf("enslaving it to bridge %q", cfg.Bridge), err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fail("bringing it up", err)
	}
	info, err := Get(cfg.Name)
	if err != nil {
		return fail("reading it back", err)
	}
	return info, nil
}

// bridge returns the bridge link name.
func bridge(name string) (netlink.Link, error) {
	if err := checkName(name); err != nil {
		return nil, fmt.Errorf("bridge: %w", err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("bridge %q: %w", name, ErrBridgeNotFound)
		}
		return nil, fmt.Errorf("bridge %q: %w", name, linkErr(err))
	}
	if l.Type() != "bridge" {
		return nil, fmt.Errorf("%q is a %s device: %w", name, l.Type(), ErrNotBridge)
	}
	return l, nil
}

// Get describes the tap name. It returns an error wrapping ErrNotOurs when
// name is not a tap, and fs.ErrNotExist when there is no such interface.
func Get(name string) (*Info, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("tap %q: %w", name, os.ErrNotExist)
		}
		return nil, fmt.Errorf("tap %q: %w", name, linkErr(err))
	}
	t, ok := l.(*netlink.Tuntap)
	if !ok || t.Mode != netlink.TUNTAP_MODE_TAP {
		return nil, fmt.Errorf("%q is a %s device: %w", name, l.Type(), ErrNotOurs)
	}
	return infoOf(t)
}

func infoOf(t *netlink.Tuntap) (*Info, error) {
	a := t.Attrs()
	info := &Info{
		Name:       a.Name,
		Index:      a.Index,
		Tag:        a.Alias,
		MAC:        a.HardwareAddr,
		Up:         a.Flags&net.FlagUp != 0,
		Carrier:    a.RawFlags&unix.IFF_LOWER_UP != 0,
		Persistent: !t.NonPersist,
	}
	if a.MasterIndex != 0 {
		m, err := netlink.LinkByIndex(a.MasterIndex)
		if err != nil {
			return nil, fmt.Errorf("tap %q: its master (index %d): %w", a.Name, a.MasterIndex, linkErr(err))
		}
		info.Bridge = m.Attrs().Name
	}
	return info, nil
}

// List returns the taps whose name starts with prefix, whatever their tag.
func List(prefix string) ([]Info, error) {
	var links []netlink.Link
	var err error
	// A dump interrupted by a concurrent change is retried.
	for try := 0; try < 5; try++ {
		links, err = netlink.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("listing interfaces: %w", linkErr(err))
	}
	var out []Info
	for _, l := range links {
		t, ok := l.(*netlink.Tuntap)
		if !ok || t.Mode != netlink.TUNTAP_MODE_TAP || !strings.HasPrefix(t.Attrs().Name, prefix) {
			continue
		}
		info, err := infoOf(t)
		if err != nil {
			return nil, err
		}
		out = append(out, *info)
	}
	return out, nil
}

// Delete removes the tap name if it carries tag, or no tag at all (a tap
// whose creation stopped before it was tagged). A missing tap is not an
// error; an interface that is not a tap, or carries another tag, is left
// alone and reported with ErrNotOurs.
func Delete(name, tag string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("deleting tap %q: %w", name, linkErr(err))
	}
	t, ok := l.(*netlink.Tuntap)
	if !ok || t.Mode != netlink.TUNTAP_MODE_TAP {
		return fmt.Errorf("deleting tap %q: it is a %s device: %w", name, l.Type(), ErrNotOurs)
	}
	if a := t.Attrs().Alias; a != "" && a != tag {
		return fmt.Errorf("deleting tap %q: it is tagged %q, not %q: %w", name, a, tag, ErrNotOurs)
	}
	if err := netlink.LinkDel(l); err != nil && !isNotFound(err) && !errors.Is(err, syscall.ENODEV) {
		return fmt.Errorf("deleting tap %q: %w", name, linkErr(err))
	}
	return nil
}

// DeleteStale removes every tap whose name starts with prefix and which
// carries tag or no tag, and returns the names it removed. Taps with the
// prefix but another tag are left alone. The caller must know that no QEMU
// of the domain runs: a tap in use is removed all the same.
func DeleteStale(prefix, tag string) ([]string, error) {
	if prefix == "" {
		return nil, errors.New("deleting stale taps: empty name prefix")
	}
	taps, err := List(prefix)
	if err != nil {
		return nil, fmt.Errorf("deleting stale taps %s*: %w", prefix, err)
	}
	var deleted []string
	var errs []error
	for _, t := range taps {
		if t.Tag != "" && t.Tag != tag {
			continue
		}
		if err := Delete(t.Name, tag); err != nil {
			errs = append(errs, err)
			continue
		}
		deleted = append(deleted, t.Name)
	}
	return deleted, errors.Join(errs...)
}

func checkName(name string) error {
	if name == "" || len(name) > MaxNameLen || name == "." || name == ".." ||
		strings.ContainsAny(name, "/: \t\n\x00") {
		return fmt.Errorf("invalid interface name %q: 1 to %d bytes without \"/\", \":\" or spaces", name, MaxNameLen)
	}
	return nil
}

// checkNetAdmin returns ErrPermission unless the calling thread has
// CAP_NET_ADMIN in its effective set.
func checkNetAdmin() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("reading the process's capabilities: %w", err)
	}
	if data[unix.CAP_NET_ADMIN/32].Effective&(1<<(unix.CAP_NET_ADMIN%32)) == 0 {
		return fmt.Errorf("%w (uid %d)", ErrPermission, os.Geteuid())
	}
	return nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, syscall.ENODEV)
}

// linkErr adds ErrPermission to an error that says the process may not
// do what it asked.
func linkErr(err error) error {
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("%w: %w", ErrPermission, err)
	}
	return err
}
