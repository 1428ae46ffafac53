//! Run directories a user can trust (issue 13): resume fingerprints, locks, no silent
//! overwrite, checkpoints that are always usable, priors written and checked as one unit, and
//! a clear error instead of a panic for every bad input. Each test drives the `lalora` binary
//! as a user would.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use lalora::io::lock::DirLock;
use lalora::llama::Llama;

fn lalora<S: AsRef<str>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lalora")).args(args.iter().map(|a| a.as_ref())).output().unwrap()
}

fn joined<S: AsRef<str>>(args: &[S]) -> String {
    args.iter().map(|a| a.as_ref()).collect::<Vec<_>>().join(" ")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok<S: AsRef<str>>(args: &[S]) -> String {
    let out = lalora(args);
    assert!(out.status.success(), "lalora {}\n{}", joined(args), stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail without a panic; returns stderr, which must contain every
/// piece of `expected`.
fn fails<S: AsRef<str>>(args: &[S], expected: &[&str]) -> String {
    let out = lalora(args);
    let err = stderr(&out);
    assert!(!out.status.success(), "lalora {} succeeded", joined(args));
    assert!(!err.contains("panicked") && out.status.code() != Some(101), "lalora {}: panicked\n{err}", joined(args));
    for piece in expected {
        assert!(err.contains(piece), "lalora {}: `{piece}` not in\n{err}", joined(args));
    }
    err
}

/// `base` with the flags of `more`: a flag `base` already has gets the new value (clap
/// refuses a repeated flag, which would hide the check under test), others are appended.
fn with<S: AsRef<str>>(base: &[S], more: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = base.iter().map(|a| a.as_ref().to_string()).collect();
    let mut i = 0;
    while i < more.len() {
        let flag = more[i];
        let value = more.get(i + 1).filter(|v| !v.starts_with("--")).copied();
        let at = args.iter().position(|a| a == flag);
        match (at, value) {
            (Some(at), Some(value)) if at + 1 < args.len() && !args[at + 1].starts_with("--") => args[at + 1] = value.to_string(),
            _ => args.extend([flag.to_string()].into_iter().chain(value.map(str::to_string))),
        }
        i += 1 + usize::from(value.is_some());
    }
    args
}

fn fit_prior(model: &Path, source: &Path, out: &Path, seed: &str) {
    ok(&[
        "laplace",
        "--model",
        s(model),
        "--data",
        s(source),
        "--init",
        "offset",
        "--rank",
        "2",
        "--alpha",
        "4",
        "--batches",
        "2",
        "--batch-size",
        "4",
        "--seed",
        seed,
        "--out",
        s(out),
    ]);
}

// Item 1: a tokenizer with ids the model has no embedding for.
#[test]
fn a_tokenizer_id_past_the_vocabulary_is_refused_by_every_command() {
    let (model, source, target) = cli_workspace("rd-tokenizer");
    let mut tokenizer: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(model.join("tokenizer.json")).unwrap()).unwrap();
    // An added token with id 300 = vocab_size, as many real tokenizers have.
    tokenizer["added_tokens"].as_array_mut().unwrap().push(serde_json::json!({
        "id": 300, "content": "<|extra|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true
    }));
    std::fs::write(model.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(&source, "{\"text\": \"The quick <|extra|> fox.\"}\n").unwrap();
    let expected = ["tokenizer.json", "<|extra|>", "id 300", "vocab_size (config.json) is 300"];
    fails(&["eval", "--model", s(&model), "--data", s(&source)], &expected);
    fails(&["generate", "--model", s(&model), "--prompt", "The <|extra|>"], &expected);
    fails(&with(&small_train_args(&model, &source, &model.join("run")), &[]), &expected);
    fails(&["laplace", "--model", s(&model), "--data", s(&source), "--out", s(&model.join("prior"))], &expected);
    let out = model.join("sweep");
    let (src, tgt) = (s(&source), s(&target));
    fails(
        &[
            "sweep",
            "--model",
            s(&model),
            "--train",
            tgt,
            "--laplace-data",
            src,
            "--source-eval",
            src,
            "--target-eval",
            tgt,
            "--out",
            s(&out),
        ],
        &expected,
    );
}

// Item 2: --max-len above the model's context, and generation lengths.
#[test]
fn lengths_past_the_models_context_are_refused() {
    let (model, source, target) = cli_workspace("rd-max-len");
    // The gqa fixture's context is 64 tokens.
    let expected = ["--max-len", "100000", "max_position_embeddings is 64"];
    fails(&["eval", "--model", s(&model), "--data", s(&source), "--max-len", "100000"], &expected);
    fails(&with(&small_train_args(&model, &target, &model.join("run")), &["--max-len", "100000"]), &expected);
    fails(&["laplace", "--model", s(&model), "--data", s(&source), "--max-len", "100000", "--out", s(&model.join("p"))], &expected);
    fails(&["eval", "--model", s(&model), "--data", s(&source), "--max-len", "1"], &["--max-len", "at least 2"]);
    // Without --max-len the default is cut to the context, and eval runs.
    ok(&["eval", "--model", s(&model), "--data", s(&source)]);
    // A generation item's prompt and answer share the token limit.
    let generation = model.join("gen.jsonl");
    std::fs::write(&generation, "{\"prompt\": \"Add 1 and 2.\", \"answer\": \"3\"}\n").unwrap();
    fails(&["eval", "--model", s(&model), "--data", s(&generation), "--max-new-tokens", "64"], &["--max-new-tokens 64", "below"]);
    ok(&["eval", "--model", s(&model), "--data", s(&generation), "--max-new-tokens", "8"]);
    // generate stops at the context, and says so.
    let out = lalora(&["generate", "--model", s(&model), "--prompt", "The quick brown fox", "--max-new-tokens", "1000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("generating at most"), "{}", stderr(&out));
}

// Item 3: a resume with other settings or inputs is refused, naming the item, and writes nothing.
#[test]
fn a_resume_with_other_settings_or_inputs_is_refused_naming_them() {
    let (model, source, target) = cli_workspace("rd-fingerprint");
    let prior = model.join("prior");
    fit_prior(&model, &source, &prior, "0");
    let other_prior = model.join("prior-other");
    fit_prior(&model, &source, &other_prior, "1");
    let run = model.join("run");
    let base = with(&small_train_args(&model, &target, &run), &["--method", "lalora", "--laplace", s(&prior), "--lambda", "1"]);
    ok(&with(&base, &["--stop-after", "2"]));
    let run_json = std::fs::read(run.join("run.json")).unwrap();
    let log = std::fs::read(run.join("log.jsonl")).unwrap();

    // The LoRA shape and scale come from the prior here; a fresh-adapter run checks them below.
    let other_data = model.join("other.jsonl");
    std::fs::write(&other_data, std::fs::read_to_string(&target).unwrap().replace("Add", "Sum")).unwrap();
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (with(&base, &["--lambda", "2"]), &["train.penalty.lambda was 1.0, is now 2.0"]),
        (with(&base, &["--seed", "5"]), &["train.data.seed"]),
        (with(&base, &["--lr", "1e-3"]), &["train.schedule.lr"]),
        (
            with(&small_train_args(&model, &other_data, &run), &["--method", "lalora", "--laplace", s(&prior), "--lambda", "1"]),
            &["inputs.train_data", "inputs.files.data"],
        ),
        (
            with(&small_train_args(&model, &target, &run), &["--method", "lalora", "--laplace", s(&other_prior), "--lambda", "1"]),
            &["inputs.prior", "inputs.files.laplace"],
        ),
        (with(&small_train_args(&model, &target, &run), &["--method", "l2", "--lambda", "1"]), &["train.penalty.kind"]),
    ];
    for (args, expected) in cases {
        let err = fails(&with(&args, &["--resume"]), expected);
        assert!(err.contains("config.json"), "{err}");
        assert_eq!(std::fs::read(run.join("run.json")).unwrap(), run_json, "a refused resume rewrote run.json");
        assert_eq!(std::fs::read(run.join("log.jsonl")).unwrap(), log, "a refused resume wrote to the log");
    }
    ok(&with(&base, &["--resume"]));

    // Fresh adapters: rank, alpha, targets, init, dropout, and a model of the same shape.
    let run = model.join("run-fresh");
    let base = small_train_args(&model, &target, &run);
    ok(&with(&base, &["--stop-after", "2"]));
    let same_shape = temp_dir("rd-fingerprint-model");
    let config = lalora::LlamaConfig::from_file(&model.join("config.json")).unwrap();
    Llama::<TestBackend>::init_random(&config, 7, &device()).save(&same_shape).unwrap();
    std::fs::copy(model.join("tokenizer.json"), same_shape.join("tokenizer.json")).unwrap();
    let mut other_model = base.clone();
    other_model[2] = s(&same_shape).to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with(&base, &["--rank", "4"]), "lora.rank was 2, is now 4"),
        (with(&base, &["--alpha", "8"]), "lora.alpha"),
        (with(&base, &["--targets", "q_proj,v_proj"]), "lora.targets"),
        (with(&base, &["--init", "offset"]), "lora.init"),
        (with(&base, &["--lora-dropout", "0.1"]), "lora.dropout"),
        (other_model, "inputs.model"),
    ];
    for (args, expected) in cases {
        fails(&with(&args, &["--resume"]), &[expected]);
    }
    // The refused resumes left the run as it was: it still finishes.
    ok(&with(&base, &["--resume"]));
}

// Item 4: a fresh run into an existing run directory.
#[test]
fn a_fresh_run_into_an_existing_run_is_refused_unless_forced() {
    let (model, _, target) = cli_workspace("rd-existing");
    let run = model.join("run");
    let base = small_train_args(&model, &target, &run);
    ok(&base);
    let adapter = std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap();
    let log = std::fs::read(run.join("log.jsonl")).unwrap();
    fails(&with(&base, &["--lr", "1e-2"]), &[s(&run), "already holds a run", "--resume", "--force"]);
    assert_eq!(std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap(), adapter);
    assert_eq!(std::fs::read(run.join("log.jsonl")).unwrap(), log, "nothing appended");
    ok(&with(&base, &["--lr", "1e-2", "--force"]));
    assert_ne!(std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap(), adapter);
    let steps = std::fs::read_to_string(run.join("log.jsonl")).unwrap().lines().filter(|l| l.contains("\"nll\"")).count();
    assert_eq!(steps, 4, "the old log was replaced, not appended to");
    fails(&with(&base, &["--resume", "--force"]), &["--force"]);
}

// Item 5: a second process on a directory being written.
#[test]
fn a_second_writer_is_refused_naming_the_holder() {
    let (model, source, target) = cli_workspace("rd-lock");
    let run = model.join("run");
    // This test process holds the lock, as a running `lalora train` would.
    let held = DirLock::run_dir(&run).unwrap();
    let pid = std::process::id().to_string();
    fails(&small_train_args(&model, &target, &run), &[s(&run), "in use", &format!("pid {pid}")]);
    fails(&with(&small_train_args(&model, &target, &run), &["--resume"]), &["in use", &pid]);
    assert!(!run.join("config.json").exists() && !run.join("run.json").exists(), "the refused run wrote nothing");
    drop(held);
    ok(&small_train_args(&model, &target, &run));

    let prior = model.join("prior");
    let held = DirLock::prior_dir(&prior).unwrap();
    fails(&["laplace", "--model", s(&model), "--data", s(&source), "--out", s(&prior)], &[s(&prior), "in use", &pid]);
    assert!(!prior.exists());
    drop(held);
    fit_prior(&model, &source, &prior, "0");
}

// Item 6: only usable checkpoints are kept, and the advice after a stop can be followed.
#[test]
fn a_diverging_run_keeps_a_usable_checkpoint_and_can_continue_with_a_lower_lr() {
    let (model, _, target) = cli_workspace("rd-nan");
    let text_eval = model.join("text.jsonl");
    std::fs::write(&text_eval, "{\"text\": \"The quick brown fox.\"}\n").unwrap();
    for lr in ["1e4", "1e30"] {
        let run = model.join(format!("run-{lr}"));
        let base =
            with(&small_train_args(&model, &target, &run), &["--steps", "8", "--checkpoint-every", "1", "--clip", "0", "--warmup", "0"]);
        let err = fails(&with(&base, &["--lr", lr]), &["stopped", "--resume --allow-change lr", "--force"]);
        // Whatever checkpoint was kept evaluates to a finite loss.
        if run.join("checkpoint/adapter").exists() {
            let out =
                ok(&["eval", "--model", s(&model), "--adapter", s(&run.join("checkpoint/adapter")), "--data", s(&text_eval), "--json"]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert!(v["nll_per_token"].as_f64().unwrap().is_finite(), "lr {lr}: the kept checkpoint gives {v}\n{err}");
        }
        // The advice works: continue from the checkpoint with a lower learning rate.
        ok(&with(&base, &["--lr", "1e-3", "--resume", "--allow-change", "lr"]));
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["train"]["schedule"]["lr"], 1e-3, "the new lr is recorded");
        let out = ok(&["eval", "--model", s(&model), "--adapter", s(&run.join("adapter")), "--data", s(&text_eval), "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v["nll_per_token"].as_f64().unwrap().is_finite());
    }
}

// Item 7: a prior is one unit, and its files are checked against the hashes laplace.json records.
#[test]
fn a_prior_mixing_files_of_two_fits_is_refused() {
    let (model, source, target) = cli_workspace("rd-prior-hashes");
    let (a, b) = (model.join("prior-a"), model.join("prior-b"));
    fit_prior(&model, &source, &a, "0");
    fit_prior(&model, &source, &b, "1");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("laplace.json")).unwrap()).unwrap();
    assert!(meta["files"]["curvature.safetensors"].as_str().unwrap().starts_with("xxh3:"), "{meta}");
    assert!(meta["files"]["anchor/adapter_model.safetensors"].is_string(), "{meta}");
    let train = |prior: &Path, run: &str| {
        with(&small_train_args(&model, &target, &model.join(run)), &["--method", "lalora", "--laplace", s(prior), "--lambda", "1"])
    };
    // Curvature of fit b beside the record and anchor of fit a: same shapes, other numbers.
    std::fs::copy(b.join("curvature.safetensors"), a.join("curvature.safetensors")).unwrap();
    fails(&train(&a, "run-mixed"), &["curvature.safetensors", "does not match", "laplace.json"]);
    fit_prior(&model, &source, &a, "0");
    std::fs::copy(b.join("anchor/adapter_model.safetensors"), a.join("anchor/adapter_model.safetensors")).unwrap();
    fails(&train(&a, "run-mixed-anchor"), &["anchor/adapter_model.safetensors", "does not match"]);

    // The case: `anchor/` cannot be written in place (here it is a file). The prior is
    // written elsewhere and then swapped in, so the new fit lands whole.
    let c = model.join("prior-c");
    fit_prior(&model, &source, &c, "0");
    std::fs::remove_dir_all(c.join("anchor")).unwrap();
    std::fs::write(c.join("anchor"), "not a directory").unwrap();
    fit_prior(&model, &source, &c, "1");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(c.join("laplace.json")).unwrap()).unwrap();
    assert_eq!(meta["seed"], 1);
    ok(&train(&c, "run-c"));
}

#[test]
fn a_failed_prior_write_leaves_the_previous_prior_whole() {
    use lalora::{AdapterSource, LaLoRA, LaplaceConfig, LoraConfig, LoraInit, SourceData, Tokenizer};
    let (model_dir, source, _) = cli_workspace("rd-prior-unit");
    let lora = LoraConfig::new().with_rank(2).with_alpha(4.0).with_init(LoraInit::Offset);
    let mut lalora = LaLoRA::<TestAutodiff>::load(&model_dir, AdapterSource::Fresh(lora), &device()).unwrap();
    let tokenizer = Tokenizer::for_model(&model_dir, lalora.model.config.vocab_size).unwrap();
    let sources = [SourceData::read(&source, &tokenizer, 32).unwrap()];
    let config = LaplaceConfig::new().with_batch_size(4);
    let dir = model_dir.join("prior");
    lalora.fit_prior(&sources, &config, false).unwrap();
    lalora.save_prior(&dir).unwrap();
    let files = ["laplace.json", "curvature.safetensors", "anchor/adapter_model.safetensors", "anchor/adapter_config.json"];
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect();
    // The next prior goes to `prior.tmp-<pid>` first: a file there makes that write fail.
    lalora.fit_prior(&sources, &config.clone().with_seed(5), false).unwrap();
    std::fs::write(model_dir.join(format!("prior.tmp-{}", std::process::id())), "blocks the write").unwrap();
    assert!(lalora.save_prior(&dir).is_err());
    let after: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect();
    assert_eq!(before, after, "the previous prior is untouched");
    // And it still loads.
    LaLoRA::<TestAutodiff>::load(&model_dir, AdapterSource::Prior(dir), &device()).unwrap();
}

// Item 8: every numeric flag has its range.
#[test]
fn numeric_flags_out_of_range_are_refused_naming_the_flag() {
    let (model, source, target) = cli_workspace("rd-ranges");
    let run = model.join("run");
    let base = small_train_args(&model, &target, &run);
    for (flag, value) in [
        ("--min-lr-ratio", "-2"),
        ("--clip", "-1"),
        ("--clip", "nan"),
        ("--weight-decay", "nan"),
        ("--lr", "0"),
        ("--lr", "inf"),
        ("--steps", "0"),
        ("--batch-size", "0"),
        ("--grad-accum", "0"),
        ("--stop-after", "0"),
        ("--rank", "0"),
        ("--alpha", "-1"),
        ("--lora-dropout", "1"),
        ("--lambda", "-1"),
        ("--max-len", "1"),
    ] {
        fails(&with(&base, &[flag, value]), &[flag]);
    }
    fails(&with(&base, &["--rank", "100000"]), &["--rank", "100000", "at most"]);
    assert!(!run.join("config.json").exists(), "no refused run started");
    let prior = model.join("prior");
    let laplace = ["laplace", "--model", s(&model), "--data", s(&source), "--out", s(&prior)];
    for (flag, value) in
        [("--samples", "0"), ("--batches", "0"), ("--batch-size", "0"), ("--prior-precision", "-1"), ("--prior-precision", "nan")]
    {
        fails(&with(&laplace, &[flag, value]), &[flag]);
    }
    let (src, tgt) = (s(&source), s(&target));
    let sweep = [
        "sweep",
        "--model",
        s(&model),
        "--train",
        tgt,
        "--laplace-data",
        src,
        "--source-eval",
        src,
        "--target-eval",
        tgt,
        "--out",
        s(&run),
    ];
    for (flag, value) in [
        ("--laplace-batch-size", "0"),
        ("--laplace-batches", "0"),
        ("--lambda", "1,-5"),
        ("--l2-lambda", "nan"),
        ("--lora-eval-points", "0"),
        ("--min-lr-ratio", "2"),
    ] {
        fails(&with(&sweep, &[flag, value]), &[flag]);
    }
    let eval = ["eval", "--model", s(&model), "--data", src];
    for (flag, value) in [("--batch-size", "0"), ("--max-new-tokens", "0")] {
        fails(&with(&eval, &[flag, value]), &[flag]);
    }
    let generate = ["generate", "--model", s(&model), "--prompt", "The"];
    for (flag, value) in
        [("--temperature", "-1"), ("--temperature", "nan"), ("--top-p", "0"), ("--top-p", "nan"), ("--max-new-tokens", "0")]
    {
        fails(&with(&generate, &[flag, value]), &[flag]);
    }
    for (flag, value) in [("--steps", "0"), ("--lr", "-1"), ("--lambda", "0")] {
        fails(&["demo", "--quick", "--out", s(&model.join("demo")), flag, value], &[flag]);
    }
}

// Item 9, the smaller ones.
#[test]
fn a_finished_run_resumed_says_so_and_output_paths_are_named() {
    let (model, _, target) = cli_workspace("rd-small");
    let run = model.join("run");
    ok(&small_train_args(&model, &target, &run));
    let adapter = std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap();
    let out = ok(&with(&small_train_args(&model, &target, &run), &["--resume"]));
    assert!(out.contains("already finished") && !out.contains("NaN"), "{out}");
    assert_eq!(std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap(), adapter);

    // Output directories that cannot be made are named.
    let blocker = model.join("blocker");
    std::fs::write(&blocker, "a file").unwrap();
    let inside = blocker.join("out");
    fails(&["tasks", "--tiny", "--out", s(&inside)], &[s(&blocker)]);
    let tgt = s(&target);
    fails(
        &[
            "sweep",
            "--model",
            s(&model),
            "--train",
            tgt,
            "--laplace-data",
            tgt,
            "--source-eval",
            tgt,
            "--target-eval",
            tgt,
            "--out",
            s(&inside),
        ],
        &[s(&blocker)],
    );
    fails(&with(&small_train_args(&model, &target, &inside), &[]), &[s(&blocker)]);
}

#[test]
fn method_and_adapter_flags_that_would_be_ignored_are_refused() {
    let (model, source, target) = cli_workspace("rd-ignored");
    let prior = model.join("prior");
    fit_prior(&model, &source, &prior, "0");
    let base = small_train_args(&model, &target, &model.join("run"));
    fails(
        &with(&base, &["--method", "lalora", "--laplace", s(&prior), "--lambda", "1", "--adapter", s(&prior.join("anchor"))]),
        &["--adapter", "--laplace"],
    );
    fails(&with(&base, &["--laplace", s(&prior)]), &["--laplace"]);
    fails(&with(&base, &["--lambda", "3"]), &["--lambda", "lora"]);
}

#[test]
fn a_broken_prior_or_adapter_is_refused_naming_the_file_and_field() {
    let (model, source, target) = cli_workspace("rd-broken-prior");
    let prior = model.join("prior");
    let train = |prior: &Path| {
        with(&small_train_args(&model, &target, &model.join("run")), &["--method", "lalora", "--laplace", s(prior), "--lambda", "1"])
    };
    let edit_meta = |dir: &Path, edit: &dyn Fn(&mut serde_json::Value)| {
        let path = dir.join("laplace.json");
        let mut meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut meta);
        std::fs::write(&path, meta.to_string()).unwrap();
    };
    for (field, edit) in [
        ("targets", &(|m: &mut serde_json::Value| m["targets"] = serde_json::json!(["q_proj"])) as &dyn Fn(&mut serde_json::Value)),
        ("alpha", &|m: &mut serde_json::Value| m["alpha"] = serde_json::json!(100.0)),
        ("tokens", &|m: &mut serde_json::Value| m["tokens"] = serde_json::json!(0)),
    ] {
        fit_prior(&model, &source, &prior, "0");
        edit_meta(&prior, edit);
        fails(&train(&prior), &["laplace.json", &format!("`{field}`")]);
    }
    // A curvature that is not positive semi-definite (a factor with its sign flipped), with the
    // hash record removed as an older prior would have none.
    fit_prior(&model, &source, &prior, "0");
    let path = prior.join("curvature.safetensors");
    let files = lalora::io::TensorFiles::open_file(&path).unwrap();
    let tensors: Vec<(String, burn::tensor::TensorData)> = files
        .names()
        .into_iter()
        .map(|name| {
            let data = files.read_f32_any(&name).unwrap();
            let flip = if name.ends_with(".G") { -1.0f32 } else { 1.0 };
            let values: Vec<f32> = data.to_vec::<f32>().unwrap().into_iter().map(|v| v * flip).collect();
            (name.to_string(), burn::tensor::TensorData::new(values, data.shape.clone()))
        })
        .collect();
    drop(files);
    lalora::io::save_tensors(&path, tensors, None).unwrap();
    edit_meta(&prior, &|m| {
        m.as_object_mut().unwrap().remove("files");
    });
    fails(&train(&prior), &["curvature.safetensors", "positive semi-definite"]);

    // adapter_config.json's target_modules and layers_to_transform must describe the tensors.
    fit_prior(&model, &source, &prior, "0");
    let adapter = prior.join("anchor");
    let edit_config = |edit: &dyn Fn(&mut serde_json::Value)| {
        let path = adapter.join("adapter_config.json");
        let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut config);
        std::fs::write(&path, config.to_string()).unwrap();
    };
    let eval = ["eval", "--model", s(&model), "--adapter", s(&adapter), "--data", s(&source)];
    ok(&eval);
    edit_config(&|c| c["target_modules"] = serde_json::json!(["q_proj", "v_proj"]));
    fails(&eval, &["adapter_config.json", "`target_modules`"]);
    edit_config(&|c| {
        c["target_modules"] = serde_json::json!(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]);
        c["layers_to_transform"] = serde_json::json!([0]);
    });
    fails(&eval, &["adapter_config.json", "`layers_to_transform`", "layer 1"]);
}

