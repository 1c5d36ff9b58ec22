package cli

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
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	yaml2 "go.yaml.in/yaml/v2"
	"golang.org/x/crypto/ssh"

	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/cmd/internal/cmdline"
)

// DefaultSSHUser is the user `vmsup ssh` logs in as: the default user of
// Debian's cloud images (and of the demo image).
const DefaultSSHUser = "debian"

// userKeyNames are the user's own keys that `vmsup up` installs and
// `vmsup ssh` uses, in this order of preference.
var userKeyNames = []string{"id_ed25519", "id_ecdsa", "id_rsa"}

// cacheDir is vmsup's cache: $VMSUP_CACHE, else the user cache dir's
// vmsup (~/.cache/vmsup).
func cacheDir() (string, error) {
	if d := os.Getenv("VMSUP_CACHE"); d != "" {
		return filepath.Abs(d)
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache dir for the SSH key: %w (set VMSUP_CACHE)", err)
	}
	return filepath.Join(d, "vmsup"), nil
}

// generatedKeyPath is where vmsup keeps the key it generates for a user
// who has none.
func generatedKeyPath() (string, error) {
	d, err := cacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "ssh", "id_ed25519"), nil
}

// findKey returns the private key file and the public key line that vmsup
// uses: the first of ~/.ssh/id_ed25519, id_ecdsa, id_rsa that has its
// .pub beside it, else the key vmsup generated under its cache. It returns
// "" when there is none.
func findKey() (priv, pub string) {
	var candidates []string
	if home, err := os.UserHomeDir(); err == nil {
		for _, n := range userKeyNames {
			candidates = append(candidates, filepath.Join(home, ".ssh", n))
		}
	}
	if g, err := generatedKeyPath(); err == nil {
		candidates = append(candidates, g)
	}
	for _, c := range candidates {
		b, err := os.ReadFile(c + ".pub")
		if err != nil {
			continue
		}
		if _, err := os.Stat(c); err != nil {
			continue
		}
		line := strings.TrimSpace(string(b))
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line)); err == nil {
			return c, line
		}
	}
	return "", ""
}

