//! Rows both stores read alike (nodes, violations), decoded once: each driver only says how to
//! read an integer or a text column.

use std::str::FromStr;

use super::{FleetChange, NodeRow, StoreError, Violation, from_json, mode_from};
use egress_monitor_api::wire::FlowEvent;

/// Column access, by index, as both drivers give it.
pub trait Columns {
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    fn text(&self, i: usize) -> Result<Option<String>, StoreError>;

    fn required_int(&self, i: usize) -> Result<i64, StoreError> {
        self.int(i)?.ok_or(StoreError::Corrupt {
            what: "row",
            message: format!("column {i} is null"),
        })
    }

    fn required_text(&self, i: usize) -> Result<String, StoreError> {
        self.text(i)?.ok_or(StoreError::Corrupt {
            what: "row",
            message: format!("column {i} is null"),
        })
    }

    /// A word of an enum spelled as words (`egress_monitor_api::words!`).
    fn word<T: FromStr<Err = String>>(&self, i: usize) -> Result<T, StoreError> {
        self.required_text(i)?
            .parse()
            .map_err(|message| StoreError::Corrupt {
                what: "row",
                message: format!("column {i}: {message}"),
            })
    }
}

impl Columns for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.get(i)?)
    }
    fn text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.get(i)?)
    }
}

impl Columns for tokio_postgres::Row {
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(i)?)
    }
}

/// A row of [`super::query::SELECT_CHANGES`].
pub fn change(row: &impl Columns) -> Result<FleetChange, StoreError> {
    Ok(FleetChange {
        at_ms: row.required_int(0)? as u64,
        change: row.required_text(1)?,
        policy_version: row.required_int(2)? as u64,
        mode: row.text(3)?.as_deref().map(mode_from).transpose()?,
        actor: row.text(4)?,
    })
}

/// A row of [`super::query::SELECT_NODES`].
pub fn node(row: &impl Columns) -> Result<NodeRow, StoreError> {
    Ok(NodeRow {
        node_id: row.required_text(0)?,
        hostname: row.required_text(1)?,
        machine_id: row.required_text(2)?,
        vm_id: row.text(3)?,
        mode: mode_from(&row.required_text(4)?)?,
        policy_version: row.required_text(5)?,
        fleet_version: row.int(6)?.map(|v| v as u64),
        policy_error: row.text(7)?,
        interval_s: row.required_int(8)? as u32,
        first_seen_ms: row.required_int(9)? as u64,
        last_seen_ms: row.required_int(10)? as u64,
        stream: row.required_text(11)?,
        last_seq: row.required_int(12)? as u64,
        counters: from_json("counters", &row.required_text(13)?)?,
        health: from_json("health", &row.required_text(14)?)?,
        reports: row.required_int(15)? as u64,
        events: row.required_int(16)? as u64,
        group: row.text(17)?,
        proof: row
            .text(18)?
            .map(|text| from_json("proof", &text))
            .transpose()?,
    })
}

/// A row of [`super::query::SELECT_EVENTS`].
pub fn violation(row: &impl Columns) -> Result<Violation, StoreError> {
    let address = |i: usize| -> Result<Option<std::net::IpAddr>, StoreError> {
        row.text(i)?
            .map(|text| {
                text.parse().map_err(|_| StoreError::Corrupt {
                    what: "address",
                    message: text,
                })
            })
            .transpose()
    };
    Ok(Violation {
        id: row.required_int(0)?,
        node_id: row.required_text(1)?,
        received_ms: row.required_int(2)? as u64,
        event: FlowEvent {
            ts_ms: row.required_int(3)? as u64,
            kind: row.word(4)?,
            hook: row.word(5)?,
            action: row.word(6)?,
            proto: row.required_text(7)?,
            src: address(8)?,
            dst: address(9)?,
            dst_port: row.int(10)?.map(|v| v as u16),
            dst_name: row.text(11)?,
            rule: row.required_text(12)?,
            pid: row.int(13)?.map(|v| v as u32),
            comm: row.text(14)?,
            exe: row.text(15)?,
            cgroup: row.text(16)?,
            packets: row.required_int(17)? as u64,
            bytes: row.required_int(18)? as u64,
            tunnel_score: row.int(19)?.map(|v| v.clamp(0, 100) as u8),
        },
    })
}
