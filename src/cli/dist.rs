//! Flags for data parallelism (`--devices`, `--nodes`, ...), shared by `train` and `laplace`,
//! and the calls into `lalora::distributed` (cargo feature `distributed`).
//!
//! Several machines are started like torchrun: the same command on every machine with
//! `--nodes N --node-rank R --master-addr HOST --master-port PORT` (or the `LALORA_*`
//! environment variables); node 0 runs the coordinator and writes the outputs.

use std::path::Path;
use std::time::Duration;

use burn::tensor::backend::{Device as DeviceTrait, DeviceId};
use clap::Args;

/// Flags of data-parallel runs. None has a default in clap (the defaults are applied in
/// [`DistArgs::plan`]), so single-device runs record none of them in `run.json`.
#[derive(Args, Debug, Clone)]
pub struct DistArgs {
    /// Data-parallel peers in this process: a count (`2`: devices 0 and 1 of the backend; on
    /// the CPU backends, threads sharing the cores, useful for testing) or device names
    /// (`cuda:0,cuda:1`).
    #[arg(long, env = "LALORA_DEVICES")]
    pub devices: Option<String>,
    /// Processes (machines) taking part; every one runs the same command with its own
    /// --node-rank. Default 1.
    #[arg(long, env = "LALORA_NODES")]
    pub nodes: Option<usize>,
    /// This process's rank, 0..nodes; node 0 runs the coordinator and writes the outputs.
    #[arg(long, env = "LALORA_NODE_RANK")]
    pub node_rank: Option<usize>,
    /// Host of node 0 as the other nodes reach it. Default 127.0.0.1.
    #[arg(long, env = "LALORA_MASTER_ADDR")]
    pub master_addr: Option<String>,
    /// The coordinator's port on node 0 (it also uses the next one). Default 29500.
    #[arg(long, env = "LALORA_MASTER_PORT")]
    pub master_port: Option<u16>,
    /// The host the other nodes reach this node at. Default: this machine's address on the
    /// route to --master-addr.
    #[arg(long, env = "LALORA_NODE_ADDR")]
    pub node_addr: Option<String>,
    /// This node's port for tensor transfers (it also uses the next one; it listens on every
    /// interface, unauthenticated). Default: master port + 10 + 2 * node rank.
    #[arg(long, env = "LALORA_DATA_PORT")]
    pub data_port: Option<u16>,
    /// Seconds any collective call may take (the first registration included) before the run
    /// stops with an error naming the call. Default 300.
    #[arg(long, env = "LALORA_COLLECTIVE_TIMEOUT")]
    pub collective_timeout: Option<f64>,
}

/// A data-parallel run: the peers of this process and where the other nodes are.
// Without the `distributed` feature only the device count and node rank are read.
#[cfg_attr(not(feature = "distributed"), allow(dead_code))]
#[derive(Debug, Clone)]
pub struct Plan<D> {
    /// One device per local peer.
    pub devices: Vec<D>,
    /// Processes.
    pub nodes: usize,
    /// This process's rank.
    pub node_rank: usize,
    /// Host of node 0.
    pub master_addr: String,
    /// Coordinator port.
    pub master_port: u16,
    /// This node's host for the others.
    pub node_addr: Option<String>,
    /// This node's data port.
    pub data_port: Option<u16>,
    /// Deadline of every collective call.
    pub timeout: Duration,
}

impl<D> Plan<D> {
    /// Whether this process writes the outputs (node 0).
    pub fn writes_outputs(&self) -> bool {
        self.node_rank == 0
    }
}

impl DistArgs {
    /// The data-parallel plan these flags ask for, or `None` for one device. `default` is the
    /// backend's default device (its kind names the devices of a count).
    pub fn plan<D: DeviceTrait + Clone>(&self, default: &D, backend: &str) -> anyhow::Result<Option<Plan<D>>> {
        let nodes = self.nodes.unwrap_or(1);
        let node_rank = self.node_rank.unwrap_or(0);
        anyhow::ensure!(nodes >= 1, "--nodes must be at least 1");
        anyhow::ensure!(node_rank < nodes, "--node-rank {node_rank} is out of range for --nodes {nodes} (ranks 0..{nodes})");
        let devices = match &self.devices {
            None => vec![default.clone()],
            Some(spec) => parse_devices(spec, default, backend)?,
        };
        if devices.len() == 1 && nodes == 1 {
            anyhow::ensure!(self.node_rank.unwrap_or(0) == 0, "--node-rank needs --nodes");
            return Ok(None);
        }
        let timeout = self.collective_timeout.unwrap_or(300.0);
        anyhow::ensure!(timeout.is_finite() && timeout > 0.0, "--collective-timeout must be a positive number of seconds");
        Ok(Some(Plan {
            devices,
            nodes,
            node_rank,
            master_addr: self.master_addr.clone().unwrap_or_else(|| "127.0.0.1".into()),
            master_port: self.master_port.unwrap_or(29500),
            node_addr: self.node_addr.clone(),
            data_port: self.data_port,
            timeout: Duration::from_secs_f64(timeout),
        }))
    }
}

