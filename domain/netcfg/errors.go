package netcfg

import (
	"fmt"
	"strconv"
)

// FieldError is one problem with one spec field. Field is the field's path
// in the spec's own syntax, such as "networks[0].forwards[1]".
type FieldError struct {
	Field   string
	Problem string
}

// Error returns, for example,
// `spec field "networks[0].mac": multicast addresses cannot be used`.
func (e *FieldError) Error() string {
	return fmt.Sprintf("spec field %q: %s", e.Field, e.Problem)
}

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)}
}

// quote quotes a value for an error message, cut to 64 bytes.
func quote(v string) string {
	if len(v) > 64 {
		return strconv.Quote(v[:64]) + "..."
	}
	return strconv.Quote(v)
}
