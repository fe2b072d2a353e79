//! A score for tunnelling-like DNS names: data smuggled out in query names shows as very long
//! labels, long names, high-entropy (encoded) labels, and many unique names under one parent
//! domain in a short time. The score (0–100) and its reasons go into every `dns` event; 50 or
//! more is `suspicious`. A heuristic to point an auditor at a process, not a verdict: with
//! domain rules, enforce mode refuses queries for names no rule allows whatever their score.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TunnelScore {
    pub score: u8,
    pub suspicious: bool,
    pub reasons: Vec<&'static str>,
}

/// Remembers, per parent domain, the distinct first labels seen in the current window.
#[derive(Debug, Default)]
pub struct TunnelScorer {
    parents: HashMap<String, (Instant, HashSet<String>)>,
}

/// Thresholds. Ordinary names rarely come near them: the longest label of a common cloud name
/// is under 30 characters, and a CDN's names under one parent are few per minute.
const LONG_LABEL: usize = 40;
const LONG_NAME: usize = 120;
const HIGH_ENTROPY_BITS: f64 = 3.8;
const ENTROPY_MIN_CHARS: usize = 20;
const UNIQUE_WINDOW: Duration = Duration::from_secs(60);
const MANY_UNIQUE: usize = 50;
const PARENTS_CAPACITY: usize = 4096;
/// A parent's set stops growing here; the count is already far past [`MANY_UNIQUE`].
const UNIQUE_CAP: usize = 1024;

impl TunnelScorer {
    pub fn new() -> TunnelScorer {
        TunnelScorer::default()
    }

    /// Scores a dotted name (no trailing dot) and remembers it for the unique-names count.
    pub fn score(&mut self, name: &str) -> TunnelScore {
        self.score_at(name, Instant::now())
    }

    fn score_at(&mut self, name: &str, now: Instant) -> TunnelScore {
        let name = name.to_ascii_lowercase();
        let labels: Vec<&str> = name.split('.').filter(|l| !l.is_empty()).collect();
        let mut score = 0u32;
        let mut reasons = Vec::new();
        if labels.iter().any(|label| label.len() >= LONG_LABEL) {
            score += 40;
            reasons.push("long label");
        }
        if name.len() >= LONG_NAME {
            score += 20;
            reasons.push("long name");
        }
        // What a tunnel encodes sits left of the domain it owns (the last two labels).
        let payload: String = labels[..labels.len().saturating_sub(2)].concat();
        if payload.len() >= ENTROPY_MIN_CHARS && entropy(&payload) >= HIGH_ENTROPY_BITS {
            score += 30;
            reasons.push("high entropy");
        }
        if labels.len() >= 3 {
            let parent = labels[1..].join(".");
            if self.parents.len() >= PARENTS_CAPACITY && !self.parents.contains_key(&parent) {
                self.parents
                    .retain(|_, (since, _)| now.duration_since(*since) < UNIQUE_WINDOW);
                if self.parents.len() >= PARENTS_CAPACITY {
                    self.parents.clear();
                }
            }
            let (since, seen) = self
                .parents
                .entry(parent)
                .or_insert_with(|| (now, HashSet::new()));
            if now.duration_since(*since) >= UNIQUE_WINDOW {
                *since = now;
                seen.clear();
            }
            if seen.len() < UNIQUE_CAP {
                seen.insert(labels[0].to_owned());
            }
            if seen.len() >= MANY_UNIQUE {
                score += 30;
                reasons.push("many unique subdomains");
            }
        }
        let score = score.min(100) as u8;
        TunnelScore {
            score,
            suspicious: score >= 50,
            reasons,
        }
    }
}

/// Shannon entropy in bits per character.
fn entropy(text: &str) -> f64 {
    let mut counts = [0u32; 256];
    for byte in text.bytes() {
        counts[usize::from(byte)] += 1;
    }
    let total = text.len() as f64;
    counts
        .iter()
        .filter(|&&count| count > 0)
        .map(|&count| {
            let p = f64::from(count) / total;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_score_zero() {
        let mut scorer = TunnelScorer::new();
        for name in [
            "mystorageaccount.blob.core.windows.net",
            "login.microsoftonline.com",
            "deb.debian.org",
            "a.very.ordinary.example.com",
        ] {
            let score = scorer.score(name);
            assert_eq!(score.score, 0, "{name}: {score:?}");
        }
    }

    #[test]
    fn an_encoded_payload_is_suspicious() {
        let mut scorer = TunnelScorer::new();
        let name = "mzxw6ytboi4dqnjrgu3tmobqgezdgnbvgy3tqojqgezdgnbvgy3tq.k3j9x2q7v5w8z1c4b6n0m.t.example.com";
        let score = scorer.score(name);
        assert!(score.suspicious, "{score:?}");
        assert!(score.reasons.contains(&"long label"));
        assert!(score.reasons.contains(&"high entropy"));
    }

    #[test]
    fn many_unique_subdomains_of_one_parent_add_up_within_a_window() {
        let mut scorer = TunnelScorer::new();
        let start = Instant::now();
        let mut last = None;
        for i in 0..MANY_UNIQUE {
            last = Some(scorer.score_at(&format!("q{i:04}.t.example.com"), start));
        }
        assert!(last.unwrap().reasons.contains(&"many unique subdomains"));
        // A new window starts the count again.
        let later = start + UNIQUE_WINDOW;
        let score = scorer.score_at("q9999.t.example.com", later);
        assert!(
            !score.reasons.contains(&"many unique subdomains"),
            "{score:?}"
        );
    }
}
