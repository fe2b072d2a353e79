//! The differential test of the flat tables: a wrong entry is a policy bypass, so the table
//! walk (the function the kernel programs run) is compared with the longest match of the
//! tries' prefixes on more than a million random and adversarial addresses, across random
//! policies and the live changes between them, at every step of each change.

use std::{
    collections::{BTreeMap, HashMap},
    sync::atomic::{AtomicU64, Ordering},
};

use egress_monitor_common::{
    flat::{self, ENTRIES},
    policy::RuleValue,
    verdict::action,
};
use egress_monitor_policy::Action;
use fastrand::Rng;

use super::{Image, Prefix, V4_BITS, V6_BITS, by_family, image, images, update};
use crate::datapath::plan::{Live, LpmKey, Plan, Step, Wanted};

/// A chance of `percent` in a hundred.
fn chance(rng: &mut Rng, percent: u64) -> bool {
    rng.u64(0..100) < percent
}

fn mask(bits: u32, len: u32) -> u128 {
    // Left-aligned: the family's address occupies the top `bits` bits.
    let left = |n: u32| if n == 0 { 0 } else { u128::MAX << (128 - n) };
    let (family, prefix) = (left(bits), left(len));
    family & prefix
}

fn key(bits: u32, addr: u128, len: u32) -> LpmKey {
    let addr = addr & mask(bits, len);
    if bits == V4_BITS {
        LpmKey::V4(len, ((addr >> 96) as u32).to_be_bytes())
    } else {
        LpmKey::V6(len, addr.to_be_bytes())
    }
}

/// A random policy of one family: nested chains of allow and deny prefixes around a few
/// centres (so that longer prefixes sit inside shorter ones, both ways round), host routes,
/// sometimes `/0`, and some strays.
fn random_prefixes(rng: &mut Rng, bits: u32) -> Vec<(LpmKey, Action)> {
    let mut chosen: BTreeMap<LpmKey, Action> = BTreeMap::new();
    let action = |rng: &mut Rng| {
        if chance(rng, 55) {
            Action::Allow
        } else {
            Action::Deny
        }
    };
    if chance(rng, 30) {
        chosen.insert(key(bits, 0, 0), action(rng));
    }
    for _ in 0..1 + rng.u64(0..6) {
        let centre = rng.u128(..) & mask(bits, bits);
        let mut len = rng.u64(0..u64::from(bits) / 2) as u32;
        while len <= bits {
            chosen.insert(key(bits, centre, len), action(rng));
            len += 1 + rng.u64(0..10) as u32;
        }
        // The host itself, and its neighbours' prefixes at the edges of the chain's ranges.
        chosen.insert(key(bits, centre, bits), action(rng));
        let step = 1u128 << (128 - bits);
        chosen.insert(
            key(
                bits,
                centre.wrapping_add(step << rng.u64(0..24)),
                bits - rng.u64(0..8) as u32,
            ),
            action(rng),
        );
    }
    for _ in 0..rng.u64(0..20) {
        let len = rng.u64(0..u64::from(bits) + 1) as u32;
        chosen.insert(key(bits, rng.u128(..), len), action(rng));
    }
    chosen.into_iter().collect()
}

/// Both families' random prefixes, shuffled so the policy's order is not the address order.
fn random_policy(rng: &mut Rng) -> Wanted {
    let mut prefixes = random_prefixes(rng, V4_BITS);
    prefixes.extend(random_prefixes(rng, V6_BITS));
    rng.shuffle(&mut prefixes);
    Wanted {
        prefixes,
        domains: Vec::new(),
        expiring: Default::default(),
    }
}

/// The tries' answer, the plain way: a binary trie, one bit per level, remembering the last
/// value passed on the way down.
struct Reference {
    /// Per family (IPv4, IPv6): nodes, each with its two children (0: none) and its value.
    nodes: [Vec<([u32; 2], Option<RuleValue>)>; 2],
}

impl Reference {
    fn new(tries: &HashMap<LpmKey, RuleValue>) -> Reference {
        let mut nodes = [vec![([0, 0], None)], vec![([0, 0], None)]];
        for (key, value) in tries {
            let (prefix, bits) = Prefix::of(key);
            let family = &mut nodes[usize::from(bits == V6_BITS)];
            let mut node = 0;
            for bit in 0..prefix.len {
                let side = ((prefix.addr >> (127 - bit)) & 1) as usize;
                if family[node].0[side] == 0 {
                    family.push(([0, 0], None));
                    family[node].0[side] = (family.len() - 1) as u32;
                }
                node = family[node].0[side] as usize;
            }
            family[node].1 = Some(*value);
        }
        Reference { nodes }
    }

    fn longest_match(&self, bits: u32, addr: u128) -> Option<RuleValue> {
        let family = &self.nodes[usize::from(bits == V6_BITS)];
        let mut node = 0;
        let mut found = family[0].1;
        for bit in 0..bits {
            let side = ((addr >> (127 - bit)) & 1) as usize;
            match family[node].0[side] {
                0 => break,
                next => node = next as usize,
            }
            found = family[node].1.or(found);
        }
        found
    }
}

