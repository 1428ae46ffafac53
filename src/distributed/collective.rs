//! Peers and the one collective they use, a sum all-reduce, on top of burn-collective: local
//! peers (threads of one process) and nodes (processes, possibly on other machines).
//!
//! Every call runs under a deadline: burn-collective 0.21 has none, and a dead peer or an
//! unreachable coordinator would otherwise block forever. A call that times out leaves the
//! collective unusable; the peer reports which call, which rank and which address failed.
//!
//! # Nodes: one session per all-reduce
//! burn-collective 0.21's global level completes only the *first* all-reduce of a registration:
//! the barrier at the end of every global all-reduce (`global/node/sync.rs`) clears a copy of
//! its list of synced nodes instead of the list itself, so the second call waits forever. A
//! fresh registration starts a fresh node (and list), so each global all-reduce here is its
//! own session: finish the previous session, register, all-reduce. Re-registering with one
//! coordinator races (the coordinator numbers nodes by how many are registered, so a node that
//! re-registers before a slower one has finished takes that one's id), so node 0 runs *two*
//! coordinators and sessions alternate between them: a node registers session k+2 with
//! coordinator X only after all-reduce k+1 (on Y) completed, which every node entered after
//! finishing session k (on X) and having it acknowledged. Data ports alternate too, so a node's
//! new listener never waits for its previous one to close. Node 0 restarts the idle
//! coordinator now and then: burn's coordinator keeps one task and socket per session forever.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::str::FromStr;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_collective::{
    all_reduce, finish_collective, register, AllReduceStrategy, CollectiveConfig, CollectiveError, PeerId, ReduceOperation,
};
use burn_communication::Address;

use crate::error::{Error, Result};

/// Sessions between restarts of a coordinator (each session leaves a socket open in it).
const RESTART_EVERY: u64 = 200;

/// Where this process sits among the peers, and how long a collective call may take.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// Peers in this process (threads, one per device).
    pub local_peers: usize,
    /// Processes ("nodes") taking part; 1 means local peers only.
    pub nodes: usize,
    /// This process's index, `0..nodes`; node 0 runs the coordinator.
    pub node_rank: usize,
    /// Host of node 0, as the other nodes reach it.
    pub master_addr: String,
    /// The coordinator's port; it also uses the next one.
    pub master_port: u16,
    /// This node's data port (it also uses the next one); `None`: `master_port + 10 + 2 * node_rank`,
    /// which keeps nodes on one host apart.
    pub data_port: Option<u16>,
    /// The host other nodes reach this node at; `None`: this machine's address on the route to
    /// `master_addr`.
    pub node_addr: Option<String>,
    /// Longest wait for any collective call, the first registration included.
    pub timeout: Duration,
}

impl ClusterConfig {
    /// `peers` threads in one process.
    pub fn local(peers: usize) -> Self {
        ClusterConfig {
            local_peers: peers,
            nodes: 1,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
            data_port: None,
            node_addr: None,
            timeout: Duration::from_secs(300),
        }
    }

    /// Peers in all nodes.
    pub fn world(&self) -> usize {
        self.local_peers * self.nodes
    }

    /// Checks the counts and ranks; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        if self.local_peers == 0 {
            return Err(Error::arg("devices", "needs at least one device"));
        }
        if self.nodes == 0 {
            return Err(Error::arg("nodes", "needs at least one node"));
        }
        if self.node_rank >= self.nodes {
            return Err(Error::arg(
                "node-rank",
                format!("is {}, but there are {} nodes (ranks 0..{})", self.node_rank, self.nodes, self.nodes),
            ));
        }
        if self.timeout.is_zero() {
            return Err(Error::arg("collective-timeout", "must be positive"));
        }
        if self.nodes > 1 {
            if self.master_port == u16::MAX {
                return Err(Error::arg("master-port", "leaves no room for the second port"));
            }
            let first = self.data_port.map_or(u32::from(self.master_port) + 10 + 2 * self.node_rank as u32, u32::from);
            if first >= u32::from(u16::MAX) {
                return Err(Error::arg("data-port", format!("{first} leaves no room for the second port")));
            }
        }
        Ok(())
    }

    /// The two data ports this node alternates between.
    fn data_ports(&self) -> [u16; 2] {
        let first = self.data_port.unwrap_or_else(|| (u32::from(self.master_port) + 10 + 2 * self.node_rank as u32).min(65534) as u16);
        [first, first + 1]
    }
}

