//! Offset allocation inside one memory block: pure Rust, no `unsafe`, no Vulkan.
//!
//! [`offset_allocator`] places ranges in O(1) (a two-level segregated-fit allocator) but has no
//! notion of alignment. [`SubAllocator`] works in fixed units of [`UNIT`] bytes, so every offset
//! it hands out is `UNIT`-aligned; a stricter alignment is met by asking for `alignment / UNIT - 1`
//! extra units and rounding the offset up inside them, which keeps every operation O(1).
#![forbid(unsafe_code)]

/// The granule of sub-allocation, in bytes. Every offset is a multiple of it.
///
/// 256 bytes covers the buffer alignments that drivers report for storage, uniform and texel
/// buffers (`minStorageBufferOffsetAlignment` is at most 256 on the devices we know).
pub(crate) const UNIT: u64 = 256;

/// The most ranges (live and free) one block tracks; past it a block counts as full.
const MAX_NODES: u32 = 128 * 1024;

/// A range handed out by [`SubAllocator::allocate`]; give it back with [`SubAllocator::free`].
pub(crate) struct SubRange {
    /// The aligned offset of the range inside the block.
    pub offset: u64,
    /// The size that was asked for.
    pub size: u64,
    token: offset_allocator::Allocation,
}

impl std::fmt::Debug for SubRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubRange").field("offset", &self.offset).field("size", &self.size).finish()
    }
}

/// Places ranges inside a block of `capacity` bytes.
pub(crate) struct SubAllocator {
    inner: offset_allocator::Allocator,
    capacity: u64,
    /// Bytes asked for by live ranges (not counting padding).
    used: u64,
    live: usize,
}

impl SubAllocator {
    /// A sub-allocator over `capacity` bytes, rounded down to whole [`UNIT`]s.
    ///
    /// Returns `None` if the block has no whole unit or more units than fit in a `u32`.
    pub fn new(capacity: u64) -> Option<Self> {
        let units = u32::try_from(capacity / UNIT).ok().filter(|&u| u > 0)?;
        Some(SubAllocator {
            // Nodes are ranges, used or free: never more than two per unit (plus one). Sizing
            // the node table to that keeps small blocks cheap to create.
            inner: offset_allocator::Allocator::with_max_allocs(
                units,
                units.saturating_mul(2).saturating_add(2).min(MAX_NODES),
            ),
            capacity: u64::from(units) * UNIT,
            used: 0,
            live: 0,
        })
    }

    /// Places `size` bytes at an offset that is a multiple of `alignment` (a power of two).
    ///
    /// Returns `None` if `size` is zero, `alignment` is not a power of two, or no free range is
    /// large enough.
    pub fn allocate(&mut self, size: u64, alignment: u64) -> Option<SubRange> {
        if size == 0 || !alignment.is_power_of_two() || size > self.capacity {
            return None;
        }
        let padding_units = alignment.max(UNIT) / UNIT - 1;
        let units = u32::try_from(size.div_ceil(UNIT) + padding_units).ok()?;
        let token = self.inner.allocate(units)?;
        let start = u64::from(token.offset) * UNIT;
        let offset = start.next_multiple_of(alignment.max(UNIT));
        debug_assert!(offset + size <= start + u64::from(units) * UNIT);
        self.used += size;
        self.live += 1;
        Some(SubRange { offset, size, token })
    }

    /// Gives a range back. The range must come from this sub-allocator.
    pub fn free(&mut self, range: SubRange) {
        self.used -= range.size;
        self.live -= 1;
        self.inner.free(range.token);
    }

    /// Whether no range is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Bytes asked for by live ranges.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The number of live ranges.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
        a.0 < b.0 + b.1 && b.0 < a.0 + a.1
    }

    #[test]
    fn rejects_zero_size_bad_alignment_and_oversize() {
        let mut s = SubAllocator::new(1 << 20).expect("capacity");
        assert!(s.allocate(0, 256).is_none());
        assert!(s.allocate(16, 3).is_none());
        assert!(s.allocate((1 << 20) + 1, 256).is_none());
        assert!(SubAllocator::new(UNIT - 1).is_none());
    }

    #[test]
    fn fills_exactly_and_reuses_freed_ranges() {
        let mut s = SubAllocator::new(16 * UNIT).expect("capacity");
        let ranges: Vec<_> = (0..16).map(|_| s.allocate(UNIT, 1).expect("fits")).collect();
        assert!(s.allocate(1, 1).is_none(), "the block is full");
        let mut offsets: Vec<u64> = ranges.iter().map(|r| r.offset).collect();
        offsets.sort_unstable();
        assert_eq!(offsets, (0..16).map(|i| i * UNIT).collect::<Vec<_>>());
        for r in ranges {
            s.free(r);
        }
        assert!(s.is_empty());
        assert_eq!(s.used(), 0);
        let whole = s.allocate(16 * UNIT, 1).expect("everything was given back");
        assert_eq!(whole.offset, 0);
        s.free(whole);
    }

    #[test]
    fn large_alignment_is_honoured() {
        let mut s = SubAllocator::new(1 << 22).expect("capacity");
        let small = s.allocate(100, 1).expect("fits");
        let aligned = s.allocate(1000, 65536).expect("fits");
        assert_eq!(aligned.offset % 65536, 0);
        assert!(!overlaps((small.offset, small.size), (aligned.offset, aligned.size)));
        s.free(small);
        s.free(aligned);
        assert!(s.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc { size: u64, align_log2: u32 },
        Free { index: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1u64..if cfg!(miri) { 20_000 } else { 200_000 }, 0u32..17).prop_map(|(size, align_log2)| Op::Alloc { size, align_log2 }),
            2 => any::<usize>().prop_map(|index| Op::Free { index }),
        ]
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            // `PROPTEST_CASES` where set (CI's fuzzing step).
            cases: if cfg!(miri) {
                4
            } else {
                std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
            },
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        /// Live ranges never overlap, stay inside the block, keep their alignment, and once all
        /// are freed the whole block can be allocated again.
        #[test]
        fn no_overlap_alignment_kept_all_freed(ops in proptest::collection::vec(op(), 1..if cfg!(miri) { 24 } else { 400 })) {
            let capacity = if cfg!(miri) { 256u64 << 10 } else { 4u64 << 20 };
            let mut s = SubAllocator::new(capacity).expect("capacity");
            let mut live: Vec<(SubRange, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc { size, align_log2 } => {
                        let alignment = 1u64 << align_log2;
                        if let Some(r) = s.allocate(size, alignment) {
                            prop_assert_eq!(r.offset % alignment, 0);
                            prop_assert_eq!(r.offset % UNIT, 0);
                            prop_assert!(r.offset + r.size <= capacity);
                            for (other, _) in &live {
                                prop_assert!(!overlaps((r.offset, r.size), (other.offset, other.size)));
                            }
                            live.push((r, alignment));
                        }
                    }
                    Op::Free { index } => {
                        if !live.is_empty() {
                            let (r, _) = live.swap_remove(index % live.len());
                            s.free(r);
                        }
                    }
                }
                prop_assert_eq!(s.live(), live.len());
                prop_assert_eq!(s.used(), live.iter().map(|(r, _)| r.size).sum::<u64>());
            }
            for (r, _) in live.drain(..) {
                s.free(r);
            }
            prop_assert!(s.is_empty());
            let whole = s.allocate(capacity, 1);
            prop_assert!(whole.is_some(), "freed ranges must coalesce back into the whole block");
        }
    }
}
