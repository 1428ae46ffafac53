//! Run configuration files: every flag of a subcommand from a JSON or YAML file.
//!
//! `lalora train --config run.yaml --lr 1e-3` reads `run.yaml`, turns each key into the flag
//! of the same name (`max_len: 256` -> `--max-len=256`) and places those flags right after the
//! subcommand, before the user's own arguments. A flag the user gives on the command line
//! replaces the file's value (for lists too: the file's list is dropped, not appended to).
//! clap then parses the result as usual, so types, ranges and required flags are checked in
//! one place.
//!
//! The mechanism reads the command's clap definition ([`clap::Command`]), not its Rust
//! struct, so it works for any subcommand that declares a `--config` flag.
//!
//! [`resolved_config`] goes the other way: it collects every flag value clap ended up with
//! (defaults included) into a map that, written as JSON into a run directory, reproduces the
//! run with `--config RUN/config.json`.
//!
//! Values: strings and numbers become `--key=value`; `true`/`false` switch a flag on or off;
//! lists become repeated flags (`--key=a --key=b`) or one delimited value (`--key=a,b`) as
//! the flag expects; `null` leaves the flag unset. Keys may be written `max_len` or `max-len`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, ArgMatches, Command};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The flag that names a config file.
pub const CONFIG_FLAG: &str = "config";

/// Reads a config file into a key -> value map: `.json`, or `.yaml` / `.yml`. The top level
/// must be a mapping.
pub fn read_config_file(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let value: Value = match extension.as_str() {
        "json" => serde_json::from_str(&text).map_err(|source| Error::Json { path: path.to_path_buf(), source })?,
        "yaml" | "yml" => serde_saphyr::from_str(&text).map_err(|e| Error::config(path, "<document>", format!("malformed YAML: {e}")))?,
        _ => {
            return Err(Error::config(
                path,
                "<file name>",
                format!("unknown extension `{extension}`: a config file is .json, .yaml or .yml"),
            ))
        }
    };
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(Error::config(path, "<document>", format!("the top level must be a mapping of flags, not {}", kind(&other)))),
    }
}

/// The command line with the flags of every `--config FILE` of the subcommand inserted right
/// after the subcommand's name (later files override earlier ones; flags the user typed
/// override both). `args` starts with the program name, as `std::env::args_os()` does.
///
/// Unchanged when there is no subcommand or it has no `--config` flag (clap then reports an
/// unexpected `--config` itself). Errors name the file and the key: unknown keys (with the
/// closest flag names), positional arguments, nested mappings, lists for one-value flags.
pub fn expand_config_args(command: &Command, args: Vec<OsString>) -> Result<Vec<OsString>> {
    let mut command = command.clone();
    command.build();
    let Some((position, sub)) = find_subcommand(&command, &args) else {
        return Ok(args);
    };
    if !sub.get_arguments().any(|a| a.get_long() == Some(CONFIG_FLAG)) {
        return Ok(args);
    }
    let user_args = &args[position + 1..];
    let files = config_files(user_args);
    if files.is_empty() {
        return Ok(args);
    }
    let given = given_flags(sub, user_args);
    let mut merged = Map::new();
    let mut origin = std::collections::HashMap::new();
    for file in &files {
        for (key, value) in read_config_file(file)? {
            let arg = find_arg(sub, &key).ok_or_else(|| unknown_key(file, &key, sub))?;
            let id = arg.get_id().to_string();
            merged.remove(&id);
            merged.insert(id.clone(), value);
            origin.insert(id, (file.clone(), key));
        }
    }
    let mut inserted = Vec::new();
    for (id, value) in &merged {
        let arg = sub.get_arguments().find(|a| a.get_id() == id.as_str()).expect("found above");
        if given.iter().any(|g| g == id) {
            continue;
        }
        let (file, key) = &origin[id];
        inserted.extend(flag_args(arg, value).map_err(|reason| Error::config(file, key, reason))?);
    }
    let mut out = args[..=position].to_vec();
    out.extend(inserted);
    out.extend_from_slice(user_args);
    Ok(out)
}