/// One process's share of a data-parallel job: its configuration, the coordinator (node 0)
/// and the barrier its local peers meet at between sessions. Make one with [`Cluster::start`],
/// then one [`Peer`] per local device, each on its own thread.
pub struct Cluster {
    config: ClusterConfig,
    node_addr: String,
    coordinator: Mutex<Option<Coordinator>>,
    barrier: LocalBarrier,
}

impl Cluster {
    /// Checks `config` and, on node 0 of several, starts the coordinator (two listeners on
    /// `master_port` and the next port, on every interface, unauthenticated).
    pub fn start(config: ClusterConfig) -> Result<Arc<Cluster>> {
        config.validate()?;
        if config.nodes > 1 {
            quiet_burn_logs();
        }
        let node_addr = match &config.node_addr {
            Some(a) => a.clone(),
            None => local_address_towards(&config.master_addr, config.master_port).unwrap_or_else(|| "127.0.0.1".into()),
        };
        let coordinator =
            if config.nodes > 1 && config.node_rank == 0 { Some(Coordinator::start(config.master_port, config.timeout)?) } else { None };
        let barrier = LocalBarrier::new(config.local_peers);
        Ok(Arc::new(Cluster { config, node_addr, coordinator: Mutex::new(coordinator), barrier }))
    }

    /// The configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The peer of local device `local_index` (`0..local_peers`) on `device`. With only local
    /// peers this registers, and waits (up to the timeout) for the other local peers.
    ///
    /// `B` is the backend the gradients live on (the inner backend of an autodiff one).
    pub fn peer<B: Backend>(self: &Arc<Self>, local_index: usize, device: B::Device) -> Result<Peer<B>> {
        let rank = self.config.node_rank * self.config.local_peers + local_index;
        let mut peer: Peer<B> = Peer { cluster: self.clone(), rank, device, sessions: 0, open: false, broken: None };
        if self.config.nodes == 1 && self.config.local_peers > 1 {
            let config = CollectiveConfig::default().with_num_devices(self.config.local_peers);
            let (id, device) = (PeerId::from(rank), peer.device.clone());
            peer.call("register", move || register::<B>(id, device, config))?;
            peer.open = true;
        }
        Ok(peer)
    }
}

/// One data-parallel peer: a rank among `world` peers and the sum all-reduce they share.
pub struct Peer<B: Backend> {
    cluster: Arc<Cluster>,
    rank: usize,
    device: B::Device,
    /// Global sessions started (one per global all-reduce).
    sessions: u64,
    /// Whether a registration is open (local: the whole run; global: the last session).
    open: bool,
    /// The failure that made the collective unusable.
    broken: Option<String>,
}

impl<B: Backend> Peer<B> {
    /// This peer's global rank, `0..world`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of peers.
    pub fn world(&self) -> usize {
        self.cluster.config.world()
    }

