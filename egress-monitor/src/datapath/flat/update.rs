//! Bringing a live table to a new image while the tries change, so that it never answers
//! differently from the tries, at any moment:
//!
//! 1. [`zero`]: every entry that differs from the new image, and every entry over addresses a
//!    changed prefix covers, asks the trie. What a walk can still reach afterwards is the same
//!    in the old and the new image and lies over addresses no changed prefix touches: the
//!    tries answer those the same before, during and after their change.
//!    The caller then waits until every program that may have read an entry before the zeroing
//!    has finished ([`super::barrier`]): a cgroup program can be preempted mid-walk, and the
//!    fill may give a block another region.
//! 2. The caller changes the tries.
//! 3. [`fill`]: the new image is written, children first, so every block is complete before
//!    an entry points to it.

use std::sync::atomic::{AtomicU64, Ordering};

use egress_monitor_common::flat::{BLOCK_ENTRIES, Entry, ROOT_ENTRIES};

use super::Prefix;

const ROOT_BITS: u32 = ROOT_ENTRIES.trailing_zeros();
const BLOCK_BITS: u32 = BLOCK_ENTRIES.trailing_zeros();

/// Step 1: makes every entry of `table` that `new` holds differently, or that lies over a
/// prefix in `changed` (written or removed), ask the trie. Returns how many it changed. The
/// order does not matter: the tries have not changed yet, so every entry is right either as
/// it was or asking.
pub(in crate::datapath) fn zero(table: &[AtomicU64], new: &[u64], changed: &[Prefix]) -> usize {
    let ask = Entry::Ask.encode();
    let mut zeroed = 0;
    let mut zero = |entry: &AtomicU64| {
        if entry.swap(ask, Ordering::AcqRel) != ask {
            zeroed += 1;
        }
    };
    for (entry, wanted) in table.iter().zip(new) {
        if entry.load(Ordering::Acquire) != *wanted {
            zero(entry);
        }
    }
    for prefix in changed {
        for index in over(table, prefix) {
            zero(&table[index]);
        }
    }
    zeroed
}

/// Step 3: writes `new` into `table`, children before the entries that point to them. Returns
/// how many entries it changed.
pub(in crate::datapath) fn fill(table: &[AtomicU64], new: &[u64]) -> usize {
    fill_observed(table, new, |_| {})
}

/// [`fill`], calling `written` with each entry's index after writing it (the tests look at the
/// table between writes).
pub(in crate::datapath) fn fill_observed(
    table: &[AtomicU64],
    new: &[u64],
    mut written: impl FnMut(usize),
) -> usize {
    let mut count = 0;
    for (index, (entry, wanted)) in table.iter().zip(new).enumerate().rev() {
        if entry.load(Ordering::Acquire) != *wanted {
            entry.store(*wanted, Ordering::Release);
            written(index);
            count += 1;
        }
    }
    count
}

/// The entries of `table` a walk can reach that lie over addresses of `prefix`, and are not a
/// block the walk would go on into for a longer part of it: zeroing these cuts every walk
/// that could meet the prefix.
fn over(table: &[AtomicU64], prefix: &Prefix) -> Vec<usize> {
    let (mut base, mut depth, mut stride) = (0usize, 0, ROOT_BITS);
    loop {
        let first = prefix.index(depth, stride);
        if prefix.len <= depth + stride {
            let span = 1usize << (depth + stride - prefix.len);
            return (base + first..base + first + span).collect();
        }
        let index = base + first;
        match table
            .get(index)
            .map(|e| Entry::decode(e.load(Ordering::Acquire)))
        {
            Some(Entry::Block(start)) if start as usize + BLOCK_ENTRIES as usize <= table.len() => {
                base = start as usize;
                depth += stride;
                stride = BLOCK_BITS;
            }
            Some(_) => return vec![index],
            None => return Vec::new(),
        }
    }
}
