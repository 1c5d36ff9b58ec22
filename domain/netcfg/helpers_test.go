package netcfg

import (
	"errors"
	"testing"
)

// fieldProblems returns "field: problem" for each *FieldError in err, a
// single one or a tree built with errors.Join; it fails the test on any
// other error in the tree.
func fieldProblems(t *testing.T, err error) []string {
	t.Helper()
	var out []string
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		if u, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range u.Unwrap() {
				walk(x)
			}
			return
		}
		var fe *FieldError
		if !errors.As(e, &fe) {
			t.Errorf("error %v (%T) is not a *FieldError", e, e)
			return
		}
		out = append(out, fe.Field+": "+fe.Problem)
	}
	walk(err)
	return out
}
