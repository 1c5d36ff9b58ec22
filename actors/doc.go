// Package actors holds the building blocks that every vmsup actor shares: the
// job lane (a FIFO of jobs with at most one active), request envelopes that
// carry a trace context, and ask helpers bounded by a context.Context.
//
// The ask direction rule of DESIGN.md applies to every use of Ask: an actor may
// only wait on an actor below it (domain → driver, domain → monitor). Upward
// messages are tells or continuations.
package actors
