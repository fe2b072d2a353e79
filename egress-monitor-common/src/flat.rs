//! The flat tables in front of the policy tries: the allowed path's lookup without a helper
//! call.
//!
//! Each family has one array of `u64` entries (array elements take 8 bytes whatever their size,
//! so a smaller entry would save nothing), read by index (array lookups compile to a few
//! instructions; an LPM trie lookup is a helper call and a walk of the trie). The first
//! [`ROOT_ENTRIES`] entries are indexed by the address's first 16 bits; every further level is
//! a block of [`BLOCK_ENTRIES`] entries indexed by the next byte. An entry says one of three
//! things about every address under it:
//! - [`Entry::Allow`]: the trie's longest match is an allow rule with this id, for all of them;
//! - [`Entry::Block`]: it depends on the next byte, read from the block starting there;
//! - [`Entry::Ask`]: ask the trie (a deny rule, no rule, or no room for a block).
//!
//! The table only ever speeds up an allow the trie would give; everything else takes the full
//! path, which asks the trie. A zeroed table (all [`Entry::Ask`]) is therefore always right, and
//! the loader zeroes what a policy change touches before it changes the tries, and fills the
//! table again only after (see the node's `datapath::flat`).

/// Entries indexed by the first 16 bits of the address.
pub const ROOT_ENTRIES: u32 = 1 << 16;
/// Entries of a block: one per value of the next byte.
pub const BLOCK_ENTRIES: u32 = 256;
/// Blocks each family's table has room for. A region that would need more is left to the trie
/// (correct, only slower): 2048 blocks cover, say, 1,500 /16s with longer prefixes inside an
/// allowed range and 500 /24s with still longer ones.
pub const BLOCKS: u32 = 2048;
/// Entries of each family's table (4.5 MiB).
pub const ENTRIES: u32 = ROOT_ENTRIES + BLOCKS * BLOCK_ENTRIES;

const KIND_SHIFT: u32 = 32;
const KIND_BLOCK: u64 = 1;
const KIND_ALLOW: u64 = 2;

/// One entry of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Ask the trie.
    Ask,
    /// Every address under this entry is allowed by the rule with this id.
    Allow(u32),
    /// Read the block starting at this index, at the next byte of the address.
    Block(u32),
}

impl Entry {
    /// The entry as the table stores it: the kind above, the rule id or index in the low half.
    #[inline(always)]
    pub const fn encode(self) -> u64 {
        match self {
            Entry::Ask => 0,
            Entry::Allow(rule_id) => KIND_ALLOW << KIND_SHIFT | rule_id as u64,
            Entry::Block(start) => KIND_BLOCK << KIND_SHIFT | start as u64,
        }
    }

    /// Any value but those [`Entry::encode`] makes of an allow or a block asks the trie.
    #[inline(always)]
    pub const fn decode(raw: u64) -> Entry {
        match raw >> KIND_SHIFT {
            KIND_ALLOW => Entry::Allow(raw as u32),
            KIND_BLOCK => Entry::Block(raw as u32),
            _ => Entry::Ask,
        }
    }
}

/// The index of the root entry for an address starting with `first`, `second`.
#[inline(always)]
pub const fn root_index(first: u8, second: u8) -> u32 {
    (first as u32) << 8 | second as u32
}

/// The rule that allows `address` according to the table, or `None`: ask the trie. `get`
/// reads an entry by index (`None` past the end, which also means: ask the trie). The kernel
/// programs and the daemon's tests walk with this same function.
#[inline(always)]
pub fn walk<const N: usize>(address: &[u8; N], get: impl Fn(u32) -> Option<u64>) -> Option<u32> {
    let mut entry = Entry::decode(get(root_index(address[0], address[1]))?);
    let mut next = 2;
    while next < N {
        match entry {
            Entry::Allow(rule_id) => return Some(rule_id),
            Entry::Ask => return None,
            Entry::Block(start) => {
                entry = Entry::decode(get(start + u32::from(address[next]))?);
                next += 1;
            }
        }
    }
    match entry {
        Entry::Allow(rule_id) => Some(rule_id),
        // A block below the last byte is malformed: ask the trie.
        Entry::Ask | Entry::Block(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_unknown_kinds_ask() {
        for entry in [
            Entry::Ask,
            Entry::Allow(0),
            Entry::Allow(u32::MAX),
            Entry::Block(ROOT_ENTRIES),
            Entry::Block(ENTRIES - BLOCK_ENTRIES),
        ] {
            assert_eq!(Entry::decode(entry.encode()), entry);
        }
        assert_eq!(Entry::decode(u64::MAX), Entry::Ask);
        assert_eq!(Entry::decode(3 << 32 | 7), Entry::Ask);
    }

    #[test]
    fn a_walk_follows_blocks_and_stops_at_an_answer() {
        let mut table = [0u64; (ROOT_ENTRIES + 2 * BLOCK_ENTRIES) as usize];
        table[root_index(10, 0) as usize] = Entry::Allow(7).encode();
        table[root_index(10, 1) as usize] = Entry::Block(ROOT_ENTRIES).encode();
        table[(ROOT_ENTRIES + 5) as usize] = Entry::Block(ROOT_ENTRIES + BLOCK_ENTRIES).encode();
        table[(ROOT_ENTRIES + BLOCK_ENTRIES + 9) as usize] = Entry::Allow(3).encode();
        let get = |index: u32| table.get(index as usize).copied();
        assert_eq!(walk(&[10, 0, 200, 1], get), Some(7));
        assert_eq!(walk(&[10, 1, 5, 9], get), Some(3));
        assert_eq!(walk(&[10, 1, 5, 8], get), None);
        assert_eq!(walk(&[10, 1, 6, 9], get), None);
        assert_eq!(walk(&[10, 2, 5, 9], get), None);
        // A block pointing past the end asks the trie.
        table[root_index(10, 3) as usize] = Entry::Block(ENTRIES).encode();
        assert_eq!(
            walk(&[10, 3, 0, 0], |i| table.get(i as usize).copied()),
            None
        );
    }
}
