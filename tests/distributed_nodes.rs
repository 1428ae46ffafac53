//! Data parallelism over 2 processes on loopback (burn-collective's global level, as on
//! several machines): `lalora train` and `lalora laplace` started twice with `--nodes 2` and
//! ranks 0 and 1 give the adapters and the curvature of one process on the whole batch. Each
//! pair of processes is bounded: a collective timeout makes a stuck call an error, and the
//! test kills both processes if they outlive a deadline. A node whose coordinator never answers
//! stops with an error naming it. Cargo features `cli` and `distributed`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use lalora::io::TensorFiles;

/// How long a pair of processes may run before the test kills them.
const DEADLINE: Duration = Duration::from_secs(240);

/// The tests take turns: each picks its ports by trying them, which two at once would race.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A base port with the 14 ports a 2-node run uses free (two coordinators at `base` and
/// `base + 1`, each node's two data ports at `base + 10 + 2 * rank`), chosen from this
/// process's id so that concurrent test runs rarely collide.
fn free_ports() -> u16 {
    let start = 20_000 + (std::process::id() % 2_000) as u16 * 16;
    (0..200u16)
        .map(|k| start.wrapping_add(k * 16) % 40_000 + 20_000)
        .find(|&base| (0..14).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .expect("no free block of ports on 127.0.0.1")
}

/// Starts `lalora args` with its output kept for the failure message.
fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lalora"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lalora")
}

