// Package netcfg validates and derives the host-side network settings of a
// domain's NICs: MAC addresses, user-mode port forwards, bridge and tap
// names. It does no I/O except probing host ports in ResolveForwards.
package netcfg