/// The table's answer for `addr`, walked as the kernel walks it.
fn walk(table: &[AtomicU64], bits: u32, addr: u128) -> Option<u32> {
    let get = |index: u32| {
        table
            .get(index as usize)
            .map(|entry| entry.load(Ordering::Acquire))
    };
    if bits == V4_BITS {
        flat::walk(&((addr >> 96) as u32).to_be_bytes(), get)
    } else {
        flat::walk(&addr.to_be_bytes(), get)
    }
}

/// Addresses worth asking about `prefixes`: each one's first and last address and their
/// neighbours outside it, and random ones inside; then random ones anywhere.
fn addresses(rng: &mut Rng, prefixes: &[LpmKey], count: usize) -> Vec<(u32, u128)> {
    let mut out = Vec::with_capacity(count);
    for key in prefixes {
        let (prefix, bits) = Prefix::of(key);
        let unit = 1u128 << (128 - bits);
        let first = prefix.addr;
        let last = first | (!mask(bits, prefix.len) & mask(bits, bits));
        for addr in [
            first,
            last,
            first.wrapping_sub(unit),
            last.wrapping_add(unit),
            first | (rng.u128(..) & !mask(bits, prefix.len) & mask(bits, bits)),
        ] {
            out.push((bits, addr & mask(bits, bits)));
        }
    }
    while out.len() < count {
        let bits = if chance(rng, 50) { V4_BITS } else { V6_BITS };
        out.push((bits, rng.u128(..) & mask(bits, bits)));
    }
    out
}

/// Every allow the table gives is the tries' answer. Returns how many of `addresses` the table
/// answered itself; with `complete`, it must answer every address the tries allow.
fn agrees(
    tables: &[Vec<AtomicU64>; 2],
    tries: &HashMap<LpmKey, RuleValue>,
    addresses: &[(u32, u128)],
    complete: bool,
    context: &str,
) -> usize {
    let reference = Reference::new(tries);
    let mut answered = 0;
    for (bits, addr) in addresses {
        let table = &tables[usize::from(*bits == V6_BITS)];
        let truth = reference.longest_match(*bits, *addr);
        match walk(table, *bits, *addr) {
            Some(rule_id) => {
                answered += 1;
                assert_eq!(
                    truth,
                    Some(RuleValue::new(rule_id, action::ALLOW)),
                    "{context}: the table allows {addr:#x} (/{bits}) by rule {rule_id}; the tries say {truth:?}"
                );
            }
            None if complete => assert!(
                truth.is_none_or(|value| value.action != action::ALLOW),
                "{context}: the table asks the trie for {addr:#x} (/{bits}), which {truth:?} allows, though it had room"
            ),
            None => {}
        }
    }
    answered
}

fn atomic(image: &Image) -> Vec<AtomicU64> {
    image.entries.iter().copied().map(AtomicU64::new).collect()
}

fn empty_table() -> Vec<AtomicU64> {
    (0..ENTRIES).map(|_| AtomicU64::new(0)).collect()
}

/// Rule ids as the plan gives them for a policy over empty tries.
fn fresh_tries(wanted: &Wanted) -> HashMap<LpmKey, RuleValue> {
    let plan = Plan::new(&Live::default(), wanted, 1 << 16).expect("ids");
    plan.prefixes_after(&Live::default())
}

#[test]
fn the_table_answers_as_the_tries_on_a_million_addresses() {
    let mut rng = Rng::with_seed(0x5eed_f1a7);
    let mut checked = 0;
    let mut answered = 0;
    for round in 0..40 {
        let tries = fresh_tries(&random_policy(&mut rng));
        let keys: Vec<LpmKey> = tries.keys().copied().collect();
        let addresses = addresses(&mut rng, &keys, 26_000);
        let [v4, v6] = images(&tries);
        let complete = v4.refused == 0 && v6.refused == 0;
        assert!(
            complete,
            "round {round}: random policies fit the real table"
        );
        let tables = [atomic(&v4), atomic(&v6)];
        answered += agrees(&tables, &tries, &addresses, true, &format!("round {round}"));
        // The same policy with room for two blocks only: regions without one ask the trie,
        // and nothing the table does answer may be wrong.
        let small = by_family(tries.iter().map(|(key, value)| (*key, *value)));
        let [s4, s6] = small.map(|prefixes| image(prefixes, 2));
        let mut tiny = [empty_table(), empty_table()];
        for (table, image) in tiny.iter_mut().zip([&s4, &s6]) {
            for (entry, value) in table.iter().zip(&image.entries) {
                entry.store(*value, Ordering::Relaxed);
            }
        }
        agrees(
            &tiny,
            &tries,
            &addresses,
            false,
            &format!("round {round}, 2 blocks"),
        );
        checked += addresses.len();
    }
    assert!(checked >= 1_000_000, "{checked} addresses checked");
    // Not a vacuous pass: the table itself answers a good share of what is asked.
    assert!(
        answered * 10 > checked,
        "{answered} of {checked} answered by the table"
    );
}

