//! System helpers: what the node asks of the machine, with no knowledge of the rest of the
//! crate — cgroups, network interfaces, processes, the node's DNS resolvers and network
//! namespaces, durable files, clocks, and error text for operators.

pub mod cgroup;
pub mod clock;
pub mod error;
pub(crate) mod fs;
pub mod iface;
pub mod process;
pub mod resolvers;
