//! Codes shared by both sides. Plain `u8`/`u32` constants rather than enums: they cross the
//! kernel/user boundary inside `#[repr(C)]` structs, where an invalid enum value is UB.

/// A rule's action, as stored in the policy tries.
pub mod action {
    pub const DENY: u8 = 0;
    pub const ALLOW: u8 = 1;
}

/// What happened to a packet.
pub mod outcome {
    /// The destination is allowed: passed.
    pub const ALLOWED: u32 = 0;
    /// Denied, but observe mode: passed and reported.
    pub const DENIED_OBSERVED: u32 = 1;
    /// Denied in enforce mode: dropped and reported.
    pub const DENIED_DROPPED: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Which program saw the packet.
pub mod hook {
    pub const CGROUP: u8 = 0;
    pub const TC: u8 = 1;
    pub const COUNT: u32 = 2;
}

/// The datapath mode, held in the config array.
pub mod mode {
    /// Count and report denied packets; drop nothing.
    pub const OBSERVE: u32 = 0;
    /// Drop and report denied packets.
    pub const ENFORCE: u32 = 1;
}

/// The rule id reported when no rule matched (the implicit "deny everything else").
pub const RULE_ID_DEFAULT: u32 = u32::MAX;
