//! Data parallelism with burn-collective (cargo feature `distributed`): LoRA training, Laplace
//! fits and evaluation over several peers, each on its own device, in one process (local
//! peers, threads) and over several processes or machines (nodes).
//!
//! - Training ([`train_peer`], [`train_parallel`]): each peer takes a contiguous share of
//!   every micro-batch; its loss is weighted by its share of the micro-batch's supervised
//!   tokens, so one sum all-reduce of the flattened LoRA gradients gives one device's gradient.
//!   Every peer then clips and steps AdamW on identical gradients.
//! - Laplace fits ([`fit_peer`], [`fit_parallel`]): source batches dealt round-robin; the
//!   peers' curvatures, weighted by their token shares, are summed in one all-reduce.
//! - Evaluation ([`evaluate_sets`]): items split, sums gathered in one all-reduce.
//!
//! Peers and nodes ([`Cluster`], [`Peer`]): local peers use burn-collective's local level
//! (one registration for the whole run). Nodes use its global level, started like torchrun
//! (node 0 runs the coordinator; every node is given the node count, its rank and node 0's
//! address); each global all-reduce is a session of its own, which works around a
//! burn-collective 0.21 bug (see [`collective`]). Every call has a deadline, so a dead peer or
//! an unreachable coordinator is an error naming the call and the address, not a hang.
//!
//! The CPU backends (flex, ndarray) work at both levels: tensors go through burn's own ops
//! (local) and WebSocket transfers (global). burn-autodiff's `distributed` feature (NCCL
//! all-reduce inside the backward pass) is not used: it is CUDA-only and, enabled, removes
//! autodiff from the CPU backends in the same build.

pub mod collective;
mod eval;
mod fit;
mod shard;
mod train;

pub use collective::{Cluster, ClusterConfig, Peer};
pub use eval::evaluate_sets;
pub use fit::{fit_parallel, fit_peer};
pub use shard::share;
pub use train::{train_parallel, train_peer};

use crate::error::{Error, Result};

/// What one local peer's thread returns: its error, or its output (only the first peer's is
/// kept).
type PeerOutcome<T> = Result<Option<T>>;

/// The first local peer's output, or the most telling error: a peer's own failure before
/// the timeouts it caused in the others.
fn first_result<T>(results: Vec<PeerOutcome<T>>) -> Result<T> {
    let mut first = None;
    let mut errors = Vec::new();
    for result in results {
        match result {
            Ok(Some(out)) if first.is_none() => first = Some(out),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    if let Some(i) = errors.iter().position(|e| !matches!(e, Error::Distributed { .. })) {
        return Err(errors.swap_remove(i));
    }
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    Ok(first.expect("the first local peer returns its output"))
}
