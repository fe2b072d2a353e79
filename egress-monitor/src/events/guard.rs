//! `raw_socket` events: a process tried a socket option whose frames would skip the TC hook.

// The events module's types and imports.
use super::*;

/// A guarded socket option, as written to the JSON-lines stream: a process tried to make a
/// socket whose frames would skip the TC hook.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GuardRecord {
    pub ts: String,
    /// Always `raw_socket`.
    pub kind: &'static str,
    /// `dropped`: refused with EPERM (enforce mode); `observed`: allowed and reported.
    pub action: Action,
    /// The option: `PACKET_QDISC_BYPASS` or `XDP_TX_RING`.
    pub option: &'static str,
    /// What the caller got back: `EPERM` when refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<&'static str>,
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

impl GuardRecord {
    pub fn new(event: &GuardEvent, clock: &Clock) -> Result<GuardRecord, EventError> {
        let option = match (event.level, event.optname) {
            (SOL_PACKET, PACKET_QDISC_BYPASS) => "PACKET_QDISC_BYPASS",
            (SOL_XDP, XDP_TX_RING) => "XDP_TX_RING",
            _ => {
                return Err(EventError::BadCode {
                    field: "guarded option",
                    value: event.optname as u8,
                });
            }
        };
        let action = action_of(event.outcome)?;
        Ok(GuardRecord {
            ts: clock.rfc3339(event.ts_boot_ns),
            kind: "raw_socket",
            action,
            option,
            errno: (action == Action::Dropped).then_some("EPERM"),
            pid: event.pid,
            comm: comm_text(&event.comm),
            uid: event.uid,
            exe: None,
            cgroup_id: event.cgroup_id,
            cgroup: None,
        })
    }
}