/// Waits for every child to exit by itself within [`DEADLINE`]; kills them all otherwise.
/// Panics, with every process's output, unless all succeeded; returns their stdout.
fn wait_all(mut children: Vec<Child>) -> Vec<String> {
    let clock = Instant::now();
    while children.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        if clock.elapsed() > DEADLINE {
            for child in &mut children {
                let _ = child.kill();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let outputs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let report: String = outputs
        .iter()
        .enumerate()
        .map(|(rank, o)| {
            format!("node {rank}: {}\n{}{}\n", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
        })
        .collect();
    assert!(outputs.iter().all(|o| o.status.success()), "after {:.1} s:\n{report}", clock.elapsed().as_secs_f64());
    outputs.iter().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).collect()
}

/// Runs `args` once alone and once as 2 nodes on loopback (node 0 writes into `out`), and
/// returns the two output directories (alone, nodes) and what node 1 printed.
fn alone_and_as_two_nodes(args: &[String], dir: &Path) -> (PathBuf, PathBuf, String) {
    let with_out = |out: &Path| -> Vec<String> { args.iter().cloned().chain(["--out".into(), s(out).into()]).collect() };
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let alone = dir.join("alone");
    wait_all(vec![spawn(&with_out(&alone))]);

    let (nodes, port) = (dir.join("nodes"), free_ports());
    let node = |rank: usize| {
        let mut args = with_out(&if rank == 0 { nodes.clone() } else { dir.join(format!("node-{rank}")) });
        args.extend(
            ["--nodes", "2", "--node-rank", &rank.to_string(), "--master-port", &port.to_string(), "--collective-timeout", "60"]
                .map(String::from),
        );
        spawn(&args)
    };
    let mut printed = wait_all(vec![node(0), node(1)]);
    (alone, nodes, printed.remove(1))
}

/// The largest |a - b| over every tensor of two safetensors files (same names), and the
/// largest |b|.
fn max_difference(a: &Path, b: &Path) -> (f64, f64) {
    let (a, b) = (TensorFiles::open_file(a).unwrap(), TensorFiles::open_file(b).unwrap());
    assert_eq!(a.names(), b.names());
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for name in a.names() {
        let (x, y) = (a.read_f32_any(&name).unwrap().to_vec::<f32>().unwrap(), b.read_f32_any(&name).unwrap().to_vec::<f32>().unwrap());
        assert_eq!(x.len(), y.len(), "{name}");
        for (x, y) in x.iter().zip(&y) {
            diff = diff.max((x - y).abs() as f64);
            scale = scale.max(y.abs() as f64);
        }
    }
    (diff, scale)
}

#[test]
fn two_processes_on_loopback_train_the_adapters_of_one() {
    let (model, _, target) = cli_workspace("nodes-train");
    let dir = model.join("runs");
    // Offset init (every gradient non-trivial), two micro-batches per step: the gradients of
    // 4 steps cross the wire 8 times.
    let mut args = small_train_args(&model, &target, &dir.join("unused"));
    args.truncate(args.len() - 2); // the --out pair: set per run below
    args.extend(["--init", "offset", "--lr", "5e-3", "--grad-accum", "2", "--eval-every", "0", "--seed", "0"].map(String::from));
    let (alone, nodes, node_1) = alone_and_as_two_nodes(&args, &dir);
    assert!(node_1.contains("node 1: 4 steps done"), "node 1 took part: {node_1}");

    let adapter = |run: &Path| run.join("adapter/adapter_model.safetensors");
    let (diff, scale) = max_difference(&adapter(&nodes), &adapter(&alone));
    println!("adapters after 4 steps, 2 nodes vs 1 process: max |difference| {diff:.2e} (largest weight {scale:.2})");
    assert!(scale > 1e-2, "the adapters are not trivial");
    assert!(diff <= 1e-5, "2 nodes vs 1 process: {diff:.3e}");
}

#[test]
fn two_processes_on_loopback_fit_the_curvature_of_one() {
    let (model, source, _) = cli_workspace("nodes-laplace");
    let dir = model.join("priors");
    // The empirical Fisher: no sampled labels, so the sums are exactly comparable.
    let args: Vec<String> = ["laplace", "--model", s(&model), "--data", s(&source), "--rank", "2", "--alpha", "4", "--init", "offset"]
        .into_iter()
        .chain(["--curvature", "kfac", "--fisher", "empirical", "--batches", "5", "--batch-size", "2", "--seed", "0"])
        .map(String::from)
        .collect();
    let (alone, nodes, node_1) = alone_and_as_two_nodes(&args, &dir);
    assert!(node_1.contains("node 1: fit done"), "node 1 took part: {node_1}");

    let curvature = |prior: &Path| prior.join("curvature.safetensors");
    let (diff, scale) = max_difference(&curvature(&nodes), &curvature(&alone));
    println!("kfac factors, 2 nodes vs 1 process: max |difference| {diff:.2e}, relative {:.2e}", diff / scale);
    assert!(scale > 0.0);
    assert!(diff <= 1e-5 * scale, "2 nodes vs 1 process: {:.3e} relative", diff / scale);
    let meta = |prior: &Path| std::fs::read_to_string(prior.join("laplace.json")).unwrap();
    let tokens = |text: String| serde_json::from_str::<serde_json::Value>(&text).unwrap()["tokens"].clone();
    assert_eq!(tokens(meta(&nodes)), tokens(meta(&alone)), "both fits saw the same tokens");
}

#[test]
fn a_node_whose_coordinator_is_unreachable_stops_with_an_error_within_the_timeout() {
    let (model, _, target) = cli_workspace("nodes-unreachable");
    let mut args = small_train_args(&model, &target, &model.join("run"));
    // Rank 1 alone: nobody listens on the master port.
    let port = {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        free_ports()
    };
    args.extend(["--nodes", "2", "--node-rank", "1", "--master-port", &port.to_string(), "--collective-timeout", "3"].map(String::from));
    let clock = Instant::now();
    let output = spawn(&args).wait_with_output().unwrap();
    let (elapsed, stderr) = (clock.elapsed(), String::from_utf8_lossy(&output.stderr));
    println!("the lone node stopped after {:.2} s: {}", elapsed.as_secs_f64(), stderr.trim());
    assert!(!output.status.success());
    assert!(stderr.contains(&format!("coordinator at 127.0.0.1:{port}")) && stderr.contains("within 3 s"), "{stderr}");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
}
