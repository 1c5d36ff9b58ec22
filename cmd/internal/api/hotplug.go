package api

// Live is a running VM's devices (the running definition):
// {"disks","nics","ports","next"}.
type Live struct {
	Disks []LiveDisk `json:"disks"`
	NICs  []LiveNIC  `json:"nics"`
	Ports []string   `json:"ports,omitempty"`
	Next  int        `json:"next"`
}

// LiveDisk is one disk of a running VM:
// {"node","path","format","readonly","bus","hotplugged"}.
type LiveDisk struct {
	Node       string `json:"node"`
	Path       string `json:"path"`
	Format     string `json:"format"`
	ReadOnly   bool   `json:"readonly,omitempty"`
	Bus        string `json:"bus,omitempty"`
	Hotplugged bool   `json:"hotplugged,omitempty"`
}

// LiveNIC is one NIC of a running VM:
// {"device","netdev","type","mac","forwards","bus","hotplugged"}.
type LiveNIC struct {
	Device     string   `json:"device"`
	Netdev     string   `json:"netdev"`
	Type       string   `json:"type"`
	MAC        string   `json:"mac"`
	Forwards   []string `json:"forwards,omitempty"`
	Bus        string   `json:"bus,omitempty"`
	Hotplugged bool     `json:"hotplugged,omitempty"`
}

// DeviceFlags say which definition a change acts on: "live" the running
// VM, "config" the persistent definition (next start); neither means the
// running VM when it runs, else the definition.
type DeviceFlags struct {
	Live   bool `json:"live,omitempty"`
	Config bool `json:"config,omitempty"`
}

// AttachDiskRequest is the body of POST /v1/domains/{name}/disks:
// {"path","format","readonly","live","config"}.
type AttachDiskRequest struct {
	Path     string `json:"path"`
	Format   string `json:"format,omitempty"`
	ReadOnly bool   `json:"readonly,omitempty"`
	DeviceFlags
}

// AttachNICRequest is the body of POST /v1/domains/{name}/nics:
// {"type","mac","forwards","live","config"}.
type AttachNICRequest struct {
	Type     string   `json:"type,omitempty"`
	MAC      string   `json:"mac,omitempty"`
	Forwards []string `json:"forwards,omitempty"`
	DeviceFlags
}

// DetachRequest is the body of POST /v1/domains/{name}/disks/detach and
// /nics/detach: {"target","timeout","live","config"}; timeout is a Go
// duration ("30s") bounding the wait for the guest to release the device.
type DetachRequest struct {
	Target  string `json:"target"`
	Timeout string `json:"timeout,omitempty"`
	DeviceFlags
}

// DeviceResult is the reply to a hot-plug request: the device in the
// running definition (when "live" changed) and which definitions changed.
type DeviceResult struct {
	Disk   *LiveDisk `json:"disk,omitempty"`
	NIC    *LiveNIC  `json:"nic,omitempty"`
	Live   bool      `json:"live"`
	Config bool      `json:"config"`
}
