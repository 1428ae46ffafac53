//! Chat templates: conversations rendered the way transformers' `apply_chat_template` does,
//! with the Jinja template a model ships, through `minijinja` (as mistral.rs and TEI do).
//!
//! The environment follows transformers': `trim_blocks` and `lstrip_blocks`, loop controls,
//! Python string and dict methods (`.strip()`, `.startswith()`, `.items()`, ... from
//! `minijinja-contrib`'s pycompat), `raise_exception(msg)`, `strftime_now(fmt)`, a `tojson`
//! with Python's separators, and the variables `messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token` (and `pad_token`, `unk_token` when the config names them).
//! TRL's `{% generation %}` markers are accepted and render nothing.
//!
//! # Which tokens carry the loss
//! Only assistant turns. For assistant message i, the template renders the conversation up to
//! message i-1 with the generation prompt (`P_i`) and up to message i without it (`F_i`).
//! When `F_i` extends `P_i` and the whole conversation's rendering extends `F_i`, the text
//! `F_i[len(P_i)..]` at that place is the assistant's turn: its content and whatever the
//! template closes a turn with (Llama 3's `<|eot_id|>`), but not the role header, which
//! belongs to the generation prompt. A token carries the loss when its character span
//! overlaps a turn's span. A template that does not render conversations prefix by prefix
//! (one that rewrites earlier turns, say) is reported as such rather than guessed at.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use serde::Deserialize;

use crate::data::{ChatMessage, Sequence};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

const TEMPLATE_NAME: &str = "chat_template";

/// A model's chat template, compiled, with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    special_tokens: BTreeMap<String, String>,
    /// Where the template came from, for error messages.
    path: PathBuf,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChatTemplate({})", self.path.display())
    }
}

/// `tokenizer_config.json`, the keys a chat template needs.
#[derive(Deserialize)]
struct TokenizerConfig {
    chat_template: Option<TemplateField>,
    bos_token: Option<TokenField>,
    eos_token: Option<TokenField>,
    pad_token: Option<TokenField>,
    unk_token: Option<TokenField>,
}

/// A template string, or a list of named templates (the one named `default` is used).
#[derive(Deserialize)]
#[serde(untagged)]
enum TemplateField {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

/// A special token given as a string or as an `AddedToken` object.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenField {
    Text(String),
    Added { content: String },
}

impl TokenField {
    fn text(self) -> String {
        match self {
            TokenField::Text(s) | TokenField::Added { content: s } => s,
        }
    }
}

