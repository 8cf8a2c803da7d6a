//! A set of byte ranges: the parts of a file written since its last fsync.

/// Disjoint, sorted, non-adjacent half-open ranges `[start, end)`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    /// Adds `[start, end)`, merging with whatever it overlaps or touches.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut start, mut end) = (start, end);
        // First range that ends at or after `start` (could merge).
        let first = self.ranges.partition_point(|&(_, e)| e < start);
        let mut last = first;
        while last < self.ranges.len() && self.ranges[last].0 <= end {
            start = start.min(self.ranges[last].0);
            end = end.max(self.ranges[last].1);
            last += 1;
        }
        self.ranges.splice(first..last, [(start, end)]);
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// Total bytes covered.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(r: &[(u64, u64)]) -> RangeSet {
        let mut s = RangeSet::default();
        for &(a, b) in r {
            s.insert(a, b);
        }
        s
    }

    #[test]
    fn overlapping_and_touching_ranges_merge() {
        assert_eq!(set(&[(0, 10), (10, 20)]).ranges, vec![(0, 20)]);
        assert_eq!(set(&[(5, 10), (0, 6)]).ranges, vec![(0, 10)]);
        assert_eq!(
            set(&[(0, 2), (4, 6), (8, 10), (1, 9)]).ranges,
            vec![(0, 10)]
        );
        assert_eq!(set(&[(0, 2), (4, 6)]).ranges, vec![(0, 2), (4, 6)]);
        assert_eq!(set(&[(4, 6), (0, 2), (3, 3)]).ranges, vec![(0, 2), (4, 6)]);
        assert_eq!(set(&[(0, 2), (4, 6), (8, 10)]).len(), 6);
    }

    #[test]
    fn matches_a_bitmap_on_random_inserts() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let mut s = RangeSet::default();
            let mut bits = [false; 128];
            for _ in 0..rng.random_range(1..12) {
                let a = rng.random_range(0..128u64);
                let b = rng.random_range(a..=128u64);
                s.insert(a, b);
                for bit in &mut bits[a as usize..b as usize] {
                    *bit = true;
                }
            }
            let mut from_set = [false; 128];
            let mut prev_end = None;
            for (a, b) in s.iter() {
                assert!(a < b);
                if let Some(p) = prev_end {
                    assert!(a > p, "ranges must not touch: {:?}", s.ranges);
                }
                prev_end = Some(b);
                for bit in &mut from_set[a as usize..b as usize] {
                    *bit = true;
                }
            }
            assert_eq!(bits, from_set);
        }
    }
}
