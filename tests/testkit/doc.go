// Package testkit is what vmsup's tests share: RequireQEMU, the tiny test
// guest (RequireGuest), a scripted QMP server on a real unix socket
// (QMPServer), SyncBuffer and ShortDir. It is imported by tests only and
// imports nothing of vmsup, so any package's tests may use it.
package testkit
