//! Placement: which backend owns a principal. Pure, no I/O, no clocks.
//!
//! The structure is weighted rendezvous hashing (highest random weight). For a key
//! hash `k` and a backend with id hash `n` and weight `w`:
//!
//! ```text
//! k      = xxh3_64(principal bytes)                       (seedless)
//! n      = xxh3_64(backend id bytes)
//! s      = xxh3_64(k as 8 bytes little-endian ‖ n as 8 bytes little-endian)
//! u      = ((s >> 11) + 0.5) / 2^53                       (in (0, 1))
//! rank   = w / -ln(u)
//! ```
//!
//! Backends are ordered by `rank` descending, ties by `s` descending; the first is the
//! owner, the rest are the order in which the caller walks when the owner is not
//! eligible. When all weights are equal the order is simply `s` descending (the same
//! order, computed without floating point).
//!
//! Why rendezvous and not a ketama ring: each backend's share is exact in expectation
//! (a ring needs thousands of points per backend to get within 5%), removing a backend
//! moves only its own keys, adding one takes exactly its share, weights are exact, and
//! the "next" backend for a key is the one it would move to if its owner were removed,
//! so failover and removal agree. The cost is O(backends) per lookup, a few ns each.
//!
//! Eligibility (health, load caps) is never applied here: the caller walks [`Table::walk`]
//! and skips what it must, so a down backend keeps its place and gets its keys back.

use xxhash_rust::xxh3::xxh3_64;

/// The placement hash of a principal's bytes. Stable across versions and machines.
pub fn key_hash(principal: &[u8]) -> u64 {
    xxh3_64(principal)
}

#[derive(Debug, Clone)]
struct Node {
    id_hash: u64,
    weight: f64,
}

/// The placement structure of one upstream: its backends' id hashes and weights, in
/// configuration order (indices returned here index that order).
#[derive(Debug, Clone)]
pub struct Table {
    nodes: Vec<Node>,
    uniform: bool,
}

impl Table {
    /// `backends` yields `(id, weight)` in configuration order. Weights must be ≥ 1.
    pub fn new<'a>(backends: impl IntoIterator<Item = (&'a str, u32)>) -> Table {
        let nodes: Vec<Node> = backends
            .into_iter()
            .map(|(id, w)| Node {
                id_hash: xxh3_64(id.as_bytes()),
                weight: f64::from(w.max(1)),
            })
            .collect();
        let uniform = nodes.windows(2).all(|p| p[0].weight == p[1].weight);
        Table { nodes, uniform }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The owner of `key` when every backend is eligible. `None` only for an empty table.
    pub fn owner(&self, key: u64) -> Option<usize> {
        let mut best: Option<(usize, Score)> = None;
        for (i, node) in self.nodes.iter().enumerate() {
            let s = self.score(key, node);
            if best.as_ref().is_none_or(|(_, b)| s.beats(b)) {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Every backend index, best first.
    pub fn order(&self, key: u64) -> Vec<usize> {
        let mut scored: Vec<(usize, Score)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (i, self.score(key, n)))
            .collect();
        scored.sort_by(|a, b| b.1.cmp(&a.1));
        scored.into_iter().map(|(i, _)| i).collect()
    }

    /// [`Table::order`], lazily: the owner costs one pass and no allocation; the full
    /// order is computed only if the caller asks for a second candidate.
    pub fn walk(&self, key: u64) -> Walk<'_> {
        Walk {
            table: self,
            key,
            state: WalkState::Start,
        }
    }

    /// Each backend's expected share of keys (weight / total weight).
    pub fn shares(&self) -> Vec<f64> {
        let total: f64 = self.nodes.iter().map(|n| n.weight).sum();
        self.nodes.iter().map(|n| n.weight / total).collect()
    }

    fn score(&self, key: u64, node: &Node) -> Score {
        let mut input = [0u8; 16];
        input[..8].copy_from_slice(&key.to_le_bytes());
        input[8..].copy_from_slice(&node.id_hash.to_le_bytes());
        let s = xxh3_64(&input);
        let rank = if self.uniform {
            0.0
        } else {
            let u = ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            node.weight / -u.ln()
        };
        Score { rank, s }
    }
}

/// `rank` is 0 for uniform tables, where `s` alone decides (same order, no float).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Score {
    rank: f64,
    s: u64,
}

impl Score {
    fn cmp(&self, other: &Score) -> std::cmp::Ordering {
        // rank is finite and positive (u is strictly inside (0, 1)), so total_cmp is
        // the numeric order.
        self.rank.total_cmp(&other.rank).then(self.s.cmp(&other.s))
    }

    fn beats(&self, other: &Score) -> bool {
        self.cmp(other).is_gt()
    }
}

/// Candidates for a key, best first. See [`Table::walk`].
#[derive(Debug)]
pub struct Walk<'a> {
    table: &'a Table,
    key: u64,
    state: WalkState,
}

