//! Seeded shuffling and batching that can stop and resume at the same place.

use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// Where a [`Shuffler`] is: the epoch and the position inside that epoch's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DataPosition {
    /// Completed passes over the data.
    pub epoch: u64,
    /// Items of the current epoch already handed out.
    pub index: usize,
}

/// Hands out batches of item indices in a seeded random order, reshuffling every epoch. The
/// order of epoch e depends only on (seed, e), so a [`DataPosition`] is all a checkpoint needs.
#[derive(Debug, Clone)]
pub struct Shuffler {
    len: usize,
    seed: u64,
    position: DataPosition,
    order: Vec<usize>,
}

impl Shuffler {
    /// A shuffler over `len` items, starting at `position`.
    ///
    /// # Panics
    /// If `len` is zero.
    pub fn new(len: usize, seed: u64, position: DataPosition) -> Self {
        assert!(len > 0, "nothing to shuffle");
        let order = permutation(len, seed, position.epoch);
        Shuffler { len, seed, position, order }
    }

    /// The next `size` indices (crossing into the next epoch when needed).
    pub fn next_batch(&mut self, size: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(size);
        while out.len() < size {
            if self.position.index == self.len {
                self.position = DataPosition { epoch: self.position.epoch + 1, index: 0 };
                self.order = permutation(self.len, self.seed, self.position.epoch);
            }
            out.push(self.order[self.position.index]);
            self.position.index += 1;
        }
        out
    }

    /// The current position.
    pub fn position(&self) -> DataPosition {
        self.position
    }
}

/// A Fisher-Yates permutation of `0..len` for (seed, epoch).
pub fn permutation(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resuming_from_a_position_continues_the_same_stream() {
        let mut straight = Shuffler::new(7, 3, DataPosition::default());
        let first: Vec<Vec<usize>> = (0..3).map(|_| straight.next_batch(3)).collect();
        let mut resumed = Shuffler::new(7, 3, DataPosition::default());
        resumed.next_batch(3);
        let mut resumed = Shuffler::new(7, 3, resumed.position());
        assert_eq!(resumed.next_batch(3), first[1]);
        assert_eq!(resumed.next_batch(3), first[2]);
    }

    #[test]
    fn every_epoch_is_a_permutation_and_epochs_differ() {
        let a = permutation(50, 1, 0);
        let b = permutation(50, 1, 1);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(a, b);
        assert_eq!(a, permutation(50, 1, 0));
    }
}
