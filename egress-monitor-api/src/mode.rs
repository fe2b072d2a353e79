crate::words! {
    /// What the datapath does with denied packets.
    pub enum Mode {
        /// Count and report denied packets, drop nothing (audits, first roll-out).
        Observe = "observe",
        /// Drop and report denied packets.
        Enforce = "enforce",
    }
}

#[cfg(test)]
mod tests {
    use super::Mode;

    #[test]
    fn modes_read_as_they_are_written() {
        assert_eq!("enforce".parse::<Mode>(), Ok(Mode::Enforce));
        assert_eq!(
            serde_json::to_string(&Mode::Observe).unwrap(),
            "\"observe\""
        );
        assert!("Enforce".parse::<Mode>().is_err());
    }
}
