package domain

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	yaml2 "go.yaml.in/yaml/v2"
	"sigs.k8s.io/yaml"

	"github.com/vmsup/vmsup/domain/cloudinit"
	"github.com/vmsup/vmsup/domain/netcfg"
)

// Spec is a VM definition, read from YAML or JSON.
//
// A spec is hostile input: ParseSpec rejects unknown fields, wrong types,
// multiple documents and oversized input, and Validate checks every field
// before anything reaches a QEMU command line. Fields left empty take the
// defaults documented below (see ApplyDefaults).
type Spec struct {
	// Name identifies the domain; it must match NamePattern.
	Name string `json:"name"`
	// UUID is the canonical, lower-case UUID of the domain; a random
	// (version 4) UUID is generated when it is empty.
	UUID string `json:"uuid,omitempty"`
	// Memory is the guest RAM: at least 1M, at most 1T; default 128M.
	Memory Size `json:"memory"`
	// CPUs is the number of virtual CPUs: 1..255, default 1. Machine
	// "none" supports only 1.
	CPUs int `json:"cpus,omitempty"`
	// Machine is the QEMU machine type, default "q35"; it must match
	// ^[a-z0-9][a-z0-9._-]{0,63}$ (for example "none", "pc", "pc-q35-7.2").
	Machine string `json:"machine,omitempty"`
	// Accel is the accelerator: "auto" (default), "kvm" or "tcg".
	Accel string `json:"accel,omitempty"`
	// Kernel is the absolute path of a kernel image to boot directly.
	Kernel string `json:"kernel,omitempty"`
	// Initrd is the absolute path of an initial ramdisk; requires Kernel.
	Initrd string `json:"initrd,omitempty"`
	// Append is the kernel command line; requires Kernel.
	Append string `json:"append,omitempty"`
	// Disks are attached as virtio block devices, in order.
	Disks []Disk `json:"disks,omitempty"`
	// Networks are the VM's NICs (virtio-net-pci), in order. No entry
	// means no NIC at all.
	Networks []Network `json:"networks,omitempty"`
	// CloudInit, when set, makes vmsup write a NoCloud seed image (label
	// cidata) at define and attach it read-only after the disks.
	CloudInit *cloudinit.Config `json:"cloud_init,omitempty"`
	// Serial says where the first serial port goes. Nil means a console
	// socket (RunPaths.ConsoleSocket) that also logs to RunPaths.SerialLog.
	Serial *Serial `json:"serial,omitempty"`
	// Emulator is the QEMU binary: an absolute path, or a bare command
	// name looked up in PATH when the domain starts (never at parse
	// time). Empty means DefaultEmulator; see EmulatorPath.
	Emulator string `json:"emulator,omitempty"`
	// ExtraArgs are appended to the QEMU command line. They may not use
	// the options vmsup manages itself (see Validate).
	ExtraArgs []string `json:"extra_args,omitempty"`
	// OnCrash is the policy when QEMU exits unexpectedly: "destroy"
	// (default), "restart" or "preserve".
	OnCrash string `json:"on_crash,omitempty"`
	// Restart tunes the backoff and the crash-loop limit of on_crash
	// "restart". Nil takes the defaults.
	Restart *RestartPolicy `json:"restart,omitempty"`
}

// Disk is a disk image attached to the VM as a virtio block device. It is
// either an image file used as it is (Path), or a qcow2 overlay that vmsup
// makes on define in the state dir on top of a base image (Image), which is
// never written.
type Disk struct {
	// Path is the absolute path of an image the VM uses as it is.
	Path string `json:"path,omitempty"`
	// Image is the absolute path of a base image (qcow2 or raw, without a
	// backing file) for an overlay; exactly one of Path and Image is set.
	Image string `json:"image,omitempty"`
	// Format is the format of Path, or of Image's base: "raw" (default) or
	// "qcow2". An overlay itself is always qcow2.
	Format string `json:"format,omitempty"`
	// Size is the overlay's virtual size (image disks only): at least the
	// base's size, a multiple of 512 bytes; 0 keeps the base's size.
	Size Size `json:"size,omitempty"`
	// ReadOnly attaches the disk read-only (path disks only).
	ReadOnly bool `json:"readonly,omitempty"`
}