impl ChatTemplate {
    /// The chat template of a model directory, if it has one: `chat_template.jinja` (what
    /// newer transformers write), else the `chat_template` key of `tokenizer_config.json`.
    /// Special tokens come from `tokenizer_config.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config: Option<TokenizerConfig> = if config_path.is_file() { Some(crate::io::read_json(&config_path)?) } else { None };
        let jinja = dir.join("chat_template.jinja");
        let (source, path) = if jinja.is_file() {
            (std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?, jinja)
        } else {
            match config.as_ref().and_then(|c| c.chat_template.as_ref()) {
                Some(field) => (template_text(field, &config_path)?, config_path.clone()),
                None => return Ok(None),
            }
        };
        let mut special_tokens = BTreeMap::new();
        if let Some(config) = config {
            for (name, token) in [
                ("bos_token", config.bos_token),
                ("eos_token", config.eos_token),
                ("pad_token", config.pad_token),
                ("unk_token", config.unk_token),
            ] {
                if let Some(token) = token {
                    special_tokens.insert(name.to_string(), token.text());
                }
            }
        }
        Self::new(&source, special_tokens, path).map(Some)
    }

    /// Compiles `source`; `special_tokens` maps `bos_token`, `eos_token`, ... to their text.
    /// `path` names the template in errors.
    pub fn new(source: &str, special_tokens: BTreeMap<String, String>, path: PathBuf) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters are valid");
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, without_generation_tags(source))
            .map_err(|e| Error::config(&path, "chat_template", format!("not a valid Jinja template: {e:#}")))?;
        Ok(ChatTemplate { env, special_tokens, path })
    }

    /// The file the template came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A special token's text from `tokenizer_config.json` (`bos_token`, `eos_token`, ...):
    /// `generate --chat` stops at the `eos_token` (Llama 3 Instruct's `<|eot_id|>`).
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special_tokens.get(name).map(String::as_str)
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// next turn begins (what `generate --chat` feeds the model).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let map: BTreeMap<&str, Value> =
                    [("role", Value::from(m.role.as_str())), ("content", Value::from(m.content.as_str()))].into();
                Value::from(map)
            })
            .collect();
        let mut context: BTreeMap<String, Value> = self.special_tokens.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        context.insert("messages".into(), Value::from(messages));
        context.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        context.insert("tools".into(), Value::from(()));
        let template = self.env.get_template(TEMPLATE_NAME).expect("added in new");
        template.render(Value::from(context)).map_err(|e| {
            let reason = match e.kind() {
                ErrorKind::InvalidOperation => format!("the template refused the conversation: {}", e.detail().unwrap_or("")),
                _ => format!("rendering failed: {e:#}"),
            };
            Error::config(&self.path, "chat_template", reason)
        })
    }

    /// The rendered conversation and the byte ranges of its assistant turns (see the module
    /// docs for the method).
    pub fn assistant_spans(&self, messages: &[ChatMessage]) -> Result<(String, Vec<Range<usize>>)> {
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, message) in messages.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
            let prompt = self.render(&messages[..i], true)?;
            let with_turn = self.render(&messages[..=i], false)?;
            let not_prefix = |what: &str| {
                Error::config(
                    &self.path,
                    "chat_template",
                    format!(
                        "cannot find assistant turn {i} ({:?}...): {what}; the template does not render conversations \
                         prefix by prefix",
                        message.content.chars().take(20).collect::<String>()
                    ),
                )
            };
            if !with_turn.starts_with(&prompt) {
                return Err(not_prefix("the conversation up to it does not extend the generation prompt"));
            }
            if !full.starts_with(&with_turn) {
                return Err(not_prefix("the whole conversation does not extend the conversation up to it"));
            }
            if with_turn.len() > prompt.len() {
                spans.push(prompt.len()..with_turn.len());
            }
        }
        Ok((full, spans))
    }

    /// Tokenises a conversation for training: every token of the rendering (special tokens
    /// come from the template, none are added), with the loss on the assistant turns only.
    /// Errors name the template file when the conversation has no assistant turn.
    pub fn sequence(&self, tokenizer: &Tokenizer, messages: &[ChatMessage]) -> Result<Sequence> {
        let (text, spans) = self.assistant_spans(messages)?;
        let encoding = tokenizer
            .inner()
            .encode(text.as_str(), false)
            .map_err(|e| Error::Tokenizer { path: tokenizer.path().to_path_buf(), reason: e.to_string() })?;
        let ids = encoding.get_ids().to_vec();
        tokenizer.check_ids(&ids)?;
        let mask: Vec<bool> = encoding
            .get_offsets()
            .iter()
            .map(|&(start, end)| spans.iter().any(|s| start < s.end && s.start < end.max(start + 1)))
            .collect();
        let first_target = mask.iter().position(|&m| m).unwrap_or(ids.len());
        Ok(Sequence { ids, first_target, target_mask: Some(mask) })
    }

    /// Token ids of the conversation followed by the generation prompt, for `generate --chat`.
    pub fn prompt_ids(&self, tokenizer: &Tokenizer, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        tokenizer.encode_with(&self.render(messages, true)?, false)
    }
}

