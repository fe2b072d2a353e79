//! The flow maps, as the daemon's flow reports read them (the protocol:
//! `egress_monitor_common::flow`; the reports: [`crate::events::flows`]).

use aya::maps::{HashMap, MapData, MapError, Queue};
use egress_monitor_common::{
    flow::{FlowKey, FlowReported, FlowValue},
    maps as names,
    policy::config,
};

use super::{
    DatapathError,
    maps::{open_map, read_config, write_config},
};
use crate::datapath::pins::PinLayout;

/// The pinned flow maps of one pin path.
pub struct FlowMaps {
    layout: PinLayout,
    /// The dirty-flow queues, by the parity of the period they were pushed in.
    dirty: [Queue<MapData, FlowKey>; 2],
    flows: HashMap<MapData, FlowKey, FlowValue>,
    reported: HashMap<MapData, FlowKey, FlowReported>,
}

impl FlowMaps {
    pub fn open(layout: &PinLayout) -> Result<FlowMaps, DatapathError> {
        Ok(FlowMaps {
            layout: layout.clone(),
            dirty: [
                open_map(layout, names::FLOW_DIRTY[0])?,
                open_map(layout, names::FLOW_DIRTY[1])?,
            ],
            flows: open_map(layout, names::FLOWS)?,
            reported: open_map(layout, names::FLOW_REPORTED)?,
        })
    }

    /// The reporting period the kernel counts flows in (0: aggregation off).
    pub fn generation(&self) -> Result<u64, DatapathError> {
        Ok(read_config(&self.layout)?.flow_generation)
    }

    pub fn set_generation(&self, generation: u64) -> Result<(), DatapathError> {
        write_config(&self.layout, config::FLOW_GENERATION, generation)
    }

    /// The next flow on the dirty queue of periods of `parity`, `None` once it is empty.
    pub fn pop_dirty(&mut self, parity: usize) -> Result<Option<FlowKey>, DatapathError> {
        match self.dirty[parity].pop(0) {
            Ok(key) => Ok(Some(key)),
            Err(MapError::ElementNotFound) => Ok(None),
            Err(err) => Err(DatapathError::map(names::FLOW_DIRTY[parity], "read")(err)),
        }
    }

    /// A flow's counts, `None` when the LRU map has forgotten it.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowValue>, DatapathError> {
        match self.flows.get(key, 0) {
            Ok(flow) => Ok(Some(flow)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(DatapathError::map(names::FLOWS, "read")(err)),
        }
    }

    /// What was reported of a flow so far, if it can be read.
    pub fn reported(&self, key: &FlowKey) -> Option<FlowReported> {
        self.reported.get(key, 0).ok()
    }

    pub fn set_reported(
        &mut self,
        key: &FlowKey,
        reported: &FlowReported,
    ) -> Result<(), DatapathError> {
        self.reported
            .insert(key, reported, 0)
            .map_err(DatapathError::map(names::FLOW_REPORTED, "write"))
    }
}
