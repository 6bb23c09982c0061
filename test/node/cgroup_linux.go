package node

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const cgroupFS = "/sys/fs/cgroup"

// hierarchies returns the cgroup hierarchies kubelet and runc use: with cgroup v2 only, the
// unified root itself; with v1 (or hybrid), every mounted v1 hierarchy and, when present, the
// v2 one runc also joins (unified).
func hierarchies() ([]string, error) {
	if _, err := os.Stat(filepath.Join(cgroupFS, "cgroup.controllers")); err == nil {
		return []string{cgroupFS}, nil
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options ... - fstype source superoptions
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if sep < 0 || sep+1 >= len(fields) || len(fields) < 5 {
			continue
		}
		mp, fstype := fields[4], fields[sep+1]
		if (fstype == "cgroup" || fstype == "cgroup2") && filepath.Dir(mp) == cgroupFS {
			out = append(out, mp)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), sc.Err()
}

// makeCgroups creates the node's cgroup root (kubelet's cgroupRoot) in every hierarchy, so two
// kubelets on one machine never share /kubepods. A new cpuset cgroup has no CPUs or memory
// nodes: it gets its parent's.
func makeCgroups(root string) error {
	hs, err := hierarchies()
	if err != nil {
		return fmt.Errorf("node: cgroups: %w", err)
	}
	for _, h := range hs {
		p := filepath.Join(h, root)
		if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("node: cgroup %s: %w", p, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if b, err := os.ReadFile(filepath.Join(h, f)); err == nil && filepath.Base(h) == "cpuset" {
				if err := os.WriteFile(filepath.Join(p, f), b, 0o644); err != nil {
					return fmt.Errorf("node: cgroup %s: %w", filepath.Join(p, f), err)
				}
			}
		}
	}
	return nil
}

// cgroupDirs returns the node's cgroup directories, deepest first.
func cgroupDirs(root string) []string {
	hs, _ := hierarchies()
	var dirs []string
	for _, h := range hs {
		filepath.WalkDir(filepath.Join(h, root), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return dirs
}

// cgroupPids returns the processes in the node's cgroups, each once (a process is in one
// cgroup of every hierarchy).
func cgroupPids(root string) []int {
	var pids []int
	seen := map[int]bool{}
	for _, d := range cgroupDirs(root) {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
				seen[pid] = true
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// killCgroups SIGKILLs every process in the node's cgroups until none is left.
func killCgroups(root string) error {
	return killUntilGone("cgroup "+root, func() ([]int, error) { return cgroupPids(root), nil })
}

// killUntilGone SIGKILLs the processes pids lists until it lists none (a process may fork while
// it is being killed), for at most 10s.
func killUntilGone(where string, pids func() ([]int, error)) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		left, err := pids()
		if err != nil {
			return err
		}
		if len(left) == 0 {
			return nil
		}
		for _, pid := range left {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node: %d processes still in %s after 10s of SIGKILL", len(left), where)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// removeCgroups removes the node's cgroup directories (empty once killCgroups is done; a
// cgroup whose last process is still exiting refuses for a moment: retried for 10s).
func removeCgroups(root string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var last error
		for _, d := range cgroupDirs(root) {
			if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
				last = fmt.Errorf("node: remove cgroup %s: %w", d, err)
			}
		}
		if last == nil || time.Now().After(deadline) {
			return last
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// killMountNS SIGKILLs every process in the mount namespace ns (readlink of /proc/PID/ns/mnt):
// containerd and its shims, which daemonize out of its process group.
func killMountNS(ns string) error {
	return killUntilGone("mount namespace "+ns, func() ([]int, error) {
		entries, err := os.ReadDir("/proc")
		if err != nil {
			return nil, err
		}
		var pids []int
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			if got, err := os.Readlink("/proc/" + e.Name() + "/ns/mnt"); err == nil && got == ns {
				pids = append(pids, pid)
			}
		}
		return pids, nil
	})
}
