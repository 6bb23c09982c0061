package cniplugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// The configuration files are edited as text, not decoded and re-encoded: amesh-cni's entry is
// spliced into the "plugins" array after the last plugin, and cut out again at uninstall, so
// every other byte of the file (other plugins, unknown fields, key order, formatting) stays as
// it was, and Uninstall(Install(f)) == f byte for byte.

// confList is the text of a configuration list with the places of its plugins.
//
// Invariants: text is one JSON object with a "plugins" array; plugins[i] is the byte range of
// the i-th element of that array in text, in order; types[i] is that element's "type".
type confList struct {
	text    []byte
	plugins []span
	types   []string
}

// span is a byte range [start, end) of a text.
type span struct{ start, end int }

// parseConfList finds the plugins of a configuration list's text.
func parseConfList(text []byte) (*confList, error) {
	l := &confList{text: text}
	dec := json.NewDecoder(bytes.NewReader(text))
	if err := expectDelim(dec, '{'); err != nil {
		return nil, err
	}
	found := false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		if key, _ := tok.(string); key != "plugins" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, err
			}
			continue
		}
		if found {
			return nil, errors.New(`"plugins" appears twice`)
		}
		found = true
		if err := expectDelim(dec, '['); err != nil {
			return nil, fmt.Errorf(`"plugins": %w`, err)
		}
		prev := int(dec.InputOffset())
		for dec.More() {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return nil, fmt.Errorf(`"plugins"[%d]: %w`, len(l.plugins), err)
			}
			end := int(dec.InputOffset())
			start := prev
			for start < end && strings.IndexByte(" \t\r\n,", text[start]) >= 0 {
				start++
			}
			if !bytes.Equal(text[start:end], raw) {
				return nil, fmt.Errorf(`"plugins"[%d]: cannot place it in the text`, len(l.plugins))
			}
			var p struct {
				Type string `json:"type"`
			}
			if err := json.Unmarshal(raw, &p); err != nil {
				return nil, fmt.Errorf(`"plugins"[%d] is not an object: %w`, len(l.plugins), err)
			}
			l.plugins = append(l.plugins, span{start, end})
			l.types = append(l.types, p.Type)
			prev = end
		}
		if err := expectDelim(dec, ']'); err != nil {
			return nil, err
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the top-level object")
	}
	if !found {
		return nil, errors.New(`no "plugins" list`)
	}
	return l, nil
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("want %q, found %v", want, tok)
	}
	return nil
}

// index returns the index of the first plugin of type typ, or -1.
func (l *confList) index(typ string) int {
	for i, t := range l.types {
		if t == typ {
			return i
		}
	}
	return -1
}

// remove returns the text without plugin i and the separator that joined it to its neighbour:
// exactly what append added, when i was appended.
func (l *confList) remove(i int) []byte {
	cut := l.plugins[i]
	switch {
	case i > 0:
		cut.start = l.plugins[i-1].end // from the end of the previous plugin: ",\n    {...}"
	case len(l.plugins) > 1:
		cut.end = l.plugins[1].start // up to the next plugin: "{...},\n    "
	}
	out := make([]byte, 0, len(l.text)-(cut.end-cut.start))
	out = append(out, l.text[:cut.start]...)
	return append(out, l.text[cut.end:]...)
}

// append returns the text with v, JSON-encoded, as the new last plugin, laid out as the last
// plugin is: on its own line with the same indentation, or inline if that one is.
func (l *confList) append(v any) ([]byte, error) {
	if len(l.plugins) == 0 {
		return nil, errors.New("no plugin to chain after")
	}
	last := l.plugins[len(l.plugins)-1]
	ws := last.start
	for ws > 0 && strings.IndexByte(" \t\r\n", l.text[ws-1]) >= 0 {
		ws--
	}
	sep := string(l.text[ws:last.start]) // e.g. "\n    "
	var entry []byte
	var err error
	if nl := strings.LastIndexByte(sep, '\n'); nl >= 0 {
		prefix := sep[nl+1:]
		entry, err = json.MarshalIndent(v, prefix, indentUnit(l.text[last.start:last.end], prefix))
	} else {
		entry, err = json.Marshal(v)
	}
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(l.text)+1+len(sep)+len(entry))
	out = append(out, l.text[:last.end]...)
	out = append(out, ',')
	out = append(out, sep...)
	out = append(out, entry...)
	return append(out, l.text[last.end:]...), nil
}

// indentUnit guesses the indentation step of a plugin's text whose first line is indented by
// prefix: what its second line has beyond prefix; two spaces if that tells nothing.
func indentUnit(plugin []byte, prefix string) string {
	_, rest, ok := bytes.Cut(plugin, []byte("\n"))
	if ok {
		n := 0
		for n < len(rest) && (rest[n] == ' ' || rest[n] == '\t') {
			n++
		}
		if w := string(rest[:n]); len(w) > len(prefix) && strings.HasPrefix(w, prefix) {
			return w[len(prefix):]
		}
	}
	return "  "
}

// confAsList is the configuration list text that holds the single-plugin configuration conf
// (cniVersion and name copied up, as libcni's ConfListFromConf does), with conf's text verbatim
// inside, so that the reverse, listAsConf, gives it back.
func confAsList(conf []byte, cniVersion, name string) []byte {
	v, _ := json.Marshal(cniVersion) // strings always encode
	n, _ := json.Marshal(name)
	var b bytes.Buffer
	fmt.Fprintf(&b, "{\n  \"cniVersion\": %s,\n  \"name\": %s,\n  \"plugins\": [\n    %s\n  ]\n}\n", v, n, bytes.TrimSpace(conf))
	return b.Bytes()
}

// listAsConf returns the single-plugin configuration a list made by confAsList holds, and false
// if the list is not (any more) exactly such a list.
func listAsConf(list []byte) ([]byte, bool) {
	l, err := parseConfList(list)
	if err != nil || len(l.plugins) != 1 {
		return nil, false
	}
	conf := list[l.plugins[0].start:l.plugins[0].end]
	var c struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
	}
	if json.Unmarshal(conf, &c) != nil || !bytes.Equal(confAsList(conf, c.CNIVersion, c.Name), list) {
		return nil, false
	}
	return append(bytes.Clone(conf), '\n'), true
}
