package workload

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
)

// The sections of a Spec, named as in the state file: where Problems and a Locator look for an
// item. SectionTop holds the top-level fields (trustDomain, rootNamespace), as its item 0.
const (
	SectionTop       = ""
	SectionNodes     = "nodes"
	SectionWorkloads = "workloads"
	SectionServices  = "services"
	SectionPolicies  = "policies"
	SectionRoutes    = "routes"
)

// A Locator returns the line of the source node at path inside item i of section, or 0 when it
// does not know. A path is made of the state file's field names, dotted, with indices: "ips[1]",
// "ports[0].port", "rules[0].to[1].operation.ports[2]"; empty for the item itself.
type Locator func(section string, i int, path string) int

// Problems collects the validation errors of a Spec, and of the source it was read from, so that
// one error reports them all. With a File each error reads "file:line: what: problem", like a
// compiler's, and Err reports them in line order; without, "what: problem", in the order found.
// The zero Problems has no file.
type Problems struct {
	// File names the source in errors; empty when the Spec was not read from a file.
	File string
	// Locate finds the line of an item of the File; nil, or 0 from it, means line 1.
	Locate Locator

	errs []lineError
}

type lineError struct {
	line int
	err  error
}

func (p *Problems) line(section string, i int, path string) int {
	if p.Locate == nil {
		return 0
	}
	return p.Locate(section, i, path)
}

// Add records err at path in item i of section (see Locator); what names the item, as in
// "workload shop/web-1", and prefixes err.
func (p *Problems) Add(section string, i int, path, what string, err error) {
	if p.File == "" {
		p.errs = append(p.errs, lineError{err: fmt.Errorf("%s: %w", what, err)})
		return
	}
	p.AddLine(p.line(section, i, path), fmt.Errorf("%s: %w", what, err))
}

// Addf is Add with fmt.Errorf(format, args...).
func (p *Problems) Addf(section string, i int, path, what, format string, args ...any) {
	p.Add(section, i, path, what, fmt.Errorf(format, args...))
}

// AddLine records err at line of the File (line 1 when unknown): for problems of the source
// itself, found before there is a Spec.
func (p *Problems) AddLine(line int, err error) {
	line = max(line, 1)
	p.errs = append(p.errs, lineError{line: line, err: fmt.Errorf("%s:%d: %w", p.File, line, err)})
}

// where names another item, for "duplicate" messages: "line 12" or "workloads[3]".
func (p *Problems) where(section string, i int, path string) string {
	if l := p.line(section, i, path); l > 0 && p.File != "" {
		return fmt.Sprintf("line %d", l)
	}
	return fmt.Sprintf("%s[%d]", section, i)
}

// Err returns nil or every problem, under one heading: "workload: heading: problem", or
// "workload: heading: N errors:" and one problem a line.
func (p *Problems) Err(heading string) error {
	slices.SortStableFunc(p.errs, func(a, b lineError) int { return cmp.Compare(a.line, b.line) })
	errs := make([]error, len(p.errs))
	for i, e := range p.errs {
		errs[i] = e.err
	}
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("workload: %s: %w", heading, errs[0])
	}
	return fmt.Errorf("workload: %s: %d errors:\n%w", heading, len(errs), errors.Join(errs...))
}