// Network is one NIC of the VM, a virtio-net-pci device.
type Network struct {
	// Type is "user" (QEMU user-mode networking; the default) or "tap" (a
	// tap device that vmsup creates on Bridge; needs root).
	Type string `json:"type,omitempty"`
	// MAC is the NIC's address; when empty it is derived from the UUID
	// and the NIC's index (see Spec.MAC), so it is the same on every start.
	MAC string `json:"mac,omitempty"`
	// Forwards are host-to-guest port forwards of a user network, such as
	// "tcp:127.0.0.1:2222-:22", or "tcp::0-:22" (host port 0: a free port
	// picked at each start and reported in Info).
	Forwards []string `json:"forwards,omitempty"`
	// Bridge is the existing host bridge a tap network is attached to.
	Bridge string `json:"bridge,omitempty"`
}

// Serial is the backend of the VM's first serial port.
type Serial struct {
	// Type is "file" (guest output is appended to a log file), "socket"
	// (a unix socket server for an interactive console) or "none".
	Type string `json:"type"`
	// Path is the log file or the socket path; it must be absolute. When
	// empty, the file is RunPaths.SerialLog and the socket is
	// RunPaths.ConsoleSocket. It must be empty for type "none".
	Path string `json:"path,omitempty"`
}

// Values and defaults of spec fields.
const (
	AccelAuto = "auto" // pick kvm when usable, else tcg (see DetectAccel)
	AccelKVM  = "kvm"  // hardware virtualization; needs a usable /dev/kvm
	AccelTCG  = "tcg"  // software emulation

	OnCrashDestroy  = "destroy"  // leave the domain shut off, reason crashed
	OnCrashRestart  = "restart"  // start it again, with backoff
	OnCrashPreserve = "preserve" // keep the crashed state for inspection

	DiskFormatRaw   = "raw"   // raw image
	DiskFormatQCOW2 = "qcow2" // qcow2 image

	SerialFile   = "file"   // serial output appended to a file
	SerialSocket = "socket" // serial port on a unix socket server
	SerialNone   = "none"   // no serial port

	// DefaultMemory is the guest RAM when the spec gives none.
	DefaultMemory = 128 * MiB
	// DefaultCPUs is the number of vCPUs when the spec gives none.
	DefaultCPUs = 1
	// DefaultMachine is the QEMU machine type when the spec gives none.
	DefaultMachine = "q35"
	// DefaultEmulator is the QEMU binary, looked up in PATH, when the spec
	// gives none.
	DefaultEmulator = "qemu-system-x86_64"

	// MaxSpecBytes is the largest spec ParseSpec accepts.
	MaxSpecBytes = 1 << 20
	// MaxCPUs is the largest number of vCPUs a spec may ask for.
	MaxCPUs = 255
	// MinMemory and MaxMemory bound Spec.Memory.
	MinMemory = MiB
	// MaxMemory is the largest Spec.Memory.
	MaxMemory = TiB
	// MaxSocketPath is the longest unix socket path (sun_path holds 108
	// bytes including the terminating NUL).
	MaxSocketPath = 107
	// maxPath is the longest path accepted in a spec (PATH_MAX - 1).
	maxPath = 4095
)