#[test]
fn a_sweep_keeps_the_settings_that_finish_when_one_diverges() {
    let (model, source, target) = cli_workspace("rd-sweep-diverges");
    let out = model.join("sweep");
    let (src, tgt) = (s(&source), s(&target));
    // lambda 1e30 makes the penalty overflow once the adapters move; lambda 1 trains.
    ok(&[
        "sweep",
        "--model",
        s(&model),
        "--train",
        tgt,
        "--laplace-data",
        src,
        "--source-eval",
        src,
        "--target-eval",
        tgt,
        "--out",
        s(&out),
        "--methods",
        "l2",
        "--l2-lambda",
        "1,1e30",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--rank",
        "2",
        "--alpha",
        "4",
        "--lr",
        "1e-2",
        "--init",
        "offset",
        "--laplace-batch-size",
        "4",
    ]);
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let l2: Vec<&str> = csv.lines().filter(|l| l.starts_with("l2,")).collect();
    assert_eq!(l2.len(), 2, "{csv}");
    assert!(l2.iter().any(|l| l.starts_with("l2,0,1,") && l.contains(",false,")), "{csv}");
    assert!(l2.iter().any(|l| l.contains(",true,")), "the diverged setting is marked\n{csv}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let rows = json["sweeps"][0]["rows"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["diverged"].as_str().is_some_and(|d| d.contains("stopped"))), "{json}");
}

// Item 10: `tasks --tiny` cuts the world the bundled model learned.
#[test]
fn tiny_tasks_are_a_cut_of_the_full_tasks_and_the_bundled_model_knows_them() {
    let (tiny, full) = (temp_dir("rd-tasks-tiny"), temp_dir("rd-tasks-full"));
    ok(&["tasks", "--tiny", "--out", s(&tiny)]);
    ok(&["tasks", "--out", s(&full)]);
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/data");
    for entry in std::fs::read_dir(&tiny).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !name.ends_with(".jsonl") {
            continue;
        }
        let small = std::fs::read_to_string(tiny.join(&name)).unwrap();
        assert!(!small.is_empty(), "{name}");
        assert!(std::fs::read_to_string(full.join(&name)).unwrap().starts_with(&small), "{name} is not a prefix of the full file");
        assert_eq!(std::fs::read_to_string(bundled.join(&name)).unwrap(), small, "models/tiny/data/{name} is `tasks --tiny`");
    }
    // The bundled model learned that world: it knows the tiny eval's facts.
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    let out = ok(&["eval", "--model", s(&model), "--data", s(&tiny.join("source-facts.eval.jsonl")), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let acc = v["metrics"]["acc"].as_f64().unwrap();
    assert!(acc >= 0.9, "facts accuracy {acc} on the tiny eval\n{v}");
}

// Crash safety: `kill -9` at random points, then resume, until the run finishes; the adapter is
// byte-identical to an uninterrupted run's and every step is logged once.
#[test]
fn runs_killed_at_random_points_resume_to_the_same_adapter() {
    let (model, _, target) = cli_workspace("rd-kill");
    let args = |run: &Path| with(&small_train_args(&model, &target, run), &["--steps", "16", "--checkpoint-every", "3", "--lr", "1e-2"]);
    let reference = model.join("reference");
    let clock = std::time::Instant::now();
    ok(&args(&reference));
    let whole = clock.elapsed();
    let expected = std::fs::read(reference.join("adapter/adapter_model.safetensors")).unwrap();

    // A small LCG, seeded from the clock; the seed is printed on failure to replay the kills.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut state = seed;
    let mut uniform = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let run = model.join("killed");
    let mut kills = 0;
    for attempt in 0..12 {
        // A user resumes a run that has its config.json, and starts one that has none.
        let mut argv = args(&run);
        if run.join("config.json").exists() {
            argv.push("--resume".into());
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_lalora"))
            .args(&argv)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if attempt < 6 {
            std::thread::sleep(whole.mul_f64(uniform()));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                continue;
            }
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !err.contains("panicked"), "seed {seed}, attempt {attempt}: {err}");
        if run.join("adapter/adapter_model.safetensors").exists() {
            break;
        }
    }
    let got = std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap_or_default();
    assert!(got == expected, "seed {seed}: after {kills} kills the adapter differs from the uninterrupted run's");
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("nll").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=16).collect::<Vec<u64>>(), "seed {seed}: every step logged once, in order\n{log}");
    eprintln!("seed {seed}: {kills} kills, uninterrupted run {whole:?}");
}

