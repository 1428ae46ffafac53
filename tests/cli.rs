//! The command line end to end: laplace -> train with the prior -> eval, resume, the files each
//! step writes, and the bundled demo in its quick form.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn lalora(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lalora")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = lalora(args);
    assert!(out.status.success(), "lalora {}\n{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`cli_workspace`] plus a small evaluation file of every kind.
fn workspace(name: &str) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let (model, source, target) = cli_workspace(name);
    let eval = model.join("eval.jsonl");
    std::fs::write(&eval, "{\"context\": \"The quick\", \"choices\": [\" brown\", \" red\"], \"label\": 0}\n{\"prompt\": \"Add 1 and 2.\", \"answer\": \"3\"}\n").unwrap();
    (model, source, target, eval)
}

#[test]
fn laplace_then_train_with_the_prior_then_eval() {
    let (model, source, target, _) = workspace("cli-pipeline");
    let prior = model.join("prior");
    let out = ok(&[
        "laplace",
        "--model",
        s(&model),
        "--data",
        s(&source),
        "--curvature",
        "kfac",
        "--init",
        "offset",
        "--rank",
        "4",
        "--alpha",
        "8",
        "--batches",
        "2",
        "--batch-size",
        "4",
        "--out",
        s(&prior),
    ]);
    assert!(out.contains("kfac") && out.contains("tokens"), "{out}");
    for f in [
        "curvature.safetensors",
        "laplace.json",
        "anchor/adapter_config.json",
        "anchor/adapter_model.safetensors",
        "anchor/lalora_adapter.json",
    ] {
        assert!(prior.join(f).exists(), "{f}");
    }
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(prior.join("laplace.json")).unwrap()).unwrap();
    assert_eq!(meta["curvature"], "kfac");
    assert_eq!(meta["init"], "offset");
    assert!(meta["tokens"].as_u64().unwrap() > 0);

    let run = model.join("run");
    let text_eval = model.join("text-eval.jsonl");
    std::fs::write(&text_eval, "{\"text\": \"The quick brown fox.\"}\n").unwrap();
    ok(&[
        "train",
        "--model",
        s(&model),
        "--data",
        s(&target),
        "--method",
        "lalora",
        "--laplace",
        s(&prior),
        "--lambda",
        "10",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--eval",
        s(&text_eval),
        "--eval-every",
        "2",
        "--checkpoint-every",
        "2",
        "--out",
        s(&run),
    ]);
    for f in
        ["adapter/adapter_config.json", "adapter/adapter_model.safetensors", "log.jsonl", "run.json", "eval.json", "checkpoint/state.json"]
    {
        assert!(run.join(f).exists(), "{f}");
    }
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap()).filter(|v: &serde_json::Value| v.get("nll").is_some()).collect();
    assert_eq!(steps.len(), 4);
    assert!(steps.iter().all(|v| v["penalty"].as_f64().unwrap() >= 0.0 && v["lr"].as_f64().unwrap() > 0.0));
    assert!(steps[1..].iter().any(|v| v["penalty"].as_f64().unwrap() > 0.0), "the adapters left the anchor");
    assert_eq!(log.lines().filter(|l| l.contains("\"eval\"")).count(), 2);

    // --lambda posterior resolves to N_src / N_tgt and prints both counts.
    let out = lalora(&[
        "train",
        "--model",
        s(&model),
        "--data",
        s(&target),
        "--method",
        "lalora",
        "--laplace",
        s(&prior),
        "--lambda",
        "posterior",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--out",
        s(&model.join("run-posterior")),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("lambda posterior")).unwrap_or_else(|| panic!("no lambda line in {stderr}"));
    let source_tokens = meta["tokens"].as_u64().unwrap();
    assert!(line.contains(&format!("= {source_tokens} source tokens / ")), "{line}");
    let target_tokens: f64 = line.split(" / ").nth(2).unwrap().split(' ').next().unwrap().parse().unwrap();
    // 12 records of "Add i and 2." + " #### i+2" (plus EOS): a few completion tokens each.
    assert!((12.0..=12.0 * 12.0).contains(&target_tokens), "{line}");
    let lambda: f64 = line.rsplit("= ").next().unwrap().parse().unwrap();
    assert!((lambda - source_tokens as f64 / target_tokens).abs() < 1e-5, "{line}");
    let refused =
        lalora(&["train", "--model", s(&model), "--data", s(&target), "--method", "l2", "--lambda", "posterior", "--out", s(&run)]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--lambda posterior needs --method lalora"));

    // The trained adapter loads for evaluation.
    let out = ok(&["eval", "--model", s(&model), "--adapter", s(&run.join("adapter")), "--data", s(&text_eval), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["nll_per_token"].as_f64().unwrap().is_finite());
}

#[test]
fn train_resumes_and_refuses_nonsense() {
    let (model, _, target, _) = workspace("cli-resume");
    let run = model.join("run");
    let args = small_train_args(&model, &target, &run);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = lalora(&[&args[..], &["--stop-after", "2"]].concat());
    assert!(first.status.success());
    assert!(String::from_utf8_lossy(&first.stdout).contains("--resume"));
    ok(&[&args[..], &["--resume"]].concat());
    assert!(run.join("adapter/adapter_model.safetensors").exists());

    let bad = lalora(&[&args[..], &["--lr", "-1"]].concat());
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("lr"));
    // A fresh directory: `run` already holds a run, which a fresh `train` refuses first.
    let bad = lalora(&["train", "--model", s(&model), "--data", s(&target), "--method", "l2", "--out", s(&model.join("run-l2"))]);
    assert!(!bad.status.success(), "l2 without --lambda must be refused");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--lambda"));
}

#[test]
fn eval_reports_every_kind_of_set() {
    let (model, _, target, eval) = workspace("cli-eval-kinds");
    let choice = model.join("choice.jsonl");
    let generation = model.join("generation.jsonl");
    let lines: Vec<&str> = std::fs::read_to_string(&eval).unwrap().leak().lines().collect();
    std::fs::write(&choice, format!("{}\n", lines[0])).unwrap();
    std::fs::write(&generation, format!("{}\n", lines[1])).unwrap();
    let out = ok(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&choice),
        "--data",
        s(&generation),
        "--data",
        s(&target),
        "--max-new-tokens",
        "4",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sets = v["sets"].as_array().unwrap();
    assert_eq!(sets.len(), 3);
    assert!(sets[0]["metrics"]["acc"].is_number() && sets[0]["metrics"]["acc_norm"].is_number());
    assert!(sets[1]["metrics"]["accuracy"].is_number());
    assert!(sets[2]["nll_per_token"].is_number());
    // A file mixing kinds is refused with its line.
    let out = lalora(&["eval", "--model", s(&model), "--data", s(&eval)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("eval.jsonl:2"));
}

#[test]
fn the_bundled_demo_runs_end_to_end_in_its_quick_form() {
    let out_dir = temp_dir("demo-quick");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    let out = ok(&["demo", "--quick", "--model", s(&model), "--out", s(&out_dir)]);
    assert!(out.contains("best trade-off") && out.contains("Before fine-tuning"), "{out}");
    for f in ["results.csv", "results.json", "pareto.svg", "pareto.png", "tasks/pretrain.jsonl"] {
        assert!(out_dir.join(f).exists(), "{f}");
    }
    let csv = std::fs::read_to_string(out_dir.join("results.csv")).unwrap();
    for method in ["base", "lora", "l2", "lalora-diag", "lalora-kfac"] {
        assert!(csv.lines().any(|l| l.starts_with(&format!("{method},"))), "{method} missing from\n{csv}");
    }
    let png = std::fs::read(out_dir.join("pareto.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn flags_come_from_a_config_file_and_the_run_records_them() {
    let (model, _, target, _) = workspace("cli-config");
    let run = model.join("run");
    let config = model.join("run.yaml");
    std::fs::write(&config, format!("model: {}\ndata: {}\nsteps: 3\nbatch_size: 4\nrank: 2\nalpha: 4\nlr: 1e-3\n", s(&model), s(&target)))
        .unwrap();
    // A flag on the command line overrides the file.
    ok(&["train", "--config", s(&config), "--lr", "2e-3", "--out", s(&run)]);
    let flags: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(flags["steps"], "3");
    assert_eq!(flags["lr"], "2e-3");
    assert_eq!(flags["rank"], "2");
    // The run's own run.json repeats it.
    let again = model.join("again");
    ok(&["train", "--config", s(&run.join("run.json")), "--out", s(&again)]);
    let a = std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap();
    let b = std::fs::read(again.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(a, b, "the same flags give the same adapter");
    // An unknown key names the file and the key.
    std::fs::write(&config, "stepz: 3\n").unwrap();
    let out = lalora(&["train", "--config", s(&config), "--out", s(&run)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("run.yaml") && err.contains("stepz"), "{err}");
}
