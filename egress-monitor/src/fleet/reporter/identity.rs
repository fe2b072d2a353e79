//! Who this node is: its hostname, machine id and, on Azure, the VM id from the instance
//! metadata service (asked only where the DMI asset tag says Azure).

use egress_monitor_api::wire::Identity;

pub fn identity(imds_url: &str) -> Identity {
    Identity {
        hostname: hostname(),
        machine_id: machine_id(),
        vm_id: crate::azure::imds::on_azure()
            .then(|| vm_id(imds_url))
            .flatten(),
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn machine_id() -> String {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|path| {
            std::fs::read_to_string(path)
                .ok()
                .map(|id| id.trim().to_owned())
                .filter(|id| !id.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn vm_id(imds_url: &str) -> Option<String> {
    match crate::azure::imds::fetch(imds_url) {
        Ok(document) => document["compute"]["vmId"].as_str().map(str::to_owned),
        Err(err) => {
            log::warn!(
                "reports go without the VM id: {}",
                crate::system::error::chain(&err)
            );
            None
        }
    }
}
