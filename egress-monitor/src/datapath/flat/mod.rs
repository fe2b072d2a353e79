//! The flat tables in front of the policy tries (format: `egress_monitor_common::flat`): what
//! they should hold for the prefixes the tries hold ([`image`]), how the live ones are brought
//! there without ever answering differently from the tries ([`update`], with [`barrier`] between
//! its steps), and the pinned arrays themselves, mapped into the daemon ([`live`]).

pub(super) mod barrier;
pub(super) mod live;
pub(super) mod update;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use egress_monitor_common::{
    flat::{BLOCK_ENTRIES, BLOCKS, ENTRIES, Entry, ROOT_ENTRIES},
    policy::{RuleValue, rule_flags},
    verdict::action,
};

use super::plan::LpmKey;

/// Address bits of a family.
pub(super) const V4_BITS: u32 = 32;
pub(super) const V6_BITS: u32 = 128;
const ROOT_BITS: u32 = ROOT_ENTRIES.trailing_zeros();
const BLOCK_BITS: u32 = BLOCK_ENTRIES.trailing_zeros();

/// A prefix of either family, its address left-aligned in 128 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Prefix {
    pub addr: u128,
    pub len: u32,
}

impl Prefix {
    /// The prefix of `key`, with its family's address bits.
    pub(super) fn of(key: &LpmKey) -> (Prefix, u32) {
        match key {
            LpmKey::V4(len, addr) => (
                Prefix {
                    addr: u128::from(u32::from_be_bytes(*addr)) << (128 - V4_BITS),
                    len: *len,
                },
                V4_BITS,
            ),
            LpmKey::V6(len, addr) => (
                Prefix {
                    addr: u128::from_be_bytes(*addr),
                    len: *len,
                },
                V6_BITS,
            ),
        }
    }

    /// Which of the `1 << stride` entries of a level starting after `depth` bits this prefix's
    /// address falls in.
    pub(super) fn index(&self, depth: u32, stride: u32) -> usize {
        ((self.addr << depth) >> (128 - stride)) as usize
    }
}

/// `items` split by family (IPv4 first), their keys as prefixes: the order of each family's
/// tables.
pub(super) fn by_family<T>(items: impl IntoIterator<Item = (LpmKey, T)>) -> [Vec<(Prefix, T)>; 2] {
    let mut families = [Vec::new(), Vec::new()];
    for (key, item) in items {
        let (prefix, bits) = Prefix::of(&key);
        families[usize::from(bits == V6_BITS)].push((prefix, item));
    }
    families
}

/// What both families' tables should hold for the prefixes `tries` holds.
pub(super) fn images(tries: &HashMap<LpmKey, RuleValue>) -> [Image; 2] {
    by_family(tries.iter().map(|(key, value)| (*key, *value)))
        .map(|prefixes| image(prefixes, BLOCKS))
}

/// The table for one family's prefixes, with room for `blocks` blocks: every entry whose
/// addresses all get the same allow rule from the longest match is [`Entry::Allow`]; a region
/// with longer prefixes inside and an allow somewhere gets a block while blocks last; the rest
/// asks the trie.
pub(super) fn image(mut prefixes: Vec<(Prefix, RuleValue)>, blocks: u32) -> Image {
    prefixes.sort_by_key(|(prefix, _)| (prefix.addr, prefix.len));
    let mut builder = Builder {
        table: vec![0; (ROOT_ENTRIES + blocks * BLOCK_ENTRIES) as usize],
        blocks_left: blocks,
        next_block: ROOT_ENTRIES,
        refused: 0,
    };
    builder.level(0, 0, ROOT_BITS, None, &prefixes);
    Image {
        entries: builder.table,
        refused: builder.refused,
    }
}

/// A table's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Image {
    pub entries: Vec<u64>,
    /// Regions with an allow inside that got no block (the table was full): the trie answers
    /// them. 0: the table answers every allowed address itself.
    pub refused: usize,
}

/// The tables' size, as the kernel object declares it.
pub(super) const TABLE_ENTRIES: usize = ENTRIES as usize;

struct Builder {
    table: Vec<u64>,
    blocks_left: u32,
    next_block: u32,
    refused: usize,
}

