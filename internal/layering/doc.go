// Package layering holds amesh's import rules, the arrows of ARCHITECTURE.md: which package of
// the module may import which. It has no code; its test lists every package of the module with
// what it may import and fails when an import is added that the table does not allow, or when a
// package is added that the table does not name (so the table, and ARCHITECTURE.md with it, is
// kept up to date).
package layering
