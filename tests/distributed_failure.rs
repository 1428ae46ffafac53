//! A data-parallel peer that dies gives the others a clear error within the timeout, not a
//! hang (burn-collective 0.21 has no timeouts of its own). A binary of its own: after the
//! failure, burn-collective's process-wide local server is left with a call that never
//! completes, which would disturb other tests in the same process. Cargo feature `distributed`.
#![cfg(feature = "distributed")]

mod common;

use std::time::{Duration, Instant};

use burn::tensor::Tensor;
use common::*;
use lalora::distributed::{Cluster, ClusterConfig};
use lalora::Error;

#[test]
fn a_peer_that_dies_gives_the_other_an_error_within_the_timeout() {
    let timeout = Duration::from_secs(3);
    let cluster = Cluster::start(ClusterConfig { timeout, ..ClusterConfig::local(2) }).unwrap();
    let clock = Instant::now();
    let (alive, dead) = std::thread::scope(|scope| {
        let alive = scope.spawn(|| -> lalora::Result<Vec<f64>> {
            let mut peer = cluster.peer::<TestBackend>(0, device())?;
            let first = peer.all_reduce_sum(Tensor::from_floats([1.0, 2.0, 3.0], &device()))?;
            // The other peer is gone by now: this one can never complete.
            peer.all_reduce_sum(Tensor::from_floats([1.0, 2.0, 3.0], &device()))?;
            Ok(values(&first))
        });
        let dead = scope.spawn(|| -> lalora::Result<Vec<f64>> {
            let mut peer = cluster.peer::<TestBackend>(1, device())?;
            let first = peer.all_reduce_sum(Tensor::from_floats([10.0, 20.0, 30.0], &device()))?;
            // Dies: returns without the second call (and without finishing).
            Ok(values(&first))
        });
        (alive.join().unwrap(), dead.join().unwrap())
    });
    let elapsed = clock.elapsed();
    assert_eq!(dead.unwrap(), vec![11.0, 22.0, 33.0], "the first all-reduce sums both peers");
    match alive {
        Err(Error::Distributed { peer, reason }) => {
            assert_eq!(peer, 0);
            assert!(reason.contains("all-reduce") && reason.contains("did not complete within 3 s"), "{reason}");
        }
        other => panic!("expected a data-parallel error, got {other:?}"),
    }
    println!("the surviving peer failed after {:.2} s (timeout {} s)", elapsed.as_secs_f64(), timeout.as_secs());
    assert!(elapsed >= timeout && elapsed < timeout + Duration::from_secs(10), "{elapsed:?}");
}