/// The template text of a `chat_template` field.
fn template_text(field: &TemplateField, path: &Path) -> Result<String> {
    match field {
        TemplateField::One(s) => Ok(s.clone()),
        TemplateField::Named(list) => list.iter().find(|t| t.name == "default").map(|t| t.template.clone()).ok_or_else(|| {
            let names: Vec<&str> = list.iter().map(|t| t.name.as_str()).collect();
            Error::config(path, "chat_template", format!("no template named `default` among [{}]", names.join(", ")))
        }),
    }
}

/// Replaces TRL's `{% generation %}` / `{% endgeneration %}` with `{% if true %}` /
/// `{% endif %}`, keeping the whitespace markers, so the text renders as in transformers.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = split_marker(inner, true);
        let (body, trail) = split_marker(body, false);
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => out.push_str(&format!("{{%{lead} {r} {trail}%}}")),
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Splits a leading (or trailing) whitespace-control marker `-` or `+` off a tag's inside.
fn split_marker(inner: &str, leading: bool) -> (&str, &str) {
    let has = |c: char| if leading { inner.starts_with(c) } else { inner.ends_with(c) };
    match ['-', '+'].into_iter().find(|&c| has(c)) {
        Some(_) if leading => (&inner[..1], &inner[1..]),
        Some(_) => (&inner[..inner.len() - 1], &inner[inner.len() - 1..]),
        None if leading => ("", inner),
        None => (inner, ""),
    }
}

/// `raise_exception(msg)`: templates reject conversations they cannot render with it.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `tojson(value, indent=None)` as transformers defines it: Python's `json.dumps` with
/// `ensure_ascii=False` (separators `", "` and `": "`, or `","` and `": "` with an indent).
fn tojson(value: Value, indent: Option<usize>, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent = match indent {
        Some(i) => Some(i),
        None => kwargs.get::<Option<usize>>("indent")?,
    };
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonJson { indent, level: 0, has_value: false });
    // Serialised from the template's value directly, so maps keep the template's key order.
    serde::Serialize::serialize(&value, &mut serializer).map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(String::from_utf8(out).expect("serde_json writes UTF-8")))
}

/// serde_json output in the layout of Python's `json.dumps`.
struct PythonJson {
    indent: Option<usize>,
    level: usize,
    has_value: bool,
}

impl PythonJson {
    fn newline<W: ?Sized + std::io::Write>(&self, writer: &mut W) -> std::io::Result<()> {
        if let Some(width) = self.indent {
            writer.write_all(b"\n")?;
            writer.write_all(" ".repeat(width * self.level).as_bytes())?;
        }
        Ok(())
    }
    fn separator<W: ?Sized + std::io::Write>(&self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if !first {
            writer.write_all(if self.indent.is_some() { b"," } else { b", " })?;
        }
        self.newline(writer)
    }
}

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.level += 1;
        self.has_value = false;
        writer.write_all(b"[")
    }
    fn end_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.level -= 1;
        if self.has_value {
            self.newline(writer)?;
        }
        self.has_value = true;
        writer.write_all(b"]")
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        self.separator(writer, first)
    }
    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, _writer: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.level += 1;
        self.has_value = false;
        writer.write_all(b"{")
    }
    fn end_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.level -= 1;
        if self.has_value {
            self.newline(writer)?;
        }
        self.has_value = true;
        writer.write_all(b"}")
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        self.separator(writer, first)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, _writer: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

/// `strftime_now(format)`: the current UTC date and time, for templates that print today's
/// date (Llama 3.2's system header). Supports `%d %m %y %Y %b %B %a %A %H %M %S %%`.
fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    strftime(seconds, &format).map(Value::from)
}