// ensureKey returns the key as findKey does, generating an ed25519 key
// under the cache when the user has none.
func ensureKey() (priv, pub string, generated bool, err error) {
	if priv, pub = findKey(); priv != "" {
		return priv, pub, false, nil
	}
	path, err := generatedKeyPath()
	if err != nil {
		return "", "", false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", "", false, fmt.Errorf("SSH key dir: %w", err)
	}
	pk, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", "", false, err
	}
	block, err := ssh.MarshalPrivateKey(sk, "vmsup")
	if err != nil {
		return "", "", false, err
	}
	spk, err := ssh.NewPublicKey(pk)
	if err != nil {
		return "", "", false, err
	}
	pub = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(spk))) + " vmsup"
	// The private key last: findKey takes a key only once both exist.
	if err := os.WriteFile(path+".pub", []byte(pub+"\n"), 0o644); err != nil {
		return "", "", false, fmt.Errorf("SSH key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", "", false, fmt.Errorf("SSH key: %w", err)
	}
	if err := pem.Encode(f, block); err != nil {
		f.Close()
		return "", "", false, fmt.Errorf("SSH key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return "", "", false, fmt.Errorf("SSH key %s: %w", path, err)
	}
	return path, pub, true, nil
}

// hasCloudInit reports whether the spec has a cloud_init section.
func hasCloudInit(data []byte) bool {
	var doc yaml2.MapSlice
	if err := yaml2.Unmarshal(data, &doc); err != nil {
		return false
	}
	for _, item := range doc {
		if k, _ := item.Key.(string); k == "cloud_init" {
			return true
		}
	}
	return false
}

// withAuthorizedKey adds key to the spec's cloud_init.ssh_authorized_keys
// unless it is there. A spec without cloud_init, or one that does not
// parse, is returned as it is.
func withAuthorizedKey(data []byte, key string) []byte {
	var doc yaml2.MapSlice
	if err := yaml2.Unmarshal(data, &doc); err != nil {
		return data
	}
	for i, item := range doc {
		if k, _ := item.Key.(string); k != "cloud_init" {
			continue
		}
		ci, ok := item.Value.(yaml2.MapSlice)
		if !ok {
			if item.Value != nil {
				return data
			}
			ci = yaml2.MapSlice{}
		}
		found := false
		for j, f := range ci {
			if k, _ := f.Key.(string); k != "ssh_authorized_keys" {
				continue
			}
			found = true
			keys, ok := f.Value.([]any)
			if !ok && f.Value != nil {
				return data
			}
			for _, k := range keys {
				if s, _ := k.(string); strings.TrimSpace(s) == key {
					return data
				}
			}
			ci[j].Value = append(keys, key)
		}
		if !found {
			ci = append(ci, yaml2.MapItem{Key: "ssh_authorized_keys", Value: []any{key}})
		}
		doc[i].Value = ci
		out, err := yaml2.Marshal(doc)
		if err != nil {
			return data
		}
		return out
	}
	return data
}

// sshForward returns the forward of a TCP guest port 22 among the NICs.
func sshForward(nics []api.NIC) (api.PortForward, bool) {
	for _, n := range nics {
		for _, f := range n.Forwards {
			if f.Proto == "tcp" && f.GuestPort == 22 {
				return f, true
			}
		}
	}
	return api.PortForward{}, false
}

// forwardHost is the host address to connect to for f.
func forwardHost(f api.PortForward) string {
	if f.HostAddr == "" || f.HostAddr == "0.0.0.0" {
		return "127.0.0.1"
	}
	return f.HostAddr
}

// sshArgs returns ssh's argv (without "ssh") for user at the forward f,
// with the key priv ("" lets ssh pick) and the remote command.
func sshArgs(f api.PortForward, user, priv string, extra []string, command []string) []string {
	args := []string{"-p", strconv.Itoa(f.HostPort),
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"}
	if priv != "" {
		args = append(args, "-i", priv, "-o", "IdentitiesOnly=yes")
	}
	args = append(args, extra...)
	args = append(args, "--", user+"@"+forwardHost(f))
	return append(args, command...)
}

// noSSHForward is the error of a VM without a forward to guest port 22.
func noSSHForward(name string, in *api.Info) error {
	if in.PID == 0 {
		return fmt.Errorf("%s is not running (%s/%s); start it first", name, in.State, in.Reason)
	}
	return fmt.Errorf("%s has no forward to guest TCP port 22; add one to a user network, such as `forwards: [\"tcp:127.0.0.1:0-:22\"]`", name)
}

func (a *app) portCommand() *cobra.Command {
	return &cobra.Command{
		Use:               "port NAME",
		Short:             "List a running VM's port forwards with the host ports QEMU listens on",
		Args:              cmdline.ExactArgs(1, "one VM NAME"),
		ValidArgsFunction: a.completeDomains,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			in, err := c.Info(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			var fws []api.PortForward
			for _, n := range in.NICs {
				fws = append(fws, n.Forwards...)
			}
			if a.json {
				if fws == nil {
					fws = []api.PortForward{}
				}
				return a.printJSON(fws)
			}
			if in.PID == 0 {
				return fmt.Errorf("%s is not running (%s/%s): its forwards have no host ports", in.Name, in.State, in.Reason)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PROTO\tHOST\tGUEST\tFIELD")
			for _, f := range fws {
				host := f.HostAddr
				if host == "" {
					host = "0.0.0.0"
				}
				fmt.Fprintf(tw, "%s\t%s:%d\t%s:%d\t%s\n", f.Proto, host, f.HostPort, f.GuestAddr, f.GuestPort, f.Field)
			}
			return tw.Flush()
		},
	}
}

func (a *app) sshCommand() *cobra.Command {
	var user string
	cmd := &cobra.Command{
		Use:   "ssh NAME [-- COMMAND...]",
		Short: "Log in to a VM over its forwarded SSH port (runs the system ssh)",
		Long: `Run the system ssh against the host port that the VM's forward to guest
TCP port 22 listens on, as --user (default debian, the cloud image's user),
with the key that "vmsup up" installs (~/.ssh/id_ed25519, id_ecdsa or
id_rsa, else the one vmsup generated under its cache), without checking
or recording the guest's host key. Without COMMAND it opens a shell.`,
		Example:           "  vmsup ssh demo\n  vmsup ssh demo -- uname -a",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: a.completeDomains,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			name := args[0]
			in, err := c.Info(cmd.Context(), name)
			if err != nil {
				return err
			}
			f, ok := sshForward(in.NICs)
			if !ok {
				return noSSHForward(name, in)
			}
			bin, err := exec.LookPath("ssh")
			if err != nil {
				return errors.New("no ssh command: install openssh-client")
			}
			priv, _ := findKey()
			argv := append([]string{"ssh"}, sshArgs(f, user, priv, nil, args[1:])...)
			return a.execProgram(bin, argv)
		},
	}
	cmd.Flags().StringVarP(&user, "user", "l", DefaultSSHUser, "the guest user to log in as")
	return cmd
}

// sshHint is the command that logs in to the VM name from another
// terminal: with the socket and the binary spelled out when vmsup runs
// with VMSUP_SOCKET (as make demo does).
func sshHint(name string) string {
	sock := os.Getenv(cmdline.SocketEnv)
	if sock == "" {
		return "vmsup ssh " + name
	}
	exe, err := os.Executable()
	if err != nil {
		exe = "vmsup"
	}
	return fmt.Sprintf("%s=%s %s ssh %s", cmdline.SocketEnv, sock, exe, name)
}

// execProgram replaces vmsup with bin (tests replace it).
func (a *app) execProgram(bin string, argv []string) error {
	if a.exec != nil {
		return a.exec(bin, argv)
	}
	return syscall.Exec(bin, argv, os.Environ())
}

// waitSSH polls the guest's SSH through the forward f until a login
// runs `true`, reporting progress, until ctx ends. It is `vmsup up`'s
// progress while the guest boots.
func (a *app) waitSSH(ctx context.Context, name string, f api.PortForward, priv string, raw bool) {
	bin, err := exec.LookPath("ssh")
	if err != nil {
		a.notice(raw, "no ssh command to wait for %s's SSH: install openssh-client", name)
		return
	}
	began := time.Now()
	a.notice(raw, "waiting for SSH on %s:%d (the guest is booting)", forwardHost(f), f.HostPort)
	lastNote := began
	for {
		try, cancel := context.WithTimeout(ctx, 20*time.Second)
		cmd := exec.CommandContext(try, bin, sshArgs(f, DefaultSSHUser, priv, []string{"-o", "BatchMode=yes", "-o", "ConnectTimeout=5"}, []string{"true"})...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, nil, nil
		err := cmd.Run()
		cancel()
		if err == nil {
			a.notice(raw, "SSH answers after %s: %s", time.Since(began).Round(time.Second), sshHint(name))
			return
		}
		if ctx.Err() != nil {
			return
		}
		if time.Since(lastNote) >= 30*time.Second {
			lastNote = time.Now()
			a.notice(raw, "still waiting for SSH on %s:%d (%s)", forwardHost(f), f.HostPort, time.Since(began).Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}