    /// The device this peer computes on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// `sum_p tensor_p` over every peer, returned to every peer (the same values everywhere).
    /// Every peer must call it the same number of times with the same length.
    ///
    /// # Errors
    /// [`Error::Distributed`] when a call fails or times out; the collective is unusable
    /// afterwards.
    pub fn all_reduce_sum(&mut self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        if self.world() == 1 {
            return Ok(tensor);
        }
        let len = tensor.dims()[0];
        if self.cluster.config.nodes > 1 {
            self.start_session(len)?;
        }
        let id = PeerId::from(self.rank);
        let primitive = tensor.into_primitive().tensor();
        let reduced = self.call("all-reduce", move || all_reduce::<B>(id, primitive, ReduceOperation::Sum))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(reduced)))
    }

    /// Ends this peer's part: with local peers only, unregisters once every local peer is done.
    /// Nodes leave their last session open (the coordinator may already be gone; nothing is
    /// exchanged after the last all-reduce).
    pub fn finish(mut self) -> Result<()> {
        if self.cluster.config.nodes == 1 && self.open && self.broken.is_none() {
            self.cluster.barrier.wait(self.cluster.config.timeout).map_err(|r| self.error(&r))?;
            let id = PeerId::from(self.rank);
            self.call("finish", move || finish_collective::<B>(id))?;
            self.open = false;
        }
        Ok(())
    }

    /// Global level: closes the previous session and opens a new one for an all-reduce of
    /// `len` values (see the module docs for why every call is its own session).
    fn start_session(&mut self, len: usize) -> Result<()> {
        let id = PeerId::from(self.rank);
        if self.open {
            self.call("finish the previous session", move || finish_collective::<B>(id))?;
            self.open = false;
            // Local peers re-register only once all of them have left the old session.
            if self.cluster.config.local_peers > 1 {
                self.cluster.barrier.wait(self.cluster.config.timeout).map_err(|r| self.error(&r))?;
            }
        }
        let parity = (self.sessions % 2) as usize;
        let config = self.session_config(parity, len);
        let device = self.device.clone();
        let what = format!(
            "register with the coordinator at {}:{} (session {})",
            self.cluster.config.master_addr,
            self.cluster.config.master_port + parity as u16,
            self.sessions
        );
        self.call(&what, move || register::<B>(id, device, config))?;
        self.open = true;
        self.sessions += 1;
        // Every node has finished the other coordinator's last session and none can start its
        // next one before this all-reduce: the moment to restart it.
        if self.rank == 0 && self.sessions.is_multiple_of(RESTART_EVERY) {
            let mut coordinator = self.cluster.coordinator.lock().expect("coordinator lock");
            if let Some(c) = coordinator.as_mut() {
                c.restart(1 - parity).map_err(|e| self.error(&e.to_string()))?;
            }
        }
        Ok(())
    }

    /// The registration of a session on coordinator `parity`.
    fn session_config(&self, parity: usize, len: usize) -> CollectiveConfig {
        let c = &self.cluster.config;
        let port = c.data_ports()[parity];
        let address = |host: &str, port: u16| Address::from_str(&format!("ws://{host}:{port}")).expect("any string is an address");
        // The ring cuts the tensor into one slice per node.
        let strategy = if len >= c.nodes { AllReduceStrategy::Ring } else { AllReduceStrategy::Centralized };
        CollectiveConfig::default()
            .with_num_devices(c.local_peers)
            .with_num_nodes(c.nodes as u32)
            .with_global_address(address(&c.master_addr, c.master_port + parity as u16))
            .with_node_address(address(&self.cluster.node_addr, port))
            .with_data_service_port(port)
            .with_global_all_reduce_strategy(strategy)
    }

    /// Runs a blocking collective call on a helper thread and waits for it at most the
    /// timeout.
    fn call<T: Send + 'static>(
        &mut self,
        what: &str,
        f: impl FnOnce() -> std::result::Result<T, CollectiveError> + Send + 'static,
    ) -> Result<T> {
        if let Some(reason) = &self.broken {
            return Err(self.error(&format!("{what}: the collective failed earlier ({reason})")));
        }
        let timeout = self.cluster.config.timeout;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        let failure = match rx.recv_timeout(timeout) {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => format!("{what} failed: {e:?} (a peer may have stopped)"),
            Err(mpsc::RecvTimeoutError::Timeout) => format!(
                "{what} did not complete within {} s: a peer died or stalled, or the coordinator at {}:{} is unreachable \
                 (raise --collective-timeout if peers are just slow)",
                timeout.as_secs_f64(),
                self.cluster.config.master_addr,
                self.cluster.config.master_port
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => format!("{what}: the collective call panicked"),
        };
        self.broken = Some(failure.clone());
        Err(self.error(&failure))
    }

    fn error(&self, reason: &str) -> Error {
        Error::Distributed { peer: self.rank, reason: reason.to_string() }
    }
}