/// `N` (devices 0..N of the default device's kind) or `kind:index,...` names.
fn parse_devices<D: DeviceTrait + Clone>(spec: &str, default: &D, backend: &str) -> anyhow::Result<Vec<D>> {
    let kind = default.to_id().type_id;
    let at = |index: u16| D::from_id(DeviceId { type_id: kind, index_id: index });
    if let Ok(count) = spec.trim().parse::<usize>() {
        anyhow::ensure!(count >= 1, "--devices {spec}: needs at least one device");
        let count = u16::try_from(count).map_err(|_| anyhow::anyhow!("--devices {spec}: too many"))?;
        // CPU backends have one device; their peers share it.
        return Ok((0..count).map(|i| if at(1).to_id() == at(0).to_id() { default.clone() } else { at(i) }).collect());
    }
    spec.split(',')
        .map(|name| {
            let (prefix, index) = name.trim().split_once(':').unwrap_or((name.trim(), "0"));
            anyhow::ensure!(
                prefix == backend || (prefix == "cpu" && matches!(backend, "flex" | "ndarray")),
                "--devices {spec}: `{name}` is not a {backend} device (this binary was built for {backend}; names look like {backend}:0)"
            );
            let index: u16 = index.parse().map_err(|_| anyhow::anyhow!("--devices {spec}: `{name}` has no device index"))?;
            Ok(at(index))
        })
        .collect()
}

#[cfg(feature = "distributed")]
mod run {
    use std::sync::Arc;

    use lalora::distributed::{fit_parallel, train_parallel, Cluster, ClusterConfig};
    use lalora::laplace::FitReport;
    use lalora::train::{TrainConfig, TrainData, TrainReport};
    use lalora::{KernelAutodiffBackend, LaLoRA, LaplaceConfig, SourceData};

    use super::{Path, Plan};

    fn cluster<D>(plan: &Plan<D>) -> lalora::Result<Arc<Cluster>> {
        Cluster::start(ClusterConfig {
            local_peers: plan.devices.len(),
            nodes: plan.nodes,
            node_rank: plan.node_rank,
            master_addr: plan.master_addr.clone(),
            master_port: plan.master_port,
            data_port: plan.data_port,
            node_addr: plan.node_addr.clone(),
            timeout: plan.timeout,
        })
    }

    /// Trains data-parallel as `plan` says.
    pub fn train<B: KernelAutodiffBackend>(
        plan: &Plan<B::Device>,
        lalora: LaLoRA<B>,
        data: &TrainData<'_>,
        config: &TrainConfig,
        run_dir: &Path,
    ) -> anyhow::Result<(LaLoRA<B>, TrainReport)> {
        let cluster = cluster(plan)?;
        Ok(train_parallel(&cluster, &plan.devices, lalora, data, config, Some(run_dir), true)?)
    }

    /// Fits the prior data-parallel as `plan` says.
    pub fn fit<B: KernelAutodiffBackend>(
        plan: &Plan<B::Device>,
        lalora: &mut LaLoRA<B>,
        sources: &[SourceData],
        config: &LaplaceConfig,
    ) -> anyhow::Result<FitReport> {
        let cluster = cluster(plan)?;
        Ok(fit_parallel(&cluster, &plan.devices, lalora, sources, config, true)?)
    }
}

#[cfg(not(feature = "distributed"))]
mod run {
    use lalora::laplace::FitReport;
    use lalora::train::{TrainConfig, TrainData, TrainReport};
    use lalora::{KernelAutodiffBackend, LaLoRA, LaplaceConfig, SourceData};

    use super::{Path, Plan};

    const MISSING: &str = "--devices/--nodes need a build with the `distributed` feature (cargo build --release --features distributed)";

    /// Without the feature: an error saying how to get it.
    pub fn train<B: KernelAutodiffBackend>(
        _: &Plan<B::Device>,
        _: LaLoRA<B>,
        _: &TrainData<'_>,
        _: &TrainConfig,
        _: &Path,
    ) -> anyhow::Result<(LaLoRA<B>, TrainReport)> {
        anyhow::bail!(MISSING)
    }

    /// Without the feature: an error saying how to get it.
    pub fn fit<B: KernelAutodiffBackend>(
        _: &Plan<B::Device>,
        _: &mut LaLoRA<B>,
        _: &[SourceData],
        _: &LaplaceConfig,
    ) -> anyhow::Result<FitReport> {
        anyhow::bail!(MISSING)
    }
}

pub use run::{fit, train};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flags_is_one_device_and_counts_share_the_cpu() {
        let none = DistArgs {
            devices: None,
            nodes: None,
            node_rank: None,
            master_addr: None,
            master_port: None,
            node_addr: None,
            data_port: None,
            collective_timeout: None,
        };
        let device = lalora_backends::device();
        assert!(none.plan(&device, lalora_backends::NAME).unwrap().is_none());
        let two = DistArgs { devices: Some("2".into()), ..none.clone() };
        let plan = two.plan(&device, lalora_backends::NAME).unwrap().expect("two peers");
        assert_eq!(plan.devices.len(), 2);
        assert!(plan.writes_outputs());
        let bad_rank = DistArgs { nodes: Some(2), node_rank: Some(2), ..none.clone() };
        assert!(bad_rank.plan(&device, lalora_backends::NAME).unwrap_err().to_string().contains("out of range"));
        let wrong_kind = DistArgs { devices: Some("tpu:0,tpu:1".into()), ..none };
        assert!(wrong_kind.plan(&device, lalora_backends::NAME).unwrap_err().to_string().contains("not a"));
    }
}
