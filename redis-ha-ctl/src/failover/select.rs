//! Which replica to promote, among the eligible ones (Sentinel's `compareSlavesForPromotion`).
//!
//! Eligibility (not SDOWN, replied recently, link not down too long, priority not 0) needs the
//! machine's state and lives in `machine.rs`; the ordering is here, pure and table-tested.

use std::cmp::Ordering;

use super::NodeAddr;

/// What the ordering looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Candidate<'a> {
    pub(crate) addr: NodeAddr,
    /// `slave_priority`, lower first (0 was filtered out before).
    pub(crate) priority: u32,
    /// `slave_repl_offset`, higher first: it processed more of the master's writes.
    pub(crate) repl_offset: u64,
    /// Lexicographically (case-insensitively) smaller first; unknown run ids last.
    pub(crate) run_id: Option<&'a str>,
}

/// Better first: priority ascending, offset descending, run id ascending (none last), then address
/// so that the choice never depends on iteration order.
fn better_first(a: &Candidate<'_>, b: &Candidate<'_>) -> Ordering {
    a.priority
        .cmp(&b.priority)
        .then_with(|| b.repl_offset.cmp(&a.repl_offset))
        .then_with(|| match (a.run_id, b.run_id) {
            (Some(x), Some(y)) => x
                .bytes()
                .map(|c| c.to_ascii_lowercase())
                .cmp(y.bytes().map(|c| c.to_ascii_lowercase())),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
        .then_with(|| a.addr.cmp(&b.addr))
}

/// The best candidate, if any.
pub(crate) fn best<'a>(candidates: impl IntoIterator<Item = Candidate<'a>>) -> Option<NodeAddr> {
    candidates.into_iter().min_by(better_first).map(|c| c.addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(last_octet: u8, priority: u32, repl_offset: u64, run_id: Option<&str>) -> Candidate<'_> {
        Candidate {
            addr: NodeAddr::new([10, 0, 0, last_octet].into(), 6379),
            priority,
            repl_offset,
            run_id,
        }
    }

    #[test]
    fn ordering_matches_sentinel() {
        let cases: &[(&str, Vec<Candidate<'_>>, u8)] = &[
            (
                "lower priority wins over offset",
                vec![c(1, 100, 900, None), c(2, 10, 1, None)],
                2,
            ),
            (
                "same priority: larger offset",
                vec![c(1, 100, 5, None), c(2, 100, 7, None)],
                2,
            ),
            (
                "same offset: smaller run id",
                vec![c(1, 100, 5, Some("bbbb")), c(2, 100, 5, Some("AAAA"))],
                2,
            ),
            (
                "a known run id beats none",
                vec![c(1, 100, 5, None), c(2, 100, 5, Some("ff"))],
                2,
            ),
            (
                "all equal: smaller address",
                vec![c(3, 100, 5, None), c(2, 100, 5, None)],
                2,
            ),
        ];
        for (name, candidates, want) in cases {
            let got = best(candidates.clone()).unwrap();
            assert_eq!(got.ip().octets()[3], *want, "{name}");
            // The answer does not depend on the order of the input.
            let reversed: Vec<_> = candidates.iter().rev().cloned().collect();
            assert_eq!(best(reversed), Some(got), "{name} (reversed)");
        }
        assert_eq!(best(Vec::new()), None);
    }
}