/// Formats `seconds` since the Unix epoch (UTC) with a strftime subset.
fn strftime(seconds: u64, format: &str) -> std::result::Result<String, minijinja::Error> {
    const MONTHS: [&str; 12] =
        ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let days = (seconds / 86_400) as i64;
    let secs = seconds % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('Y') => out.push_str(&year.to_string()),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('%') => out.push('%'),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported directive %{}", other.map(String::from).unwrap_or_default()),
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        let tokens = [("bos_token".to_string(), "<s>".to_string()), ("eos_token".to_string(), "</s>".to_string())].into();
        ChatTemplate::new(source, tokens, "test.jinja".into()).unwrap()
    }

    fn chat(turns: &[(&str, &str)]) -> Vec<ChatMessage> {
        turns.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()
    }

    const SIMPLE: &str = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}\
                          {{ m.content | trim }}{{ eos_token }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}|{% endfor %}\
                          {% if add_generation_prompt %}<assistant>{% endif %}";

    #[test]
    fn assistant_spans_cover_content_and_end_of_turn_only() {
        let t = template(SIMPLE);
        let messages = chat(&[("user", "hi"), ("assistant", " hello "), ("user", "2+2?"), ("assistant", "4")]);
        let (text, spans) = t.assistant_spans(&messages).unwrap();
        assert_eq!(text, "<s><user>hi|<assistant>hello</s>|<user>2+2?|<assistant>4</s>|");
        let pieces: Vec<&str> = spans.iter().map(|s| &text[s.clone()]).collect();
        // The separator after a turn is rendered with it, so it is part of the turn's span.
        assert_eq!(pieces, ["hello</s>|", "4</s>|"]);
        assert_eq!(t.render(&messages[..1], true).unwrap(), "<s><user>hi|<assistant>");
    }

    #[test]
    fn python_methods_raise_exception_and_tojson_work_like_transformers() {
        let t = template(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}\
                          {{ messages[0].content.strip().upper() }}|{{ messages[0].content.startswith(' a') }}|\
                          {{ {'a': [1, 'é'], 'b': none} | tojson }}|{{ [1, 2] | tojson(indent=2) }}",
        );
        assert_eq!(t.render(&chat(&[("user", " ab ")]), false).unwrap(), "AB|True|{\"a\": [1, \"é\"], \"b\": null}|[\n  1,\n  2\n]");
        let e = t.render(&chat(&[("system", "x")]), false).unwrap_err().to_string();
        assert!(e.contains("test.jinja") && e.contains("first must be user"), "{e}");
    }

    #[test]
    fn templates_that_rewrite_earlier_turns_are_reported() {
        // Drops earlier assistant turns when rendering later ones (as some reasoning templates do).
        let t = template(
            "{% for m in messages %}{% if m.role == 'user' or loop.last %}[{{ m.role }}]{{ m.content }}{% endif %}{% endfor %}\
                          {% if add_generation_prompt %}[assistant]{% endif %}",
        );
        let messages = chat(&[("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]);
        let e = t.assistant_spans(&messages).unwrap_err().to_string();
        assert!(e.contains("prefix by prefix") && e.contains("turn 1"), "{e}");
    }

    #[test]
    fn generation_tags_become_no_ops_with_their_whitespace_markers() {
        assert_eq!(without_generation_tags("a{%- generation -%}b{% endgeneration %}c"), "a{%- if true -%}b{% endif %}c");
        assert_eq!(without_generation_tags("{% if x %}{{ '%}' }}{% endif %}"), "{% if x %}{{ '%}' }}{% endif %}");
        assert!(ChatTemplate::new("{% if %}", BTreeMap::new(), "bad.json".into())
            .unwrap_err()
            .to_string()
            .contains("bad.json: field `chat_template`: not a valid Jinja template"));
    }

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-23 12:34:56 UTC, a Tuesday.
        assert_eq!(strftime(1_721_738_096, "%d %b %Y").unwrap(), "23 Jul 2024");
        assert_eq!(strftime(1_721_738_096, "%A %B %m/%d/%y %H:%M:%S %%").unwrap(), "Tuesday July 07/23/24 12:34:56 %");
        assert_eq!(strftime(951_782_400, "%Y-%m-%d %a").unwrap(), "2000-02-29 Tue");
        assert!(strftime(0, "%Q").is_err());
    }
}
