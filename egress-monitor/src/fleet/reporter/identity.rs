//! Who this node is: its hostname, machine id, group and, on Azure, the VM id and scale set
//! from the instance metadata service (asked only where the DMI asset tag says Azure).

use egress_monitor_api::wire::Identity;

/// `group`: `--node-group`; without it, the Azure scale set the VM belongs to, if any.
pub fn identity(imds_url: &str, group: Option<String>) -> Identity {
    let azure = crate::azure::imds::on_azure()
        .then(|| compute(imds_url))
        .flatten();
    let (vm_id, scale_set) = azure.unwrap_or_default();
    Identity {
        hostname: hostname(),
        machine_id: machine_id(),
        vm_id,
        group: group.or(scale_set),
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

/// The VM id and the scale set name (when the VM is in one) from the metadata service.
fn compute(imds_url: &str) -> Option<(Option<String>, Option<String>)> {
    match crate::azure::imds::fetch(imds_url) {
        Ok(document) => {
            let text = |key: &str| {
                document["compute"][key]
                    .as_str()
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
            };
            let scale_set =
                text("vmScaleSetName").filter(|name| egress_monitor_api::wire::valid_node_id(name));
            Some((text("vmId"), scale_set))
        }
        Err(err) => {
            log::warn!(
                "reports go without the VM id: {}",
                crate::system::error::chain(&err)
            );
            None
        }
    }
}
