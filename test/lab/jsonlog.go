package lab

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
)

// ReadJSONLines reads a JSON-lines log, such as the slog output of an agent started with Start,
// skipping lines that are not JSON objects (a panic trace, say). A missing file is no lines.
func ReadJSONLines(path string) ([]map[string]any, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lab: read log: %w", err)
	}
	defer f.Close()
	var out []map[string]any
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		var m map[string]any
		if json.Unmarshal(s.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	if err := s.Err(); err != nil {
		return out, fmt.Errorf("lab: read log %s: %w", path, err)
	}
	return out, nil
}