/// A barrier for the local peers of one node, with a deadline.
struct LocalBarrier {
    size: usize,
    state: Mutex<(usize, u64)>,
    turn: Condvar,
}

impl LocalBarrier {
    fn new(size: usize) -> Self {
        LocalBarrier { size, state: Mutex::new((0, 0)), turn: Condvar::new() }
    }

    /// Waits until all `size` peers arrived, at most `timeout`.
    fn wait(&self, timeout: Duration) -> std::result::Result<(), String> {
        let mut state = self.state.lock().map_err(|_| "a local peer panicked".to_string())?;
        let generation = state.1;
        state.0 += 1;
        if state.0 == self.size {
            *state = (0, generation + 1);
            self.turn.notify_all();
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        while state.1 == generation {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("the other local peers did not arrive within {} s", timeout.as_secs_f64()));
            }
            state = self.turn.wait_timeout(state, left).map_err(|_| "a local peer panicked".to_string())?.0;
        }
        Ok(())
    }
}

/// Node 0's coordinators: burn-collective's orchestrator on two ports, each on a runtime of
/// its own so that it can be restarted.
struct Coordinator {
    ports: [u16; 2],
    runtimes: [Option<tokio::runtime::Runtime>; 2],
    timeout: Duration,
}

impl Coordinator {
    fn start(port: u16, timeout: Duration) -> Result<Self> {
        let next = port.checked_add(1).ok_or_else(|| Error::arg("master-port", "leaves no room for the second port"))?;
        let mut c = Coordinator { ports: [port, next], runtimes: [None, None], timeout };
        for i in 0..2 {
            c.restart(i)?;
        }
        Ok(c)
    }

    /// (Re)starts coordinator `i` and waits until it accepts connections.
    fn restart(&mut self, i: usize) -> Result<()> {
        if let Some(old) = self.runtimes[i].take() {
            old.shutdown_timeout(Duration::from_secs(1));
        }
        let port = self.ports[i];
        let busy = |e: std::io::Error| Error::arg("master-port", format!("cannot listen on port {port}: {e}"));
        // Bind once ourselves: a port in use is an error here, not a silent log line.
        drop(TcpListener::bind(("0.0.0.0", port)).map_err(busy)?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lalora-coordinator")
            .enable_all()
            .build()
            .map_err(|e| Error::arg("master-port", format!("cannot start the coordinator: {e}")))?;
        runtime.spawn(async move {
            burn_collective::start_global_orchestrator(port).await;
            // It returns on SIGINT/SIGTERM (it installs handlers for both, which stops them
            // from ending the process) or when it cannot serve: end the process as the
            // signal would have.
            eprintln!("lalora: the coordinator on port {port} stopped (interrupted); exiting");
            std::process::exit(130);
        });
        let deadline = Instant::now() + self.timeout.min(Duration::from_secs(30));
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(Error::arg("master-port", format!("the coordinator did not start listening on port {port}")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.runtimes[i] = Some(runtime);
        Ok(())
    }
}

/// This machine's address on the route to `host` (no packet is sent).
fn local_address_towards(host: &str, port: u16) -> Option<String> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect((host, port)).ok()?;
    Some(socket.local_addr().ok()?.ip().to_string())
}

/// Claims the process's `tracing` and `log` slots before burn-communication's servers try to
/// install their stdout logger at INFO (one line per tensor transfer and connection): tracing
/// events are dropped, `log` warnings and errors go to stderr. Does nothing if something else
/// claimed them first.
fn quiet_burn_logs() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.level() <= log::Level::Warn
        }
        fn log(&self, record: &log::Record) {
            if self.enabled(record.metadata()) {
                eprintln!("{} {}: {}", record.level(), record.target(), record.args());
            }
        }
        fn flush(&self) {}
    }
    let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default());
    if log::set_boxed_logger(Box::new(Stderr)).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}
