// Package tests holds vmsup's end-to-end tests: real QEMU processes driven
// through the public driver API, job-contract tests and fault tests.
package tests