/// Every flag value clap settled on for one subcommand (`sub` and its matches), defaults and
/// environment values included, keyed by flag name in snake case. Positional arguments, help
/// and `--config` itself are left out. Written as JSON, the map reproduces the run through
/// `--config` (values are kept as the strings clap parsed, so nothing is lost in a float).
pub fn resolved_config(sub: &Command, matches: &ArgMatches) -> Map<String, Value> {
    let mut sub = sub.clone();
    sub.build();
    let mut out = Map::new();
    for arg in sub.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let id = arg.get_id().as_str();
        if long == CONFIG_FLAG || arg.is_positional() || matches.value_source(id).is_none() {
            continue;
        }
        let value = match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse => Value::Bool(matches.get_flag(id)),
            ArgAction::Count => Value::from(matches.get_count(id)),
            ArgAction::Set | ArgAction::Append => {
                let raw: Vec<Value> =
                    matches.get_raw(id).into_iter().flatten().map(|v| Value::String(v.to_string_lossy().into_owned())).collect();
                if takes_many(arg) {
                    Value::Array(raw)
                } else {
                    match raw.into_iter().next() {
                        Some(v) => v,
                        None => continue,
                    }
                }
            }
            _ => continue,
        };
        out.insert(long.replace('-', "_"), value);
    }
    out
}

/// Index in `args` of the first subcommand name and that subcommand.
fn find_subcommand<'a>(command: &'a Command, args: &[OsString]) -> Option<(usize, &'a Command)> {
    args.iter().enumerate().skip(1).find_map(|(i, a)| {
        let name = a.to_str()?;
        command.get_subcommands().find(|s| s.get_name() == name || s.get_all_aliases().any(|x| x == name)).map(|s| (i, s))
    })
}

/// The files named by `--config FILE` or `--config=FILE`, in order.
fn config_files(user_args: &[OsString]) -> Vec<PathBuf> {
    let flag = format!("--{CONFIG_FLAG}");
    let mut files = Vec::new();
    let mut iter = user_args.iter();
    while let Some(arg) = iter.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if text == flag {
            if let Some(file) = iter.next() {
                files.push(PathBuf::from(file));
            }
        } else if let Some(file) = text.strip_prefix(&format!("{flag}=")) {
            files.push(PathBuf::from(file));
        }
    }
    files
}

/// Ids of the flags the user typed (`--name`, `--name=value`, `-x`), before any `--`.
fn given_flags(sub: &Command, user_args: &[OsString]) -> Vec<String> {
    let mut ids = Vec::new();
    for arg in user_args.iter().filter_map(|a| a.to_str()) {
        if arg == "--" {
            break;
        }
        let found = if let Some(long) = arg.strip_prefix("--") {
            let name = long.split('=').next().unwrap_or(long);
            sub.get_arguments().find(|a| a.get_long_and_visible_aliases().is_some_and(|n| n.contains(&name)))
        } else if let Some(short) = arg.strip_prefix('-').and_then(|s| s.chars().next()) {
            sub.get_arguments().find(|a| a.get_short() == Some(short))
        } else {
            None
        };
        ids.extend(found.map(|a| a.get_id().to_string()));
    }
    ids
}

/// The flag a config key names: by long name (`max-len`, also written `max_len`) or by id.
fn find_arg<'a>(sub: &'a Command, key: &str) -> Option<&'a Arg> {
    let long = key.replace('_', "-");
    sub.get_arguments().find(|a| {
        let named = a.get_long_and_visible_aliases().is_some_and(|n| n.contains(&long.as_str()));
        (named || a.get_id() == key) && a.get_long() != Some(CONFIG_FLAG)
    })
}

