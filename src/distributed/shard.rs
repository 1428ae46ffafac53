//! How work is split among peers: contiguous shares, the first peers taking one more item
//! when the count does not divide.

use std::ops::Range;

/// Peer `rank`'s share of `len` items among `world` peers: `ceil(rank len / world) ..
/// ceil((rank + 1) len / world)`. The shares are disjoint, cover `0..len` in order, and differ
/// in size by at most one; peer 0's is never smaller than another's.
pub fn share(len: usize, rank: usize, world: usize) -> Range<usize> {
    assert!(world > 0 && rank < world, "rank {rank} of {world} peers");
    (rank * len).div_ceil(world)..((rank + 1) * len).div_ceil(world)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_everything_once_and_are_balanced() {
        for world in 1..6 {
            for len in 0..20 {
                let shares: Vec<Range<usize>> = (0..world).map(|r| share(len, r, world)).collect();
                assert_eq!(shares[0].start, 0);
                assert_eq!(shares[world - 1].end, len);
                for pair in shares.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                }
                let sizes: Vec<usize> = shares.iter().map(|s| s.len()).collect();
                let (min, max) = (*sizes.iter().min().unwrap_or(&0), *sizes.iter().max().unwrap_or(&0));
                assert!(max - min <= 1, "{len} over {world}: {sizes:?}");
                assert_eq!(sizes[0], max, "{len} over {world}: {sizes:?}");
            }
        }
    }
}
