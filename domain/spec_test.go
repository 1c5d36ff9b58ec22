package domain

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// specTestRead reads a file from testdata.
func specTestRead(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// specTestValid returns a valid spec with every field set; each call
// returns a fresh copy.
func specTestValid() *Spec {
	return &Spec{
		Name:      "web1",
		UUID:      "6f1c2a3e-9b4d-4e8f-a1b2-c3d4e5f60718",
		Memory:    GiB,
		CPUs:      2,
		Machine:   "pc-q35-7.2",
		Accel:     AccelTCG,
		Kernel:    "/var/lib/vmsup/boot/vmlinuz",
		Initrd:    "/var/lib/vmsup/boot/initrd.img",
		Append:    "console=ttyS0 root=/dev/vda rw",
		Disks:     []Disk{{Path: "/var/lib/vmsup/images/root,1.qcow2", Format: DiskFormatQCOW2}, {Path: "/var/lib/vmsup/images/seed.iso", Format: DiskFormatRaw, ReadOnly: true}},
		Serial:    &Serial{Type: SerialSocket, Path: "/run/vmsup-console/web1.sock"},
		Emulator:  "/usr/bin/qemu-system-x86_64",
		ExtraArgs: []string{"-device", "virtio-rng-pci"},
		OnCrash:   OnCrashRestart,
	}
}

// specTestFields returns the sorted, de-duplicated field names of the
// *FieldErrors in err.
func specTestFields(err error) []string {
	var names []string
	for _, fe := range FieldErrors(err) {
		names = append(names, fe.Field)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

func TestParseSpecYAMLAndJSONAgree(t *testing.T) {
	want := specTestValid()
	for _, file := range []string{"full.yaml", "full.json"} {
		t.Run(file, func(t *testing.T) {
			got, err := ParseSpec(specTestRead(t, file))
			if err != nil {
				t.Fatalf("ParseSpec: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("ParseSpec(%s) =\n%+v\nwant\n%+v", file, got, want)
			}
		})
	}
}

func TestParseSpecDefaults(t *testing.T) {
	s, err := ParseSpec(specTestRead(t, "minimal.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	u, err := uuid.Parse(s.UUID)
	if err != nil || u.Version() != 4 || u.String() != s.UUID {
		t.Fatalf("generated uuid %q: not a canonical v4 UUID (%v)", s.UUID, err)
	}
	want := &Spec{Name: "tiny", UUID: s.UUID, Memory: 128 * MiB, CPUs: 1, Machine: "q35", Accel: "auto", OnCrash: "destroy"}
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("defaults:\n got %+v\nwant %+v", s, want)
	}
	if s.Serial != nil || s.Emulator != "" {
		t.Fatalf("serial and emulator must stay unset, got %+v %q", s.Serial, s.Emulator)
	}
	if s.EmulatorPath() != "qemu-system-x86_64" {
		t.Fatalf("EmulatorPath() = %q", s.EmulatorPath())
	}

	// Disk format defaults to raw.
	s, err = ParseSpec([]byte("name: a\ndisks: [{path: /d.img}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Disks[0].Format != "raw" || s.Disks[0].ReadOnly {
		t.Fatalf("disk defaults: %+v", s.Disks[0])
	}

	// null means "absent".
	s, err = ParseSpec([]byte("name: a\nmemory: null\ncpus: ~\nserial: null\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Memory != DefaultMemory || s.CPUs != 1 || s.Serial != nil {
		t.Fatalf("null fields: %+v", s)
	}
}

func TestParseSpecUUIDGeneratedAndKept(t *testing.T) {
	a, err := ParseSpec([]byte("name: a"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseSpec([]byte("name: a"))
	if err != nil {
		t.Fatal(err)
	}
	if a.UUID == b.UUID {
		t.Fatalf("two parses generated the same uuid %s", a.UUID)
	}
	const fixed = "0f8fad5b-d9cb-469f-a165-70867728950e"
	c, err := ParseSpec([]byte("name: a\nuuid: " + fixed))
	if err != nil {
		t.Fatal(err)
	}
	if c.UUID != fixed {
		t.Fatalf("uuid = %q, want %q kept", c.UUID, fixed)
	}
	// ApplyDefaults on a spec built in Go does the same.
	s := &Spec{Name: "x"}
	s.ApplyDefaults()
	if uuidProblem(s.UUID) != "" {
		t.Fatalf("ApplyDefaults uuid %q invalid", s.UUID)
	}
	s.ApplyDefaults()
	s2 := *s
	s2.ApplyDefaults()
	if s2.UUID != s.UUID {
		t.Fatal("ApplyDefaults replaced an existing uuid")
	}
}

func TestParseSpecUnknownFieldNamed(t *testing.T) {
	_, err := ParseSpec(specTestRead(t, "unknown-field.yaml"))
	got := specTestFields(err)
	want := []string{"disks[0].cache", "nics", "serial.colour"}
	if !slices.Equal(got, want) {
		t.Fatalf("unknown fields named %v, want %v (err: %v)", got, want, err)
	}
	if !strings.Contains(err.Error(), `spec field "nics": unknown field`) {
		t.Fatalf("error text: %v", err)
	}

	// Field names are case-sensitive, unlike encoding/json's default.
	_, err = ParseSpec([]byte(`{"Name": "a"}`))
	if got := specTestFields(err); !slices.Equal(got, []string{"Name"}) {
		t.Fatalf("case-variant field: got %v (%v)", got, err)
	}
}

func TestParseSpecWrongTypes(t *testing.T) {
	cases := map[string]string{
		"name: 123":                     "name",
		"name: a\ncpus: two":            "cpus",
		"name: a\ncpus: 0":              "cpus",
		"name: a\ncpus: -2":             "cpus",
		"name: a\ncpus: 1.5":            "cpus",
		"name: a\ncpus: 99999999999999": "cpus",
		"name: a\ndisks: /x.img":        "disks",
		"name: a\ndisks: [/x.img]":      "disks[0]",
		"name: a\ndisks: [null]":        "disks[0]",
		`name: a` + "\n" + `disks: [{path: /x, readonly: "yes"}]`: "disks[0].readonly",
		"name: a\nserial: file":                                   "serial",
		"name: a\nextra_args: -S":                                 "extra_args",
		"name: a\nextra_args: [-m, 64]":                           "extra_args[1]",
		"name: a\nappend: yes":                                    "append",
		"name: a\nmemory: [1G]":                                   "memory",
		"name: a\nmemory: true":                                   "memory",
	}
	for in, field := range cases {
		_, err := ParseSpec([]byte(in))
		if got := specTestFields(err); !slices.Equal(got, []string{field}) {
			t.Errorf("ParseSpec(%q): fields %v, want [%s] (err: %v)", in, got, field, err)
		}
	}
}

func TestParseSpecRejectsBadDocuments(t *testing.T) {
	big := "name: a\nappend: \"" + strings.Repeat("x", MaxSpecBytes) + "\"\n"
	cases := map[string]struct{ in, want string }{
		"empty":          {"", "empty"},
		"blank":          {"  \n# only a comment\n", "empty"},
		"null":           {"null", "empty"},
		"two documents":  {"name: a\n---\nname: b\n", "single YAML document"},
		"empty second":   {"name: a\n---\n", "single YAML document"},
		"json garbage":   {`{"name":"a"} xyz`, "trailing data"},
		"two json":       {`{"name":"a"}{"name":"b"}`, "trailing data"},
		"duplicate key":  {`{"name":"a","name":"b"}`, "already set"},
		"duplicate yaml": {"name: a\nname: b\n", "already set"},
		"list":           {"- name: a\n", "mapping"},
		"scalar":         {"hello", "mapping"},
		"syntax":         {"name: [a", "not valid YAML"},
		"too big":        {big, "limit"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			s, err := ParseSpec([]byte(c.in))
			if err == nil {
				t.Fatalf("accepted: %+v", s)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

func TestParseSpecAliasBombBounded(t *testing.T) {
	// Each level multiplies the expansion by 9; yaml.v2 stops excessive
	// aliasing, and ParseSpec must fail quickly either way.
	var b strings.Builder
	b.WriteString("a0: &a0 [x,x,x,x,x,x,x,x,x]\n")
	for i := 1; i < 12; i++ {
		prev := "*a" + strconv.Itoa(i-1)
		fmt.Fprintf(&b, "a%d: &a%d [%s%s]\n", i, i, strings.Repeat(prev+",", 8), prev)
	}
	b.WriteString("name: a\n")
	start := time.Now()
	_, err := ParseSpec([]byte(b.String()))
	if err == nil {
		t.Fatal("alias bomb accepted")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("alias bomb took %v", d)
	}
}

func TestParseSpecMemory(t *testing.T) {
	good := map[string]Size{
		"64M":            64 * MiB,
		"1G":             GiB,
		"512MiB":         512 * MiB,
		"1g":             GiB,
		"2048 KiB":       2 * MiB,
		"1T":             TiB,
		"1048576":        MiB,
		"\"1073741824\"": GiB,
	}
	for in, want := range good {
		s, err := ParseSpec([]byte("name: a\nmemory: " + in))
		if err != nil {
			t.Errorf("memory %s: %v", in, err)
			continue
		}
		if s.Memory != want {
			t.Errorf("memory %s = %d, want %d", in, s.Memory, want)
		}
	}
	// Rejected at parse time (syntax) or by Validate (range); either
	// way the error names "memory".
	bad := []string{"0", "-1", "1T+1", "1099511627777", "abc", "1.5G", "1.5", "64MB", "512K", "1048575", "18446744073709551616", "99999999999T", "\"\"", "M"}
	for _, in := range bad {
		_, err := ParseSpec([]byte("name: a\nmemory: " + in))
		if got := specTestFields(err); !slices.Equal(got, []string{"memory"}) {
			t.Errorf("memory %s: fields %v (err %v), want [memory]", in, got, err)
		}
	}
}

func TestSizeParseAndFormat(t *testing.T) {
	cases := []struct {
		in   string
		want Size
		ok   bool
	}{
		{"1", 1, true}, {"1B", 1, true}, {"4K", 4 * KiB, true}, {"4k", 4 * KiB, true},
		{"64M", 64 * MiB, true}, {"64MiB", 64 * MiB, true}, {"64mib", 64 * MiB, true},
		{"1G", GiB, true}, {"3 GiB", 3 * GiB, true}, {"2T", 2 * TiB, true},
		{"16777215T", 16777215 * TiB, true}, {"16777216T", 0, false}, // 2^64 overflows
		{"", 0, false}, {"0", 0, false}, {"0M", 0, false}, {"-1", 0, false}, {"+1", 0, false},
		{"1.5G", 0, false}, {"1,5G", 0, false}, {"1GB", 0, false}, {"1P", 0, false},
		{"1T+1", 0, false}, {"abc", 0, false}, {" 1G", 0, false}, {"1G ", 0, false},
		{"1  G", 0, false}, {"0x10", 0, false}, {strings.Repeat("9", 65), 0, false},
	}
	for _, c := range cases {
		got, err := ParseSize(c.in)
		if c.ok != (err == nil) || got != c.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
	for _, c := range []struct {
		s    Size
		str  string
		json string
	}{
		{128 * MiB, "128M", `"128M"`}, {GiB, "1G", `"1G"`}, {1536 * MiB, "1536M", `"1536M"`},
		{TiB, "1T", `"1T"`}, {4 * KiB, "4K", `"4K"`}, {MiB + 1, "1048577", `1048577`}, {0, "0", `0`},
	} {
		if got := c.s.String(); got != c.str {
			t.Errorf("Size(%d).String() = %q, want %q", c.s, got, c.str)
		}
		js, err := json.Marshal(c.s)
		if err != nil || string(js) != c.json {
			t.Errorf("json.Marshal(Size(%d)) = %s, %v; want %s", c.s, js, err, c.json)
		}
		if c.s == 0 {
			continue
		}
		var back Size
		if err := json.Unmarshal(js, &back); err != nil || back != c.s {
			t.Errorf("round trip of %s: %d, %v", js, back, err)
		}
		if c.s.Bytes() != uint64(c.s) {
			t.Errorf("Bytes() = %d", c.s.Bytes())
		}
	}
	if (MiB+1).MiBCeil() != 2 || MiB.MiBCeil() != 1 || Size(1).MiBCeil() != 1 {
		t.Error("MiBCeil does not round up")
	}
}

func TestSpecValidateFieldErrors(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(s *Spec)
		field  string
	}{
		{"name empty", func(s *Spec) { s.Name = "" }, "name"},
		{"name dotdot", func(s *Spec) { s.Name = ".." }, "name"},
		{"name slash", func(s *Spec) { s.Name = "a/b" }, "name"},
		{"name dash", func(s *Spec) { s.Name = "-rf" }, "name"},
		{"name 64", func(s *Spec) { s.Name = strings.Repeat("a", 64) }, "name"},
		{"name newline", func(s *Spec) { s.Name = "a\n" }, "name"},
		{"uuid empty", func(s *Spec) { s.UUID = "" }, "uuid"},
		{"uuid junk", func(s *Spec) { s.UUID = "not-a-uuid" }, "uuid"},
		{"uuid upper", func(s *Spec) { s.UUID = strings.ToUpper(s.UUID) }, "uuid"},
		{"uuid braces", func(s *Spec) { s.UUID = "{" + s.UUID + "}" }, "uuid"},
		{"uuid urn", func(s *Spec) { s.UUID = "urn:uuid:" + s.UUID }, "uuid"},
		{"uuid nil", func(s *Spec) { s.UUID = uuid.Nil.String() }, "uuid"},
		{"memory zero", func(s *Spec) { s.Memory = 0 }, "memory"},
		{"memory small", func(s *Spec) { s.Memory = MiB - 1 }, "memory"},
		{"memory big", func(s *Spec) { s.Memory = TiB + 1 }, "memory"},
		{"cpus zero", func(s *Spec) { s.CPUs = 0 }, "cpus"},
		{"cpus negative", func(s *Spec) { s.CPUs = -1 }, "cpus"},
		{"cpus 256", func(s *Spec) { s.CPUs = 256 }, "cpus"},
		{"cpus none machine", func(s *Spec) { s.Machine = "none"; s.Kernel, s.Initrd, s.Append, s.Disks = "", "", "", nil }, "cpus"},
		{"machine empty", func(s *Spec) { s.Machine = "" }, "machine"},
		{"machine upper", func(s *Spec) { s.Machine = "Q35" }, "machine"},
		{"machine comma", func(s *Spec) { s.Machine = "q35,accel=kvm" }, "machine"},
		{"machine long", func(s *Spec) { s.Machine = strings.Repeat("a", 65) }, "machine"},
		{"accel", func(s *Spec) { s.Accel = "hvf" }, "accel"},
		{"accel empty", func(s *Spec) { s.Accel = "" }, "accel"},
		{"kernel relative", func(s *Spec) { s.Kernel = "vmlinuz" }, "kernel"},
		{"kernel none machine", func(s *Spec) { s.Machine = "none"; s.CPUs = 1; s.Disks = nil }, "kernel"},
		{"initrd without kernel", func(s *Spec) { s.Kernel, s.Append = "", "" }, "initrd"},
		{"initrd relative", func(s *Spec) { s.Initrd = "./initrd" }, "initrd"},
		{"append without kernel", func(s *Spec) { s.Kernel, s.Initrd = "", "" }, "append"},
		{"append newline", func(s *Spec) { s.Append = "a\nb" }, "append"},
		{"append nul", func(s *Spec) { s.Append = "a\x00b" }, "append"},
		{"disks none machine", func(s *Spec) { s.Machine = "none"; s.CPUs = 1; s.Kernel, s.Initrd, s.Append = "", "", "" }, "disks"},
		{"disk path empty", func(s *Spec) { s.Disks[1].Path = "" }, "disks[1].path"},
		{"disk path relative", func(s *Spec) { s.Disks[1].Path = "seed.iso" }, "disks[1].path"},
		{"disk path duplicate", func(s *Spec) { s.Disks[1].Path = s.Disks[0].Path }, "disks[1].path"},
		{"disk format", func(s *Spec) { s.Disks[0].Format = "vmdk" }, "disks[0].format"},
		{"disk format empty", func(s *Spec) { s.Disks[0].Format = "" }, "disks[0].format"},
		{"serial type", func(s *Spec) { s.Serial.Type = "pty" }, "serial.type"},
		{"serial type empty", func(s *Spec) { s.Serial.Type = "" }, "serial.type"},
		{"serial path relative", func(s *Spec) { s.Serial.Path = "console.sock" }, "serial.path"},
		{"serial path with none", func(s *Spec) { s.Serial.Type = SerialNone }, "serial.path"},
		{"serial socket too long", func(s *Spec) { s.Serial.Path = "/" + strings.Repeat("s", 107) }, "serial.path"},
		{"emulator relative path", func(s *Spec) { s.Emulator = "bin/qemu" }, "emulator"},
		{"emulator option", func(s *Spec) { s.Emulator = "-qemu" }, "emulator"},
		{"emulator dot", func(s *Spec) { s.Emulator = ".." }, "emulator"},
		{"emulator space", func(s *Spec) { s.Emulator = "qemu system" }, "emulator"},
		{"extra arg nul", func(s *Spec) { s.ExtraArgs = []string{"-device", "x\x00y"} }, "extra_args[1]"},
		{"extra arg qmp", func(s *Spec) { s.ExtraArgs = []string{"-device", "x", "-qmp", "tcp::4444"} }, "extra_args[2]"},
		{"on_crash", func(s *Spec) { s.OnCrash = "reboot" }, "on_crash"},
		{"on_crash empty", func(s *Spec) { s.OnCrash = "" }, "on_crash"},
	}
	if err := specTestValid().Validate(); err != nil {
		t.Fatalf("base spec invalid: %v", err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := specTestValid()
			c.mutate(s)
			err := s.Validate()
			if got := specTestFields(err); !slices.Equal(got, []string{c.field}) {
				t.Fatalf("fields %v, want [%s]; err: %v", got, c.field, err)
			}
			if !strings.Contains(err.Error(), `spec field "`+c.field+`": `) {
				t.Fatalf("message does not name %q: %v", c.field, err)
			}
		})
	}
}

func TestSpecValidateReportsAllProblems(t *testing.T) {
	_, err := ParseSpec(specTestRead(t, "bad-many.yaml"))
	want := []string{"accel", "append", "cpus", "disks[0].format", "disks[0].path", "emulator", "extra_args[0]", "initrd",
		"machine", "memory", "name", "on_crash", "serial.type", "uuid"}
	if got := specTestFields(err); !slices.Equal(got, want) {
		t.Fatalf("fields\n got %v\nwant %v\nerr: %v", got, want, err)
	}
	// A valid machine "none" spec has no errors at all.
	if _, err := ParseSpec(specTestRead(t, "machine-none.yaml")); err != nil {
		t.Fatal(err)
	}
}

func TestSpecPathsRejected(t *testing.T) {
	bad := []string{
		"", "relative/disk.img", "./disk.img", "../disk.img", "/var/lib/../../etc/shadow",
		"/var/lib/./disk.img", "/var//lib/disk.img", "/var/lib/", "/var/lib/disk\x00.img",
		"/var/lib/disk\n.img", "/var/lib/disk\r.img", "/var/lib/\x7fdisk.img", "/" + strings.Repeat("a", 4095),
	}
	setters := map[string]func(s *Spec, p string){
		"kernel":        func(s *Spec, p string) { s.Kernel = p },
		"initrd":        func(s *Spec, p string) { s.Initrd = p },
		"disks[0].path": func(s *Spec, p string) { s.Disks[0].Path = p },
		"serial.path":   func(s *Spec, p string) { s.Serial.Type = SerialFile; s.Serial.Path = p },
		"emulator":      func(s *Spec, p string) { s.Emulator = p },
	}
	for field, set := range setters {
		for _, p := range bad {
			if (field == "kernel" || field == "initrd" || field == "serial.path") && p == "" {
				continue // empty means "not set" for these
			}
			if field == "emulator" && !strings.Contains(p, "/") {
				continue // a command name; checked elsewhere
			}
			s := specTestValid()
			set(s, p)
			if got := specTestFields(s.Validate()); !slices.Contains(got, field) {
				t.Errorf("%s = %q accepted (fields %v)", field, p, got)
			}
		}
	}
	// Clean absolute paths, even odd ones, pass.
	s := specTestValid()
	s.Disks[0].Path = "/var/lib/vmsup/images/a b,c=d.img"
	s.Emulator = "qemu-system-x86_64"
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestSpecExtraArgsForbidden(t *testing.T) {
	for opt := range forbiddenExtraArgs {
		for _, spelled := range []string{opt, "-" + opt} {
			s := specTestValid()
			s.ExtraArgs = []string{"-device", "virtio-rng-pci", spelled}
			if got := specTestFields(s.Validate()); !slices.Equal(got, []string{"extra_args[2]"}) {
				t.Errorf("extra_args %q: fields %v", spelled, got)
			}
		}
	}
	for _, required := range []string{"-qmp", "-qmp-pretty", "-monitor", "-mon", "-pidfile", "-daemonize", "-S", "-name", "-uuid", "-runas", "-chroot"} {
		if _, ok := forbiddenExtraArgs[required]; !ok {
			t.Errorf("%s is not forbidden", required)
		}
	}

	// -serial is vmsup's unless serial.type is "none".
	for _, serial := range []*Serial{nil, {Type: SerialFile}, {Type: SerialSocket}} {
		s := specTestValid()
		s.Serial = serial
		s.ExtraArgs = []string{"-serial", "pty"}
		if got := specTestFields(s.Validate()); !slices.Equal(got, []string{"extra_args[0]"}) {
			t.Errorf("serial %+v: -serial in extra_args: fields %v", serial, got)
		}
	}
	s := specTestValid()
	s.Serial = &Serial{Type: SerialNone}
	s.ExtraArgs = []string{"-serial", "pty", "--device", "virtio-rng-pci", "-smbios", "type=1,serial=-S"}
	if err := s.Validate(); err != nil {
		t.Fatalf("serial none with -serial: %v", err)
	}
}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"a", "web1", "A.b_c-d", "0", strings.Repeat("x", 63)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a/b", "/a", "-a", "_a", ".a", "a b", "a\n", "a\x00", "é", strings.Repeat("x", 64)} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("ValidateName(%q) accepted", bad)
		}
	}
}

func TestFieldErrorMessage(t *testing.T) {
	err := error(&FieldError{Field: "disks[1].path", Problem: "must be an absolute path"})
	if got := err.Error(); got != `spec field "disks[1].path": must be an absolute path` {
		t.Fatalf("Error() = %s", got)
	}
	joined := errors.Join(err, &FieldError{Field: "name", Problem: "x"}, errors.New("other"))
	if got := FieldErrors(joined); len(got) != 2 || got[1].Field != "name" {
		t.Fatalf("FieldErrors = %v", got)
	}
	var fe *FieldError
	if !errors.As(joined, &fe) || fe.Field != "disks[1].path" {
		t.Fatal("errors.As finds no *FieldError")
	}
	if FieldErrors(nil) != nil {
		t.Fatal("FieldErrors(nil) not nil")
	}
}

func TestSpecJSONRoundTrip(t *testing.T) {
	for _, s := range []*Spec{specTestValid(), {Name: "x", Memory: MiB + 512}} {
		s.ApplyDefaults()
		js, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseSpec(js)
		if err != nil {
			t.Fatalf("ParseSpec(%s): %v", js, err)
		}
		if !reflect.DeepEqual(back, s) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", back, s)
		}
	}
}

func TestParseSpecErrorsBounded(t *testing.T) {
	var unknown strings.Builder
	unknown.WriteString("name: a\n")
	for i := 0; i < 5000; i++ {
		fmt.Fprintf(&unknown, "k%d: v\n", i)
	}
	cases := map[string]string{
		"unknown keys":   unknown.String(),
		"duplicate keys": "name: a\n" + strings.Repeat("k: v\n", 5000),
		"bad extra args": "name: a\nextra_args: [" + strings.Repeat("-S,", 5000) + "-S]\n",
		"long enum":      "name: a\naccel: " + strings.Repeat("x", 500000) + "\n",
		"long size":      "name: a\nmemory: " + strings.Repeat("9", 500000) + "\n",
	}
	for name, in := range cases {
		_, err := ParseSpec([]byte(in))
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if n := len(err.Error()); n > 8<<10 {
			t.Errorf("%s: error message is %d bytes", name, n)
		}
		if n := len(FieldErrors(err)); n > maxProblems {
			t.Errorf("%s: %d field errors", name, n)
		}
	}
}
