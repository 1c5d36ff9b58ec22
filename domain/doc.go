// Package domain is vmsup's model of a virtual machine: its definition
// (Spec, parsed and checked by ParseSpec), its lifecycle State and Reason,
// the Info and Jobs snapshots that callers read, the lifecycle Events a
// Broker publishes, and the errors that jobs return. It runs nothing: the
// QEMU command line is in domain/qemuargs, processes and adoption in
// domain/process, and the domain actor in domain/vm.
package domain
