#![no_std]
// This file exists so that the host can build this crate as a (build-)dependency of the daemon:
// cargo then knows to rebuild the daemon when the kernel programs change. The programs live in
// main.rs, built for bpfel-unknown-none by egress-monitor/build.rs.