impl Builder {
    /// Fills the level of `1 << stride` entries at `base`, which splits a region after `depth`
    /// bits. `inherited` is the longest match of the region as a whole; `prefixes` (sorted by
    /// address) are those inside it and longer than `depth`.
    fn level(
        &mut self,
        base: usize,
        depth: u32,
        stride: u32,
        inherited: Option<RuleValue>,
        prefixes: &[(Prefix, RuleValue)],
    ) {
        let bits = depth + stride;
        let mut answers = vec![inherited; 1 << stride];
        // Shorter prefixes first, so that a longer one painted later wins where they nest.
        let mut covering: Vec<&(Prefix, RuleValue)> =
            prefixes.iter().filter(|(p, _)| p.len <= bits).collect();
        covering.sort_by_key(|(p, _)| p.len);
        for (prefix, value) in covering {
            let first = prefix.index(depth, stride);
            let span = 1usize << (bits - prefix.len);
            answers[first..first + span].fill(Some(*value));
        }
        let deeper: Vec<(Prefix, RuleValue)> = prefixes
            .iter()
            .filter(|(p, _)| p.len > bits)
            .copied()
            .collect();
        let mut groups = deeper
            .chunk_by(|(a, _), (b, _)| a.index(depth, stride) == b.index(depth, stride))
            .peekable();
        for (index, answer) in answers.into_iter().enumerate() {
            let inside = match groups.peek() {
                Some(group) if group[0].0.index(depth, stride) == index => groups.next(),
                _ => None,
            };
            let entry = match inside {
                None => allowed(answer),
                // Nothing under it is allowed: the trie's deny or no rule.
                Some(inside)
                    if allowed(answer) == 0
                        && inside
                            .iter()
                            .all(|(_, value)| value.action != action::ALLOW) =>
                {
                    0
                }
                Some(_) if self.blocks_left == 0 => {
                    self.refused += 1;
                    0
                }
                Some(inside) => {
                    self.blocks_left -= 1;
                    let start = self.next_block;
                    self.next_block += BLOCK_ENTRIES;
                    // The block is filled before the next sibling's is taken: blocks are
                    // numbered in pre-order, each after the entry that points to it.
                    self.level(start as usize, bits, BLOCK_BITS, answer, inside);
                    Entry::Block(start).encode()
                }
            };
            self.table[base + index] = entry;
        }
    }
}

/// The entry for a region whose longest match is `answer` throughout. A rule that expires
/// is left to the trie, which knows when it ends.
fn allowed(answer: Option<RuleValue>) -> u64 {
    match answer {
        Some(value) if value.action == action::ALLOW && value.flags & rule_flags::EXPIRES == 0 => {
            Entry::Allow(value.rule_id).encode()
        }
        _ => 0,
    }
}

/// Both families' live tables, brought to the tries' next contents around their change (see
/// [`update`]).
pub(super) struct Tables {
    live: [live::LiveTable; 2],
    images: [Image; 2],
}

/// The fast lane: whether it is on, and what the tables hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FastLane {
    pub on: bool,
    pub v4: TableUse,
    pub v6: TableUse,
}

/// Both families' tables pinned at `layout` (IPv4 first), mapped.
fn open_live(
    layout: &super::pins::PinLayout,
) -> Result<[live::LiveTable; 2], super::DatapathError> {
    use egress_monitor_common::maps as names;
    Ok([
        live::LiveTable::open(layout, names::FLAT_V4)?,
        live::LiveTable::open(layout, names::FLAT_V6)?,
    ])
}

/// Reads the fast lane's state pinned at `layout`.
pub(super) fn fast_lane(
    layout: &super::pins::PinLayout,
    on: bool,
) -> Result<FastLane, super::DatapathError> {
    let [v4, v6] = open_live(layout)?;
    Ok(FastLane {
        on,
        v4: TableUse::of(v4.entries()),
        v6: TableUse::of(v6.entries()),
    })
}

impl Tables {
    /// Opens the tables pinned at `layout`, to hold what tries holding `after` answer.
    pub(super) fn open(
        layout: &super::pins::PinLayout,
        after: &HashMap<LpmKey, RuleValue>,
    ) -> Result<Tables, super::DatapathError> {
        Ok(Tables {
            live: open_live(layout)?,
            images: images(after),
        })
    }

    /// Step 1 of [`update`]: before the tries change `changed`.
    pub(super) fn zero(&self, changed: impl Iterator<Item = LpmKey>) -> usize {
        let changed = by_family(changed.map(|key| (key, ()))).map(|prefixes| {
            prefixes
                .into_iter()
                .map(|(prefix, ())| prefix)
                .collect::<Vec<_>>()
        });
        (0..2)
            .map(|family| {
                update::zero(
                    self.live[family].entries(),
                    &self.images[family].entries,
                    &changed[family],
                )
            })
            .sum()
    }

    /// Regions with an allow inside that the tables had no room for (the tries answer them).
    pub(super) fn refused(&self) -> usize {
        self.images.iter().map(|image| image.refused).sum()
    }

    /// Step 3 of [`update`]: once the tries hold what the tables were opened for.
    pub(super) fn fill(&self) -> usize {
        (0..2)
            .map(|family| update::fill(self.live[family].entries(), &self.images[family].entries))
            .sum()
    }
}

/// What one family's live table holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableUse {
    /// Entries that answer an allow themselves.
    pub allow_entries: usize,
    /// Blocks in use, of [`BLOCKS`].
    pub blocks: usize,
}

impl TableUse {
    pub(super) fn of(table: &[std::sync::atomic::AtomicU64]) -> TableUse {
        let mut seen = TableUse::default();
        for entry in table {
            match Entry::decode(entry.load(std::sync::atomic::Ordering::Relaxed)) {
                Entry::Allow(_) => seen.allow_entries += 1,
                Entry::Block(_) => seen.blocks += 1,
                Entry::Ask => {}
            }
        }
        seen
    }
}
