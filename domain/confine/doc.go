// Package confine is what keeps a QEMU that vmsup starts as root away from
// the rest of the host: an unprivileged user to run it as (privileges are
// dropped before exec, as libvirt's DAC driver does), QEMU's seccomp
// sandbox, and a cgroup v2 of its own with the spec's memory limit. Each
// part says when it cannot apply on this host, and why.
package confine