// NamePattern is the syntax of a domain name: 1 to 63 characters, letters,
// digits, '.', '_' and '-', starting with a letter or digit. Names are used
// as file names (state and run directories), so "..", "a/b" and names
// starting with '-' can never match.
var NamePattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// machinePattern is the syntax of Spec.Machine.
var machinePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// emulatorNamePattern is the syntax of an Emulator given as a bare command
// name, looked up in PATH.
var emulatorNamePattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._+-]{0,127}$`)

// FieldError is one problem with one spec field. Field is the path of the
// field in the spec's own syntax, such as "memory", "disks[1].path" or
// "serial.type".
type FieldError struct {
	Field   string
	Problem string
}

// Error returns, for example,
// `spec field "disks[1].path": must be an absolute path`.
func (e *FieldError) Error() string {
	return fmt.Sprintf("spec field %q: %s", e.Field, e.Problem)
}

// FieldErrors returns every *FieldError in err, which may be a single
// *FieldError or a tree built with errors.Join (as ParseSpec and Validate
// return). It returns nil when err holds none.
func FieldErrors(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		if fe, ok := e.(*FieldError); ok {
			out = append(out, fe)
			return
		}
		switch u := e.(type) {
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				walk(x)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	walk(err)
	return out
}

// ValidateName checks a domain name against NamePattern. The driver uses it
// for lookups too, so a name that could never be defined is reported as
// invalid rather than as not found.
func ValidateName(name string) error {
	if p := nameProblem(name); p != "" {
		return fmt.Errorf("invalid domain name %q: %s", name, p)
	}
	return nil
}

func nameProblem(name string) string {
	switch {
	case name == "":
		return "is required"
	case len(name) > 63:
		return "must be at most 63 characters"
	case !NamePattern.MatchString(name):
		return "must start with a letter or digit and contain only letters, digits, '.', '_' and '-'"
	}
	return ""
}

// ParseSpec reads a spec from YAML or JSON (JSON is read as YAML). It
// rejects input larger than MaxSpecBytes, empty input, more than one
// document, trailing data, duplicate keys, unknown fields (matched
// case-sensitively) and values of the wrong type, then applies defaults
// and validates. Every problem found in a stage is reported, each as a
// *FieldError when it concerns a field, combined with errors.Join.
func ParseSpec(data []byte) (*Spec, error) {
	if len(data) > MaxSpecBytes {
		return nil, fmt.Errorf("spec is %d bytes; the limit is %d", len(data), MaxSpecBytes)
	}

	// One document only: the YAML decoder must reach EOF after it.
	dec := yaml2.NewDecoder(bytes.NewReader(data))
	dec.SetStrict(true)
	var first any
	if err := dec.Decode(&first); err != nil {
		if err == io.EOF {
			return nil, errors.New("spec is empty")
		}
		return nil, fmt.Errorf("spec is not valid YAML or JSON: %s", capLines(err.Error()))
	}
	var second any
	if err := dec.Decode(&second); err != io.EOF {
		if err == nil {
			return nil, errors.New("spec must be a single YAML document; found more than one")
		}
		return nil, fmt.Errorf("spec has trailing data after the first document: %s", capLines(err.Error()))
	}
	if first == nil {
		return nil, errors.New("spec is empty")
	}

	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("spec is not valid YAML or JSON: %s", capLines(err.Error()))
	}

	// Check the shape (unknown fields, types) first, to name every bad
	// field with its full path.
	jd := json.NewDecoder(bytes.NewReader(js))
	jd.UseNumber()
	var tree any
	if err := jd.Decode(&tree); err != nil {
		return nil, fmt.Errorf("spec is not valid YAML or JSON: %w", err)
	}
	if _, ok := tree.(map[string]any); !ok {
		return nil, fmt.Errorf("spec must be a mapping of fields, not %s", jsonKind(tree))
	}
	errs := checkShape("", tree, reflect.TypeOf(Spec{}))
	// An explicit zero is a mistake, not a request for the default
	// (memory: 0 is rejected by ParseSize for the same reason).
	if n, ok := tree.(map[string]any)["cpus"].(json.Number); ok {
		if i, err := n.Int64(); err == nil && i == 0 {
			errs = append(errs, &FieldError{Field: "cpus", Problem: fmt.Sprintf("must be between 1 and %d, got 0", MaxCPUs)})
		}
	}
	if len(errs) > 0 {
		return nil, joinProblems(errs)
	}

	var s Spec
	jd = json.NewDecoder(bytes.NewReader(js))
	jd.DisallowUnknownFields()
	if err := jd.Decode(&s); err != nil {
		if p, ok := asSizeError(err); ok {
			return nil, &FieldError{Field: "memory", Problem: p}
		}
		return nil, fmt.Errorf("spec: %w", err)
	}
	s.ApplyDefaults()
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

var (
	sizeType     = reflect.TypeOf(Size(0))
	durationType = reflect.TypeOf(Duration(0))
)

// checkShape compares a decoded JSON value with the Go type it will be
// decoded into, and returns a *FieldError for each unknown field and each
// value of the wrong type. JSON null is accepted where the field may be
// absent, and rejected inside lists.
func checkShape(path string, v any, t reflect.Type) []error {
	bad := func(problem string) []error {
		return []error{&FieldError{Field: path, Problem: problem}}
	}
	if t == sizeType {
		var err error
		switch x := v.(type) {
		case string:
			_, err = ParseSize(x)
		case json.Number:
			err = (new(Size)).UnmarshalJSON([]byte(x))
		default:
			return bad(fmt.Sprintf(`must be a size such as "512M" or a number of bytes, not %s`, jsonKind(v)))
		}
		if p, ok := asSizeError(err); ok {
			return bad(p)
		}
		return nil
	}
	if t == durationType {
		x, ok := v.(string)
		if !ok {
			return bad(`must be a duration such as "1s" or "2m", not ` + jsonKind(v))
		}
		if _, err := time.ParseDuration(x); err != nil {
			return bad(fmt.Sprintf(`invalid duration %q: must be like "1s" or "2m"`, x))
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Pointer:
		return checkShape(path, v, t.Elem())
	case reflect.Float64:
		if _, ok := v.(json.Number); !ok {
			return bad("must be a number, not " + jsonKind(v))
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			return bad("must be a string, not " + jsonKind(v) + " (quote the value)")
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			return bad("must be true or false, not " + jsonKind(v))
		}
	case reflect.Int:
		n, ok := v.(json.Number)
		if !ok {
			return bad("must be a whole number, not " + jsonKind(v))
		}
		if _, err := strconv.ParseInt(string(n), 10, 32); err != nil {
			return bad(fmt.Sprintf("must be a whole number in range, not %s", n))
		}
	case reflect.Slice:
		list, ok := v.([]any)
		if !ok {
			return bad("must be a list, not " + jsonKind(v))
		}
		var errs []error
		for i, el := range list {
			p := fmt.Sprintf("%s[%d]", path, i)
			if el == nil {
				errs = append(errs, &FieldError{Field: p, Problem: "must not be null"})
				continue
			}
			errs = append(errs, checkShape(p, el, t.Elem())...)
		}
		return errs
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return bad("must be a mapping of fields, not " + jsonKind(v))
		}
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name != "" && name != "-" {
				fields[name] = f.Type
			}
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var errs []error
		for _, k := range keys {
			p := k
			if path != "" {
				p = path + "." + k
			}
			ft, known := fields[k]
			if !known {
				errs = append(errs, &FieldError{Field: p, Problem: "unknown field"})
				continue
			}
			if m[k] == nil {
				continue // null: same as absent
			}
			errs = append(errs, checkShape(p, m[k], ft)...)
		}
		return errs
	default:
		return bad("unsupported field type " + t.String())
	}
	return nil
}

// jsonKind names the JSON type of a decoded value, for error messages.
func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number, float64:
		return "a number"
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	}
	return fmt.Sprintf("%T", v)
}

// ApplyDefaults fills every empty field that has a default: memory 128M,
// 1 CPU, machine "q35", accel "auto", on_crash "destroy", disk format
// "raw", and a random version 4 UUID. Empty disks and extra_args lists
// become nil. Emulator stays empty (EmulatorPath
// gives the default) and a nil Serial stays nil (BuildArgs then serves a
// console socket that logs to RunPaths.SerialLog).
func (s *Spec) ApplyDefaults() {
	if s.UUID == "" {
		s.UUID = uuid.NewString()
	}
	if s.Memory == 0 {
		s.Memory = DefaultMemory
	}
	if s.CPUs == 0 {
		s.CPUs = DefaultCPUs
	}
	if s.Machine == "" {
		s.Machine = DefaultMachine
	}
	if s.Accel == "" {
		s.Accel = AccelAuto
	}
	if s.OnCrash == "" {
		s.OnCrash = OnCrashDestroy
	}
	for i := range s.Disks {
		if s.Disks[i].Format == "" {
			s.Disks[i].Format = DiskFormatRaw
		}
	}
	for i := range s.Networks {
		if s.Networks[i].Type == "" {
			s.Networks[i].Type = netcfg.TypeUser
		}
		if len(s.Networks[i].Forwards) == 0 {
			s.Networks[i].Forwards = nil
		}
	}
	// An empty list and no list mean the same; keep one form.
	if len(s.Disks) == 0 {
		s.Disks = nil
	}
	if len(s.Networks) == 0 {
		s.Networks = nil
	}
	if len(s.ExtraArgs) == 0 {
		s.ExtraArgs = nil
	}
}

// forbiddenExtraArgs are QEMU options vmsup manages itself; ExtraArgs may
// not contain them (in the "-opt" or "--opt" spelling). "-serial" is only
// allowed when the spec's serial type is "none".
var forbiddenExtraArgs = map[string]string{
	"-qmp":        "vmsup owns the QMP monitor",
	"-qmp-pretty": "vmsup owns the QMP monitor",
	"-monitor":    "vmsup owns the monitor",
	"-mon":        "vmsup owns the monitor",
	"-readconfig": "a config file could add monitors and chardevs behind vmsup's back",
	"-pidfile":    "vmsup owns the pid file",
	"-daemonize":  "vmsup supervises the QEMU process itself",
	"-S":          "vmsup always starts QEMU paused",
	"-preconfig":  "vmsup starts QEMU paused with -S",
	"-name":       "vmsup sets the name",
	"-uuid":       "vmsup sets the UUID",
	"-runas":      "vmsup decides the user QEMU runs as",
	"-chroot":     "vmsup decides where QEMU runs",
	"-sandbox":    "vmsup always confines QEMU with its seccomp sandbox",
	"-run-with":   "vmsup decides the user QEMU runs as",
}

// Validate checks the spec as it will be used, after ApplyDefaults: fields
// that have a default must be set. It returns nil when the spec is valid,
// else every problem, each a *FieldError, combined with errors.Join (see
// FieldErrors).
//
// Paths (kernel, initrd, disks, serial, and emulator when it contains a
// '/') must be absolute, equal to their filepath.Clean form (so no ".."
// element) and free of control characters. Validate touches no file: the
// paths are checked when the domain starts.
func (s *Spec) Validate() error {
	var errs []error
	add := func(field, problem string) {
		if problem != "" {
			errs = append(errs, &FieldError{Field: field, Problem: problem})
		}
	}

	add("name", nameProblem(s.Name))
	add("uuid", uuidProblem(s.UUID))

	switch {
	case s.Memory < MinMemory:
		add("memory", fmt.Sprintf("must be at least %s, got %s bytes", MinMemory, strconv.FormatUint(s.Memory.Bytes(), 10)))
	case s.Memory > MaxMemory:
		add("memory", fmt.Sprintf("must be at most %s, got %s bytes", MaxMemory, strconv.FormatUint(s.Memory.Bytes(), 10)))
	}

	noneMachine := s.Machine == "none"
	switch {
	case s.CPUs < 1 || s.CPUs > MaxCPUs:
		add("cpus", fmt.Sprintf("must be between 1 and %d, got %d", MaxCPUs, s.CPUs))
	case noneMachine && s.CPUs != 1:
		add("cpus", fmt.Sprintf(`machine "none" supports only 1 CPU, got %d`, s.CPUs))
	}

	if !machinePattern.MatchString(s.Machine) {
		add("machine", `must be a QEMU machine type such as "q35", "pc" or "none" (lower-case letters, digits, '.', '_', '-'; at most 64)`)
	}
	add("accel", enumProblem(s.Accel, AccelAuto, AccelKVM, AccelTCG))
	add("on_crash", enumProblem(s.OnCrash, OnCrashDestroy, OnCrashRestart, OnCrashPreserve))
	if r := s.Restart; r != nil {
		if r.Initial < 0 || time.Duration(r.Initial) > time.Hour {
			add("restart.initial", "must be between 0 and 1h")
		}
		if r.Max < 0 || time.Duration(r.Max) > 24*time.Hour {
			add("restart.max", "must be between 0 and 24h")
		} else if r.Max != 0 && r.Max < r.Initial {
			add("restart.max", "must not be less than restart.initial")
		}
		if r.Factor != 0 && (r.Factor < 1 || r.Factor > 10) {
			add("restart.factor", fmt.Sprintf("must be between 1 and 10, got %g", r.Factor))
		}
		if r.Limit < 0 || r.Limit > 1000 {
			add("restart.limit", fmt.Sprintf("must be between 1 and 1000, got %d", r.Limit))
		}
		if r.Window < 0 || time.Duration(r.Window) > 24*time.Hour {
			add("restart.window", "must be between 0 and 24h")
		}
	}

	if s.Kernel != "" {
		add("kernel", PathProblem(s.Kernel))
		if noneMachine {
			add("kernel", `is not supported with machine "none"`)
		}
	}
	if s.Initrd != "" {
		add("initrd", PathProblem(s.Initrd))
		if s.Kernel == "" {
			add("initrd", "requires kernel")
		}
	}
	if s.Append != "" {
		if strings.ContainsAny(s.Append, "\x00\n\r") {
			add("append", "must not contain NUL or newline characters")
		}
		if s.Kernel == "" {
			add("append", "requires kernel")
		}
	}

	if noneMachine && len(s.Disks) > 0 {
		add("disks", `are not supported with machine "none" (it has no PCI bus for virtio disks)`)
	}
	seen := map[string]int{}
	for i, d := range s.Disks {
		f := fmt.Sprintf("disks[%d]", i)
		switch {
		case d.Path != "" && d.Image != "":
			add(f+".image", "set together with path; give path (an image used as it is) or image (the base of an overlay vmsup makes)")
		case d.Image != "":
			add(f+".image", PathProblem(d.Image))
			if d.ReadOnly {
				add(f+".readonly", "is not supported for an image disk: its overlay is there to be written")
			}
			if d.Size%512 != 0 {
				add(f+".size", fmt.Sprintf("must be a multiple of 512 bytes, got %d", d.Size.Bytes()))
			}
		default:
			if p := PathProblem(d.Path); p != "" {
				if d.Path == "" {
					p = "is required (or image)"
				}
				add(f+".path", p)
			} else if j, dup := seen[d.Path]; dup {
				add(f+".path", fmt.Sprintf("is the same image as disks[%d].path", j))
			} else {
				seen[d.Path] = i
			}
			if d.Size != 0 {
				add(f+".size", "is only for image disks (the size of the overlay); a path disk has its file's size")
			}
		}
		add(f+".format", enumProblem(d.Format, DiskFormatRaw, DiskFormatQCOW2))
	}

	if noneMachine && len(s.Networks) > 0 {
		add("networks", `are not supported with machine "none" (it has no PCI bus for virtio NICs)`)
	}
	if len(s.Networks) > MaxNetworks {
		add("networks", fmt.Sprintf("%d NICs; the limit is %d", len(s.Networks), MaxNetworks))
	} else {
		errs = append(errs, s.validateNetworks()...)
	}

	if s.CloudInit != nil {
		if noneMachine {
			add("cloud_init", `is not supported with machine "none" (it has no PCI bus for the seed disk)`)
		}
		errs = append(errs, validateCloudInit(s.CloudInit)...)
	}

	if s.Serial != nil {
		add("serial.type", enumProblem(s.Serial.Type, SerialFile, SerialSocket, SerialNone))
		if s.Serial.Path != "" {
			switch {
			case s.Serial.Type == SerialNone:
				add("serial.path", `must be empty when type is "none"`)
			case PathProblem(s.Serial.Path) != "":
				add("serial.path", PathProblem(s.Serial.Path))
			case s.Serial.Type == SerialSocket && len(s.Serial.Path) > MaxSocketPath:
				add("serial.path", fmt.Sprintf("is %d bytes; a unix socket path may have at most %d (sun_path)", len(s.Serial.Path), MaxSocketPath))
			}
		}
	}

	if s.Emulator != "" {
		if strings.Contains(s.Emulator, "/") {
			add("emulator", PathProblem(s.Emulator))
		} else if !emulatorNamePattern.MatchString(s.Emulator) {
			add("emulator", "must be an absolute path or a command name (letters, digits, '.', '_', '+', '-'; not starting with '-' or '.')")
		}
	}

	serialManaged := s.Serial == nil || s.Serial.Type != SerialNone
	for i, a := range s.ExtraArgs {
		f := fmt.Sprintf("extra_args[%d]", i)
		if strings.Contains(a, "\x00") {
			add(f, "must not contain NUL characters")
			continue
		}
		opt := a
		if strings.HasPrefix(opt, "--") {
			opt = opt[1:]
		}
		if why, ok := forbiddenExtraArgs[opt]; ok {
			add(f, fmt.Sprintf("option %s is not allowed: %s", a, why))
		} else if opt == "-serial" && serialManaged {
			add(f, `option -serial is not allowed: vmsup manages the serial port; set serial.type to "none" to configure it yourself`)
		}
	}

	return joinProblems(errs)
}

// maxProblems is how many problems an error reports; hostile input could
// otherwise make an error message as large as the input.
const maxProblems = 50

// joinProblems joins errs with errors.Join, keeping the first maxProblems
// and counting the rest.
func joinProblems(errs []error) error {
	if len(errs) > maxProblems {
		more := len(errs) - maxProblems
		errs = append(errs[:maxProblems:maxProblems], fmt.Errorf("... and %d more problems", more))
	}
	return errors.Join(errs...)
}

// shortQuote quotes a value for an error message, cut to 64 bytes.
func shortQuote(v string) string {
	if len(v) > 64 {
		return strconv.Quote(v[:64]) + "..."
	}
	return strconv.Quote(v)
}

// capLines shortens a multi-line parser message to its first lines.
func capLines(msg string) string {
	lines := strings.SplitN(msg, "\n", 12)
	if len(lines) > 11 {
		return strings.Join(lines[:11], "\n") + "\n  ... (more problems not shown)"
	}
	return msg
}

// uuidProblem checks that u is a canonical, lower-case, non-nil UUID.
func uuidProblem(u string) string {
	if u == "" {
		return "is required"
	}
	parsed, err := uuid.Parse(u)
	if err != nil {
		return "must be a UUID such as 123e4567-e89b-42d3-a456-426614174000"
	}
	if parsed.String() != u {
		return fmt.Sprintf("must be in canonical lower-case form: %s", parsed.String())
	}
	if parsed == uuid.Nil {
		return "must not be the nil UUID"
	}
	return ""
}

// enumProblem checks that v is one of allowed.
func enumProblem(v string, allowed ...string) string {
	for _, a := range allowed {
		if v == a {
			return ""
		}
	}
	if v == "" {
		return "is required; one of " + strings.Join(allowed, ", ")
	}
	return fmt.Sprintf("must be one of %s, got %s", strings.Join(allowed, ", "), shortQuote(v))
}

// PathProblem says what is wrong with p as a host path (not absolute, not
// clean, too long, control characters), or returns "" when nothing is.
func PathProblem(p string) string {
	switch {
	case p == "":
		return "is required"
	case len(p) > maxPath:
		return fmt.Sprintf("must be at most %d bytes", maxPath)
	case strings.IndexFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0:
		return "must not contain control characters such as NUL or newline"
	case !filepath.IsAbs(p):
		return "must be an absolute path"
	case filepath.Clean(p) != p:
		return `must be a clean path (no "." or ".." elements, no repeated or trailing '/')`
	}
	return ""
}

// Clone returns a deep copy of s.
func (s *Spec) Clone() *Spec {
	c := *s
	c.Disks = slices.Clone(s.Disks)
	c.Networks = slices.Clone(s.Networks)
	for i := range c.Networks {
		c.Networks[i].Forwards = slices.Clone(s.Networks[i].Forwards)
	}
	if s.CloudInit != nil {
		ci := *s.CloudInit
		ci.SSHAuthorizedKeys = slices.Clone(s.CloudInit.SSHAuthorizedKeys)
		c.CloudInit = &ci
	}
	c.ExtraArgs = slices.Clone(s.ExtraArgs)
	if s.Serial != nil {
		serial := *s.Serial
		c.Serial = &serial
	}
	if s.Restart != nil {
		restart := *s.Restart
		c.Restart = &restart
	}
	return &c
}

// EmulatorPath returns the QEMU binary to run: Spec.Emulator, or
// DefaultEmulator when it is empty. A value without '/' is a command name
// for the caller to look up in PATH (exec.LookPath) when the domain starts.
func (s *Spec) EmulatorPath() string {
	if s.Emulator == "" {
		return DefaultEmulator
	}
	return s.Emulator
}
