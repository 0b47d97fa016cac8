//! The relay's ports: pairs of an even RTP port and the RTCP port above it (RFC 3550 §11), taken
//! from the range the cluster gives and returned when a call ends.

use std::collections::{BTreeSet, VecDeque};
use std::ops::RangeInclusive;

/// The pairs of a port range, handed out least recently used first, so that a port just freed is
/// not at once given to another call whose peer may still receive the last one's stragglers.
#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
    taken: BTreeSet<u16>,
    range: RangeInclusive<u16>,
}

/// Every pair of the range is in a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("no media port pair free in {first}-{last}: {calls} pair(s) in calls")]
pub struct PoolExhausted {
    pub first: u16,
    pub last: u16,
    pub calls: usize,
}

/// A range that holds no pair.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("media port range {first}-{last} holds no even RTP port with its RTCP port above it")]
pub struct EmptyRange {
    pub first: u16,
    pub last: u16,
}

impl PortPool {
    /// The pairs within `range`: each even port whose odd neighbour is in it too.
    pub fn new(range: RangeInclusive<u16>) -> Result<PortPool, EmptyRange> {
        let (first, last) = (*range.start(), *range.end());
        let free: VecDeque<u16> = (first..last).filter(|port| port % 2 == 0).collect();
        if free.is_empty() {
            return Err(EmptyRange { first, last });
        }
        Ok(PortPool { free, taken: BTreeSet::new(), range })
    }

    /// The RTP port of a free pair.
    pub fn take(&mut self) -> Result<u16, PoolExhausted> {
        let port =
            self.free.pop_front().ok_or(PoolExhausted { first: *self.range.start(), last: *self.range.end(), calls: self.taken.len() })?;
        self.taken.insert(port);
        Ok(port)
    }

    /// Returns a pair; a port not taken from this pool is ignored.
    pub fn give_back(&mut self, port: u16) {
        if self.taken.remove(&port) {
            self.free.push_back(port);
        }
    }

    /// Pairs in calls now.
    pub fn taken(&self) -> usize {
        self.taken.len()
    }

    pub fn free(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_even_ports_with_their_neighbour_in_range() {
        let mut pool = PortPool::new(16383..=16390).unwrap();
        let ports: Vec<u16> = std::iter::from_fn(|| pool.take().ok()).collect();
        assert_eq!(ports, [16384, 16386, 16388], "16390's RTCP port 16391 is outside");
        assert_eq!(pool.take(), Err(PoolExhausted { first: 16383, last: 16390, calls: 3 }));
        assert!(PoolExhausted { first: 16383, last: 16390, calls: 3 }.to_string().contains("16383-16390"));
        assert_eq!(PortPool::new(16385..=16386).unwrap_err(), EmptyRange { first: 16385, last: 16386 });
    }

    #[test]
    fn a_pair_given_back_is_reused_last_and_only_once() {
        let mut pool = PortPool::new(20000..=20005).unwrap();
        let first = pool.take().unwrap();
        pool.give_back(first);
        pool.give_back(first);
        pool.give_back(30000);
        assert_eq!((pool.free(), pool.taken()), (3, 0));
        assert_eq!(pool.take().unwrap(), 20002, "the one just freed waits behind the others");
        assert_eq!(pool.take().unwrap(), 20004);
        assert_eq!(pool.take().unwrap(), 20000);
    }
}