/// The error for a key no flag has, with the closest flag names.
fn unknown_key(file: &Path, key: &str, sub: &Command) -> Error {
    if key.replace('_', "-") == CONFIG_FLAG {
        return Error::config(file, key, "a config file cannot name another config file");
    }
    if let Some(arg) = sub.get_arguments().find(|a| a.is_positional() && a.get_id() == key) {
        return Error::config(file, key, format!("`{}` is a positional argument: give it on the command line", arg.get_id()));
    }
    let names: Vec<String> = sub
        .get_arguments()
        .filter_map(Arg::get_long)
        .filter(|l| !matches!(*l, "help" | "version" | CONFIG_FLAG))
        .map(|l| l.replace('-', "_"))
        .collect();
    let wanted = key.replace('-', "_");
    let mut close: Vec<(f64, &String)> = names.iter().map(|n| (strsim::jaro_winkler(&wanted, n), n)).filter(|(s, _)| *s > 0.8).collect();
    close.sort_by(|a, b| b.0.total_cmp(&a.0));
    let hint = match close.first() {
        Some((_, name)) => format!("did you mean `{name}`?"),
        None => format!("the keys of `{}` are: {}", sub.get_name(), names.join(", ")),
    };
    Error::config(file, key, format!("unknown key for `lalora {}`; {hint}", sub.get_name()))
}

/// The command-line tokens that set `arg` to `value`.
fn flag_args(arg: &Arg, value: &Value) -> std::result::Result<Vec<OsString>, String> {
    let long = format!("--{}", arg.get_long().ok_or("this argument has no --flag form")?);
    let with_value = |v: &str| OsString::from(format!("{long}={v}"));
    match (arg.get_action(), value) {
        (_, Value::Null) => Ok(vec![]),
        (_, Value::Object(_)) => Err("nested mappings are not supported: give the flag's value".into()),
        (ArgAction::SetTrue, Value::Bool(on)) | (ArgAction::SetFalse, Value::Bool(on)) => {
            let wanted = matches!(arg.get_action(), ArgAction::SetTrue) == *on;
            Ok(if wanted { vec![OsString::from(&long)] } else { vec![] })
        }
        (ArgAction::SetTrue | ArgAction::SetFalse, other) => Err(format!("this switch takes true or false, not {}", kind(other))),
        (ArgAction::Count, Value::Bool(on)) => Ok(if *on { vec![OsString::from(&long)] } else { vec![] }),
        (ArgAction::Count, Value::Number(n)) => {
            let times = n.as_u64().ok_or("this counter takes a non-negative integer")?;
            Ok((0..times).map(|_| OsString::from(&long)).collect())
        }
        (ArgAction::Set | ArgAction::Append, Value::Array(items)) => {
            let items = items.iter().map(scalar_text).collect::<std::result::Result<Vec<_>, _>>()?;
            if matches!(arg.get_action(), ArgAction::Append) {
                Ok(items.iter().map(|v| with_value(v)).collect())
            } else if let Some(delimiter) = arg.get_value_delimiter() {
                Ok(vec![with_value(&items.join(&delimiter.to_string()))])
            } else if takes_many(arg) {
                Ok(std::iter::once(OsString::from(&long)).chain(items.into_iter().map(OsString::from)).collect())
            } else {
                Err("this flag takes one value, not a list".into())
            }
        }
        (ArgAction::Set | ArgAction::Append, scalar) => Ok(vec![with_value(&scalar_text(scalar)?)]),
        (_, _) => Err("this flag cannot be set from a config file".into()),
    }
}

/// Whether `arg` holds several values (repeated, or several per occurrence).
fn takes_many(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append) || arg.get_num_args().is_some_and(|n| n.max_values() > 1)
}

/// The text of a string, number or boolean.
fn scalar_text(value: &Value) -> std::result::Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("expected a string, number or boolean, not {}", kind(other))),
    }
}