// No input a user can give makes lalora panic: every malformed file, missing path and broken
// run directory gets an error (exit code 1, not a panic's 101 or an abort's 134) naming it.
#[test]
fn bad_inputs_give_errors_never_panics() {
    let (model, source, target) = cli_workspace("rd-bad-inputs");
    let prior = model.join("prior");
    fit_prior(&model, &source, &prior, "0");
    let run = model.join("run");
    ok(&with(&small_train_args(&model, &target, &run), &["--stop-after", "2", "--checkpoint-every", "1"]));
    let put = |name: &str, content: &[u8]| {
        let path = model.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_string()
    };
    // Broken copies of the model directory, the prior and the run directory.
    let broken_model = |name: &str, file: &str, content: &[u8]| {
        let dir = copy_fixture("llama/gqa", &format!("rd-bad-{name}"));
        std::fs::copy(model.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
        std::fs::write(dir.join(file), content).unwrap();
        dir.to_str().unwrap().to_string()
    };
    let copy_dir = |from: &Path, name: &str, file: &str, content: &[u8]| {
        let to = model.join(name);
        let _ = std::fs::remove_dir_all(&to);
        copy_tree(from, &to);
        std::fs::write(to.join(file), content).unwrap();
        to.to_str().unwrap().to_string()
    };
    let m = s(&model);
    let (src, tgt) = (s(&source), s(&target));
    let not_json = put("bad/not-json.jsonl", b"{\"text\": \"ok\"}\n{\"text\": \n");
    let wrong_type = put("bad/wrong-type.jsonl", b"{\"text\": 5}\n");
    let no_field = put("bad/no-field.jsonl", b"{\"words\": \"hello\"}\n");
    let empty = put("bad/empty.jsonl", b"");
    let binary = put("bad/binary.jsonl", &[0xff, 0xfe, 0x00, 0x01, b'\n']);
    let bad_yaml = put("bad/run.yaml", b"steps: [1, 2\n");
    let unknown_key = put("bad/unknown.yaml", b"stepz: 3\n");
    let config_garbage = broken_model("config", "config.json", b"{\"hidden_size\": ");
    let config_shape = broken_model("shape", "config.json", b"{\"hidden_size\": 0, \"vocab_size\": 300}");
    let tokenizer_garbage = broken_model("tokenizer", "tokenizer.json", b"not a tokenizer");
    let weights_garbage = broken_model("weights", "model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":");
    let adapter_garbage = copy_dir(&prior.join("anchor"), "bad-adapter", "adapter_model.safetensors", b"garbage");
    let adapter_config = copy_dir(&prior.join("anchor"), "bad-adapter-config", "adapter_config.json", b"{\"r\": \"eight\"}");
    let prior_json = copy_dir(&prior, "bad-prior-json", "laplace.json", b"[]");
    let prior_curvature = copy_dir(&prior, "bad-prior-curvature", "curvature.safetensors", b"\x00\x00");
    let state = copy_dir(&run, "bad-run-state", "checkpoint/state.json", b"{\"step\": \"two\"}");
    let optimizer = copy_dir(&run, "bad-run-optimizer", "checkpoint/optimizer.bin", b"garbage");
    let run_config = copy_dir(&run, "bad-run-config", "config.json", b"{");
    let missing = model.join("missing");
    let gone = s(&missing);
    let train = |data: &str, out: &str| -> Vec<String> {
        ["train", "--model", m, "--data", data, "--steps", "2", "--batch-size", "2", "--rank", "2", "--out", out]
            .iter()
            .map(|a| a.to_string())
            .collect()
    };
    let fresh = |name: &str| model.join(name).to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with(&["eval", "--model", gone, "--data", src], &[]), gone),
        (with(&["eval", "--model", m, "--data", gone], &[]), gone),
        (with(&["eval", "--model", m, "--data", &not_json], &[]), &not_json),
        (with(&["eval", "--model", m, "--data", &wrong_type], &[]), &wrong_type),
        (with(&["eval", "--model", m, "--data", &no_field], &[]), &no_field),
        (with(&["eval", "--model", m, "--data", &empty], &[]), &empty),
        (with(&["eval", "--model", m, "--data", &binary], &[]), &binary),
        (with(&["eval", "--model", &config_garbage, "--data", src], &[]), "config.json"),
        (with(&["eval", "--model", &config_shape, "--data", src], &[]), "config.json"),
        (with(&["eval", "--model", &tokenizer_garbage, "--data", src], &[]), "tokenizer.json"),
        (with(&["eval", "--model", &weights_garbage, "--data", src], &[]), "model.safetensors"),
        (with(&["eval", "--model", m, "--adapter", &adapter_garbage, "--data", src], &[]), "adapter_model.safetensors"),
        (with(&["eval", "--model", m, "--adapter", &adapter_config, "--data", src], &[]), "adapter_config.json"),
        (with(&["eval", "--model", m, "--adapter", gone, "--data", src], &[]), gone),
        (with(&["generate", "--model", m, "--adapter", &adapter_garbage, "--prompt", "The"], &[]), "adapter_model.safetensors"),
        (with(&train(&empty, &fresh("r-empty")), &[]), &empty),
        (with(&train(&not_json, &fresh("r-json")), &[]), &not_json),
        (with(&train(tgt, &fresh("r-prior-json")), &["--method", "lalora", "--lambda", "1", "--laplace", &prior_json]), "laplace.json"),
        (
            with(&train(tgt, &fresh("r-prior-curv")), &["--method", "lalora", "--lambda", "1", "--laplace", &prior_curvature]),
            "curvature.safetensors",
        ),
        (with(&train(tgt, &fresh("r-prior-gone")), &["--method", "lalora", "--lambda", "1", "--laplace", gone]), gone),
        (with(&train(tgt, &fresh("r-config")), &["--config", &bad_yaml]), &bad_yaml),
        (with(&train(tgt, &fresh("r-unknown")), &["--config", &unknown_key]), "stepz"),
        (
            with(&small_train_args(&model, &target, Path::new(&state)), &["--stop-after", "2", "--checkpoint-every", "1", "--resume"]),
            "state.json",
        ),
        (
            with(&small_train_args(&model, &target, Path::new(&optimizer)), &["--stop-after", "2", "--checkpoint-every", "1", "--resume"]),
            "optimizer",
        ),
        (
            with(&small_train_args(&model, &target, Path::new(&run_config)), &["--stop-after", "2", "--checkpoint-every", "1", "--resume"]),
            "config.json",
        ),
        (with(&train(tgt, gone), &["--resume"]), "config.json"),
        (with(&["laplace", "--model", m, "--data", &empty, "--out", &fresh("p-empty")], &[]), &empty),
        (
            with(&["laplace", "--model", m, "--data", src, "--adapter", &adapter_garbage, "--out", &fresh("p-adapter")], &[]),
            "adapter_model.safetensors",
        ),
        (with(&["merge", "--model", m, "--adapter", &adapter_garbage, "--out", &fresh("merged")], &[]), "adapter_model.safetensors"),
        (with(&["plot", gone], &[]), gone),
    ];
    for (args, named) in &cases {
        fails(args, &[named]);
        let code = lalora(args).status.code();
        assert_eq!(code, Some(1), "lalora {}: exit code {code:?}", joined(args));
    }
}

/// Copies a directory tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// `--gradient-checkpointing` computes the same gradients, so a resume may turn it on: the
/// run ends at the adapter of an uninterrupted run without it, byte for byte (the Laplace
/// penalty on, so its separate backward is part of the step).
#[test]
fn a_resume_may_turn_gradient_checkpointing_on() {
    let (model, source, target) = cli_workspace("rd-checkpointing");
    let prior = model.join("prior");
    fit_prior(&model, &source, &prior, "0");
    let penalty = ["--method", "lalora", "--laplace", s(&prior), "--lambda", "1"];
    let plain = model.join("run-plain");
    ok(&with(&small_train_args(&model, &target, &plain), &penalty));
    let resumed = model.join("run-resumed");
    let base = with(&small_train_args(&model, &target, &resumed), &penalty);
    ok(&with(&base, &["--stop-after", "2"]));
    ok(&with(&base, &["--resume", "--gradient-checkpointing"]));
    let adapter = |run: &Path| std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(adapter(&resumed), adapter(&plain), "checkpointed steps moved the adapter elsewhere");
    let log = std::fs::read_to_string(resumed.join("log.jsonl")).unwrap();
    assert!(log.contains("gradient_checkpointing"), "the change is logged:\n{log}");
}