#[derive(Debug)]
enum WalkState {
    Start,
    Rest(std::vec::IntoIter<usize>),
}

impl Iterator for Walk<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match &mut self.state {
            WalkState::Start => {
                let owner = self.table.owner(self.key)?;
                let mut rest = self.table.order(self.key).into_iter();
                rest.next(); // the owner, already returned
                self.state = WalkState::Rest(rest);
                Some(owner)
            }
            WalkState::Rest(rest) => rest.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:8080", i + 1)).collect()
    }

    fn table(ids: &[String]) -> Table {
        Table::new(ids.iter().map(|s| (s.as_str(), 1)))
    }

    /// 1,000,000 reproducible keys, hashed the way principals are.
    fn keys() -> impl Iterator<Item = u64> {
        (0..1_000_000u32).map(|i| key_hash(format!("user-{i}").as_bytes()))
    }

    fn owners(t: &Table) -> Vec<usize> {
        keys().map(|k| t.owner(k).unwrap()).collect()
    }

    fn counts(owners: &[usize], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &o in owners {
            c[o] += 1;
        }
        c
    }

    #[test]
    fn pinned_answers_do_not_change() {
        // Anyone computing placement from README must get these; a change here is a
        // breaking change for every deployed cluster.
        // Cross-checked against an independent implementation (Python `xxhash` package
        // and the README formula).
        assert_eq!(key_hash(b"alice"), 0x4da1_0dd6_1a01_16b0);
        let t = Table::new([("a", 1), ("b", 1), ("c", 1)]);
        let got: Vec<usize> = ["alice", "bob", "carol", "dave", "erin"]
            .iter()
            .map(|k| t.owner(key_hash(k.as_bytes())).unwrap())
            .collect();
        assert_eq!(got, [1, 2, 2, 2, 1]);
        let w = Table::new([("a", 1), ("b", 1), ("c", 2)]);
        assert_eq!(w.order(key_hash(b"alice")), [1, 2, 0]);
    }

    #[test]
    fn ten_backends_share_evenly() {
        let t = table(&ids(10));
        let c = counts(&owners(&t), 10);
        let mean = 1_000_000.0 / 10.0;
        let max = *c.iter().max().unwrap() as f64;
        assert!(max / mean <= 1.05, "max/mean = {} ({c:?})", max / mean);
    }

    #[test]
    fn removing_a_backend_moves_only_its_keys() {
        let all = ids(10);
        let before = owners(&table(&all));
        let removed = 3;
        let mut rest = all.clone();
        rest.remove(removed);
        let after = owners(&table(&rest));
        for (b, a) in before.iter().zip(&after) {
            if *b != removed {
                // indices above the removed one shift down by one
                let same = if *b > removed { b - 1 } else { *b };
                assert_eq!(*a, same, "a key not on the removed backend moved");
            }
        }
    }

    #[test]
    fn next_candidate_is_where_the_key_goes_on_removal() {
        let all = ids(5);
        let t = table(&all);
        let mut rest = all.clone();
        rest.remove(0);
        let without = table(&rest);
        for k in keys().take(10_000) {
            let order = t.order(k);
            if order[0] == 0 {
                assert_eq!(order[1] - 1, without.owner(k).unwrap());
            }
        }
    }

    #[test]
    fn adding_an_eleventh_moves_at_most_its_share() {
        let ten = ids(10);
        let eleven = ids(11);
        let before = owners(&table(&ten));
        let after = owners(&table(&eleven));
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(*a, 10, "a key moved between two old backends");
                moved += 1;
            }
        }
        let frac = moved as f64 / 1_000_000.0;
        assert!(frac <= 1.1 / 11.0, "moved {frac}");
    }

    #[test]
    fn weight_two_gets_twice() {
        let ids = ids(5);
        let t = Table::new(
            ids.iter()
                .enumerate()
                .map(|(i, s)| (s.as_str(), if i == 2 { 2 } else { 1 })),
        );
        let c = counts(&owners(&t), 5);
        let others = (c[0] + c[1] + c[3] + c[4]) as f64 / 4.0;
        let ratio = c[2] as f64 / others;
        assert!((1.9..=2.1).contains(&ratio), "ratio {ratio} ({c:?})");
        assert_eq!(t.shares()[2], 2.0 / 6.0);
    }

    #[test]
    fn uniform_fast_path_agrees_with_the_weighted_formula() {
        let ids = ids(7);
        let uniform = table(&ids);
        let mut weighted = table(&ids);
        weighted.uniform = false;
        for k in keys().take(50_000) {
            assert_eq!(uniform.order(k), weighted.order(k));
        }
    }

    #[test]
    fn walk_yields_the_order_lazily() {
        let t = table(&ids(6));
        for k in keys().take(1000) {
            assert_eq!(t.walk(k).collect::<Vec<_>>(), t.order(k));
            assert_eq!(t.walk(k).next(), t.owner(k));
        }
        assert_eq!(Table::new([]).walk(1).next(), None);
    }
}