/// Changes `tries` to `wanted` one step at a time as the plan orders them, the tables zeroed
/// before and filled after, checking at every step and every few thousand entries of the fill
/// that no walk disagrees with the tries. Returns how many lookups it checked.
fn change_live(
    tries: &mut HashMap<LpmKey, RuleValue>,
    tables: &[Vec<AtomicU64>; 2],
    wanted: &Wanted,
    capacity: u32,
    rng: &mut Rng,
    change: &str,
) -> usize {
    let live = Live {
        prefixes: tries.clone(),
        domains: HashMap::new(),
    };
    let plan = Plan::new(&live, wanted, capacity).expect("ids");
    let after = plan.prefixes_after(&live);
    let mut asked: Vec<LpmKey> = tries.keys().chain(after.keys()).copied().collect();
    asked.sort();
    asked.dedup();
    let addresses = addresses(rng, &asked, asked.len() * 5 + 2_000);
    // Between steps: a random fifth (edges of every prefix among them).
    let between: Vec<(u32, u128)> = addresses
        .iter()
        .copied()
        .filter(|_| chance(rng, 20))
        .collect();
    let new = images(&after);
    let changed = by_family(plan.changed_prefixes().map(|key| (key, ()))).map(|prefixes| {
        prefixes
            .into_iter()
            .map(|(prefix, ())| prefix)
            .collect::<Vec<_>>()
    });
    for family in 0..2 {
        update::zero(&tables[family], &new[family].entries, &changed[family]);
    }
    let context = |what: &str| format!("{change}, {what}");
    agrees(tables, tries, &addresses, false, &context("zeroed"));
    let mut checks = addresses.len();
    for (n, step) in plan.steps.iter().enumerate() {
        match step {
            Step::WritePrefix { key, value, .. } => {
                tries.insert(*key, *value);
            }
            Step::DeletePrefix(key) => {
                tries.remove(key);
            }
            Step::WriteDomain { .. } | Step::DeleteDomain(_) => continue,
        }
        agrees(
            tables,
            tries,
            &between,
            false,
            &context(&format!("step {n}")),
        );
        checks += between.len();
    }
    assert_eq!(*tries, after);
    for family in 0..2 {
        let mut written = 0;
        update::fill_observed(&tables[family], &new[family].entries, |_| {
            written += 1;
            if written % 2048 == 0 {
                agrees(tables, tries, &between, false, &context("filling"));
                checks += between.len();
            }
        });
    }
    agrees(tables, tries, &addresses, true, &context("filled"));
    checks + addresses.len()
}

/// Random policies one after the other, every other one with no spare rule ids (new prefixes
/// then take stale ones' ids).
#[test]
fn live_changes_never_answer_differently_from_the_tries() {
    let mut rng = Rng::with_seed(0xd1ff_5eed);
    let mut tries: HashMap<LpmKey, RuleValue> = HashMap::new();
    let tables = [empty_table(), empty_table()];
    let mut checks = 0;
    for change in 0..40 {
        let wanted = random_policy(&mut rng);
        let capacity = if change % 2 == 0 {
            wanted.prefixes.len() as u32
        } else {
            1 << 16
        };
        let name = format!("change {change}");
        checks += change_live(&mut tries, &tables, &wanted, capacity, &mut rng, &name);
    }
    assert!(checks >= 100_000, "{checks} lookups checked");
}

/// The case the zeroing of what a change covers is for: `10.0.0.0/8` allowed becomes
/// `10.1.0.0/16` allowed under the same (reused) rule id, so the table's entry for 10.1/16 is
/// the same before and after; but the plan writes a deny for `10.0.0.0/12` first, which the
/// tries answer for 10.1/16 until the /16 is written.
#[test]
fn an_entry_the_same_before_and_after_still_asks_while_a_change_covers_it() {
    let v4 = |a: u8, b: u8, len| LpmKey::V4(len, [a, b, 0, 0]);
    let mut tries = HashMap::from([(v4(10, 0, 8), RuleValue::new(0, action::ALLOW))]);
    let tables = [atomic(&images(&tries)[0]), empty_table()];
    let wanted = Wanted {
        prefixes: vec![
            (v4(10, 0, 12), Action::Deny),
            (v4(10, 1, 16), Action::Allow),
        ],
        domains: Vec::new(),
        expiring: Default::default(),
    };
    let live = Live {
        prefixes: tries.clone(),
        domains: HashMap::new(),
    };
    let plan = Plan::new(&live, &wanted, 2).expect("ids");
    assert_eq!(
        plan.prefixes_after(&live)[&v4(10, 1, 16)],
        RuleValue::new(0, action::ALLOW),
        "the /16 takes the /8's id"
    );
    change_live(
        &mut tries,
        &tables,
        &wanted,
        2,
        &mut Rng::with_seed(1),
        "reused id",
    );
}
