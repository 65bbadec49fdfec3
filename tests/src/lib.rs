//! Test fixtures: "pods" (a network namespace + a cgroup v2 directory), a real proxy, backends.