/// A JSON value's kind, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

    /// A stand-in for lalora's command line with every kind of flag.
    #[derive(Parser, Debug, PartialEq)]
    #[command(name = "lalora")]
    struct Cli {
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(Subcommand, Debug, PartialEq)]
    enum Cmd {
        Train {
            #[arg(long)]
            config: Vec<PathBuf>,
            #[arg(long)]
            model: String,
            #[arg(long, default_value_t = 1e-4)]
            lr: f64,
            #[arg(long, default_value_t = 128)]
            max_len: usize,
            #[arg(long)]
            rslora: bool,
            #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
            targets: Vec<String>,
            #[arg(long = "eval")]
            eval: Vec<PathBuf>,
            #[arg(short, long, action = ArgAction::Count)]
            verbose: u8,
            #[arg(long)]
            seed: Option<u64>,
            data: Option<PathBuf>,
        },
        Memory {
            #[arg(long)]
            rank: usize,
        },
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn scratch(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lalora-run-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn parse(args: &[&str]) -> Result<Cli> {
        let expanded = expand_config_args(&Cli::command(), os(args))?;
        Ok(Cli::try_parse_from(expanded).unwrap_or_else(|e| panic!("clap: {e}")))
    }

    /// The fields of a parsed `train`, in declaration order.
    type TrainFields = (String, f64, usize, bool, Vec<String>, Vec<PathBuf>, u8, Option<u64>);

    fn train(cli: Cli) -> TrainFields {
        match cli.command {
            Cmd::Train { model, lr, max_len, rslora, targets, eval, verbose, seed, .. } => {
                (model, lr, max_len, rslora, targets, eval, verbose, seed)
            }
            other => panic!("{other:?}"),
        }
    }

    const YAML: &str = "# a run\nmodel: meta-llama/Llama-3.2-1B\nlr: 5e-3\nmax_len: 256\nrslora: true\n\
                        targets: [q_proj, k_proj, v_proj]\neval: [a.jsonl, b.jsonl]\nverbose: 2\nseed: null\n";

    #[test]
    fn yaml_and_json_files_set_every_kind_of_flag() {
        let yaml = scratch("run.yaml", YAML);
        let (model, lr, max_len, rslora, targets, eval, verbose, seed) =
            train(parse(&["lalora", "train", "--config", yaml.to_str().unwrap()]).unwrap());
        assert_eq!((model.as_str(), lr, max_len, rslora, verbose, seed), ("meta-llama/Llama-3.2-1B", 5e-3, 256, true, 2, None));
        assert_eq!(targets, ["q_proj", "k_proj", "v_proj"]);
        assert_eq!(eval, [PathBuf::from("a.jsonl"), PathBuf::from("b.jsonl")]);

        let json = scratch("run.json", r#"{"model": "m", "max-len": 64, "rslora": false, "targets": "o_proj"}"#);
        let (model, lr, max_len, rslora, targets, ..) =
            train(parse(&["lalora", "train", &format!("--config={}", json.display())]).unwrap());
        assert_eq!((model.as_str(), lr, max_len, rslora), ("m", 1e-4, 64, false));
        assert_eq!(targets, ["o_proj"]);
    }

    #[test]
    fn command_line_flags_override_the_file_and_lists_are_replaced() {
        let yaml = scratch("override.yaml", YAML);
        let cli = parse(&["lalora", "train", "--lr", "0.1", "--config", yaml.to_str().unwrap(), "--targets=up_proj", "-v"]).unwrap();
        let (_, lr, max_len, _, targets, _, verbose, _) = train(cli);
        assert_eq!((lr, max_len, verbose), (0.1, 256, 1));
        assert_eq!(targets, ["up_proj"]);
        // A later file overrides an earlier one.
        let later = scratch("later.json", r#"{"max_len": 32}"#);
        let cli = parse(&["lalora", "train", "--config", yaml.to_str().unwrap(), "--config", later.to_str().unwrap()]).unwrap();
        assert_eq!(train(cli).2, 32);
    }

    #[test]
    fn the_resolved_config_reproduces_the_run() {
        let yaml = scratch("resolve.yaml", YAML);
        let args =
            expand_config_args(&Cli::command(), os(&["lalora", "train", "--config", yaml.to_str().unwrap(), "--lr", "0.25"])).unwrap();
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        let original = Cli::from_arg_matches(&matches).unwrap();
        let (name, sub_matches) = matches.subcommand().unwrap();
        let command = Cli::command();
        let resolved = resolved_config(command.find_subcommand(name).unwrap(), sub_matches);
        assert_eq!(resolved["lr"], "0.25");
        assert_eq!(resolved["max_len"], "256");
        assert_eq!(resolved["targets"], serde_json::json!(["q_proj", "k_proj", "v_proj"]));
        assert_eq!(resolved["rslora"], true);
        assert!(!resolved.contains_key("config") && !resolved.contains_key("seed"), "{resolved:?}");
        let written = scratch("resolved.json", &serde_json::to_string_pretty(&resolved).unwrap());
        let again = parse(&["lalora", "train", "--config", written.to_str().unwrap()]).unwrap();
        assert_eq!(
            again,
            Cli {
                command: match original.command {
                    Cmd::Train { config: _, model, lr, max_len, rslora, targets, eval, verbose, seed, data } =>
                        Cmd::Train { config: vec![written.clone()], model, lr, max_len, rslora, targets, eval, verbose, seed, data },
                    other => other,
                }
            }
        );
    }

    #[test]
    fn bad_files_name_the_file_and_the_key() {
        let err = |text: &str, name: &str| {
            let path = scratch(name, text);
            let e =
                expand_config_args(&Cli::command(), os(&["lalora", "train", "--config", path.to_str().unwrap()])).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
            e
        };
        let e = err("model: m\nlrr: 0.1\n", "typo.yaml");
        assert!(e.contains("`lrr`") && e.contains("did you mean `lr`?"), "{e}");
        let e = err("{\"zzz\": 1}", "unknown.json");
        assert!(e.contains("`zzz`") && e.contains("the keys of `train` are:") && e.contains("max_len"), "{e}");
        assert!(err("data: x.jsonl\n", "positional.yaml").contains("positional"));
        assert!(err("lr: [1, 2]\n", "list.yaml").contains("`lr`: this flag takes one value"));
        assert!(err("rslora: yes please\n", "switch.yaml").contains("`rslora`: this switch takes true or false"));
        assert!(err("model: {name: m}\n", "nested.yaml").contains("nested mappings"));
        assert!(err("config: other.yaml\n", "self.yaml").contains("cannot name another"));
        assert!(err("- lr\n- 1\n", "list_top.yaml").contains("top level must be a mapping"));
        assert!(err("model: [unclosed\n", "broken.yaml").contains("malformed YAML"));
        assert!(err("{\"lr\": }", "broken.json").contains("malformed JSON"));
        assert!(err("lr = 1\n", "run.toml").contains("unknown extension"));
        let missing = expand_config_args(&Cli::command(), os(&["lalora", "train", "--config", "/no/such/run.yaml"])).unwrap_err();
        assert!(missing.to_string().contains("/no/such/run.yaml"), "{missing}");
    }

    #[test]
    fn commands_without_a_config_flag_are_left_to_clap() {
        let args = os(&["lalora", "memory", "--rank", "4", "--config", "x.yaml"]);
        assert_eq!(expand_config_args(&Cli::command(), args.clone()).unwrap(), args);
        let clap_error = Cli::try_parse_from(args).unwrap_err().to_string();
        assert!(clap_error.contains("--config"), "{clap_error}");
        let plain = os(&["lalora", "train", "--model", "m"]);
        assert_eq!(expand_config_args(&Cli::command(), plain.clone()).unwrap(), plain);
    }

    #[test]
    fn values_that_look_like_flags_stay_values() {
        let path = scratch("negative.yaml", "model: \"-m\"\nlr: -0.5\n");
        let expanded = expand_config_args(&Cli::command(), os(&["lalora", "train", "--config", path.to_str().unwrap()])).unwrap();
        assert!(expanded.contains(&OsString::from("--lr=-0.5")), "{expanded:?}");
        let (model, lr, ..) = train(Cli::try_parse_from(expanded).unwrap());
        assert_eq!((model.as_str(), lr), ("-m", -0.5));
    }
}
