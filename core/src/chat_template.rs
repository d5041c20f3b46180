//! Chat templates, rendered the way transformers renders them.
//!
//! transformers compiles a template with jinja2's `ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True, extensions=[loopcontrols, generation tracker])` and adds `raise_exception`,
//! `strftime_now`, `dict`, `namespace` and its own `tojson`. This module builds the same
//! environment on minijinja, with minijinja-contrib's pycompat layer for the Python methods that
//! templates call on strings, lists and dicts (`.strip()`, `.split()`, `.items()`, ...).
use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind as JErrorKind};

use crate::error::{Error, Result};
use crate::tokenizer::ChatMessage;

/// The named special tokens transformers passes to every template (`special_tokens_map`).
#[derive(Clone, Debug, Default)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
    pub sep: Option<String>,
    pub pad: Option<String>,
    pub cls: Option<String>,
    pub mask: Option<String>,
}

impl SpecialTokens {
    pub(crate) fn set(&mut self, name: &str, value: Option<String>) {
        let slot = match name {
            "bos_token" => &mut self.bos,
            "eos_token" => &mut self.eos,
            "unk_token" => &mut self.unk,
            "sep_token" => &mut self.sep,
            "pad_token" => &mut self.pad,
            "cls_token" => &mut self.cls,
            "mask_token" => &mut self.mask,
            _ => return,
        };
        *slot = value;
    }

    fn entries(&self) -> [(&'static str, &Option<String>); 7] {
        [
            ("bos_token", &self.bos),
            ("eos_token", &self.eos),
            ("unk_token", &self.unk),
            ("sep_token", &self.sep),
            ("pad_token", &self.pad),
            ("cls_token", &self.cls),
            ("mask_token", &self.mask),
        ]
    }
}

/// A compiled chat template. `Send + Sync`, so a shared tokenizer can render from any thread.
pub struct ChatTemplate {
    env: Environment<'static>,
    source_name: String,
}

const TEMPLATE_NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`; `source_name` (the file it came from) is used in error messages.
    pub fn new(source: String, source_name: String) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // jinja2's default; minijinja would otherwise pick HTML/JSON escaping from the name.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_function("dict", dict);
        let source = rewrite_generation_tags(&source);
        env.add_template_owned(TEMPLATE_NAME, source).map_err(|e| template_error(&source_name, &e))?;
        Ok(ChatTemplate { env, source_name })
    }

    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// Renders with the context transformers builds: `messages`, `tools=None`, `documents=None`,
    /// `add_generation_prompt`, and the special token strings that are set.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        special: &SpecialTokens,
    ) -> Result<String> {
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(|e| template_error(&self.source_name, &e))?;
        let mut ctx = std::collections::BTreeMap::<&str, Value>::new();
        ctx.insert("messages", Value::from_serialize(messages));
        ctx.insert("tools", Value::from(()));
        ctx.insert("documents", Value::from(()));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        for (name, value) in special.entries() {
            if let Some(v) = value {
                ctx.insert(name, Value::from(v.as_str()));
            }
        }
        tmpl.render(ctx).map_err(|e| template_error(&self.source_name, &e))
    }
}

/// Names the template source and line; a `raise_exception` message is passed on verbatim.
fn template_error(source_name: &str, e: &minijinja::Error) -> Error {
    let mut msg = String::new();
    if e.kind() == JErrorKind::SyntaxError {
        let _ = write!(msg, "chat template {source_name}: syntax error");
    } else {
        let _ = write!(msg, "chat template {source_name}: render error");
    }
    if let Some(line) = e.line() {
        let _ = write!(msg, " at line {line}");
    }
    let detail = e.detail().map(str::to_owned).unwrap_or_else(|| e.kind().to_string());
    let _ = write!(msg, ": {detail}");
    // Errors raised inside filters/functions come wrapped; keep the innermost cause's text.
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let _ = write!(msg, ": {inner}");
        src = inner.source();
    }
    Error::tokenizer(msg)
}

/// transformers' `{% generation %}...{% endgeneration %}` (assistant-token tracking) only
/// renders its body; an always-true `if` keeps the tag's whitespace control.
fn rewrite_generation_tags(source: &str) -> String {
    if !source.contains("generation") {
        return source.to_owned();
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let whole = &tag[..end + 2];
        let inner = &whole[2..whole.len() - 2];
        let (lead, inner) = match inner.strip_prefix(['-', '+']) {
            Some(i) => (&inner[..1], i),
            None => ("", inner),
        };
        let (inner, trail) = match inner.strip_suffix(['-', '+']) {
            Some(i) => (i, &inner[inner.len() - 1..]),
            None => (inner, ""),
        };
        match inner.trim() {
            "generation" => {
                let _ = write!(out, "{{%{lead} if true {trail}%}}");
            }
            "endgeneration" => {
                let _ = write!(out, "{{%{lead} endif {trail}%}}");
            }
            _ => out.push_str(whole),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `{{ value }}` writes what Python's `str()` would: lists and dicts as their repr
/// (`['a', 1]`, `{'k': None}`), floats as `repr(float)`. minijinja would write JSON-like text.
fn python_formatter(
    out: &mut minijinja::Output<'_>,
    state: &minijinja::State<'_, '_>,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Seq | ValueKind::Map => {
            let mut s = String::new();
            python_repr(&mut s, value)?;
            out.write_str(&s).map_err(|e| minijinja::Error::new(JErrorKind::WriteFailure, e.to_string()))
        }
        ValueKind::Number if !value.is_integer() => {
            let mut s = String::new();
            write_number(&mut s, value);
            out.write_str(&s).map_err(|e| minijinja::Error::new(JErrorKind::WriteFailure, e.to_string()))
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

fn python_repr(out: &mut String, v: &Value) -> std::result::Result<(), minijinja::Error> {
    match v.kind() {
        ValueKind::None | ValueKind::Undefined => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number => write_number(out, v),
        ValueKind::String => python_str_repr(out, v.as_str().unwrap_or_default()),
        ValueKind::Seq => {
            out.push('[');
            for (i, item) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(out, &item)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(out, &key)?;
                out.push_str(": ");
                python_repr(out, &v.get_item(&key)?)?;
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{v}");
        }
    }
    Ok(())
}

/// Python's `repr(str)`: single quotes unless the text has ' and no ".
fn python_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(JErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: local time, as `datetime.now().strftime(format)`.
fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    let now = chrono::Local::now();
    let mut out = String::new();
    write!(out, "{}", now.format(&format)).map_err(|_| {
        minijinja::Error::new(JErrorKind::InvalidOperation, format!("strftime_now: invalid format {format:?}"))
    })?;
    Ok(Value::from(out))
}

/// `dict(key=value, ...)`.
fn dict(kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let mut map = std::collections::BTreeMap::new();
    let keys: Vec<String> = kwargs.args().map(str::to_owned).collect();
    for k in keys {
        let v: Value = kwargs.get(&k)?;
        map.insert(k, v);
    }
    Ok(Value::from_iter(map))
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`. Unlike jinja2's and minijinja's own filter it does not HTML-escape.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.kind() {
            ValueKind::Number => Some(" ".repeat(i64::try_from(v.clone()).unwrap_or(0).max(0) as usize)),
            ValueKind::String => Some(v.as_str().unwrap_or_default().to_owned()),
            _ => return Err(minijinja::Error::new(JErrorKind::InvalidOperation, "tojson: indent must be an int or a string")),
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            if parts.len() != 2 {
                return Err(minijinja::Error::new(JErrorKind::InvalidOperation, "tojson: separators must be a pair"));
            }
            (parts[0].to_string(), parts[1].to_string())
        }
        _ if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        _ => (", ".to_owned(), ": ".to_owned()),
    };
    let opts = JsonOpts {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn write_json(out: &mut String, v: &Value, o: &JsonOpts, level: usize) -> std::result::Result<(), minijinja::Error> {
    match v.kind() {
        ValueKind::Undefined => {
            return Err(minijinja::Error::new(JErrorKind::UndefinedError, "tojson: Undefined is not JSON serializable"))
        }
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, v),
        ValueKind::String | ValueKind::Bytes => write_str(out, v.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, o, level, '[', ']', items.len(), |out, i| write_json(out, &items[i], o, level + 1))?;
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in v.try_iter()? {
                let val = v.get_item(&key)?;
                let key = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
                    ValueKind::None => "null".to_owned(),
                    ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_owned(),
                    ValueKind::Number => {
                        let mut s = String::new();
                        write_number(&mut s, &key);
                        s
                    }
                    _ => {
                        return Err(minijinja::Error::new(
                            JErrorKind::InvalidOperation,
                            format!("tojson: keys must be str, int, float, bool or None, not {}", key.kind()),
                        ))
                    }
                };
                entries.push((key, val));
            }
            if o.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, o, level, '{', '}', entries.len(), |out, i| {
                write_str(out, &entries[i].0, o.ensure_ascii);
                out.push_str(&o.key_sep);
                write_json(out, &entries[i].1, o, level + 1)
            })?;
        }
        _ => {
            return Err(minijinja::Error::new(
                JErrorKind::InvalidOperation,
                format!("tojson: object of kind {} is not JSON serializable", v.kind()),
            ))
        }
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    o: &JsonOpts,
    level: usize,
    open: char,
    close: char,
    n: usize,
    mut item: impl FnMut(&mut String, usize) -> std::result::Result<(), minijinja::Error>,
) -> std::result::Result<(), minijinja::Error> {
    out.push(open);
    if n == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..n {
        if i > 0 {
            out.push_str(&o.item_sep);
        }
        if let Some(ind) = &o.indent {
            out.push('\n');
            out.push_str(&ind.repeat(level + 1));
        }
        item(out, i)?;
    }
    if let Some(ind) = &o.indent {
        out.push('\n');
        out.push_str(&ind.repeat(level));
    }
    out.push(close);
    Ok(())
}

/// Numbers as Python's `json.dumps` writes them (`repr` for floats).
fn write_number(out: &mut String, v: &Value) {
    if v.is_integer() {
        let _ = write!(out, "{v}");
        return;
    }
    let Ok(f) = f64::try_from(v.clone()) else {
        let _ = write!(out, "{v}");
        return;
    };
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        out.push_str(&python_float_repr(f));
    }
}

/// Python's `repr(float)`: shortest round-trip digits, scientific notation when the exponent
/// is below -4 or at least 16.
fn python_float_repr(f: f64) -> String {
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    let sci = format!("{f:e}"); // e.g. "1.5e-7", "-1e16"
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("exponent is an integer");
    if !(-4..16).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

fn write_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str) -> Result<String> {
        let t = ChatTemplate::new(src.to_owned(), "test".into())?;
        let msgs = vec![ChatMessage::new("user", "hé \"x\"\n<b>")];
        t.render(&msgs, true, &SpecialTokens { bos: Some("<s>".into()), ..Default::default() })
    }

    #[test]
    fn tojson_matches_python() {
        assert_eq!(render("{{ messages[0] | tojson }}").unwrap(), r#"{"role": "user", "content": "hé \"x\"\n<b>"}"#);
        assert_eq!(
            render("{{ messages | tojson(indent=2) }}").unwrap(),
            "[\n  {\n    \"role\": \"user\",\n    \"content\": \"hé \\\"x\\\"\\n<b>\"\n  }\n]"
        );
        assert_eq!(render("{{ messages[0] | tojson(ensure_ascii=true, sort_keys=true) }}").unwrap(),
            r#"{"content": "h\u00e9 \"x\"\n<b>", "role": "user"}"#);
        assert_eq!(render("{{ [1, 2.5, 1e-7, 1e20, none, true] | tojson }}").unwrap(), "[1, 2.5, 1e-07, 1e+20, null, true]");
    }

    #[test]
    fn values_print_like_python() {
        assert_eq!(
            render("{{ none }}|{{ true }}|{{ [1, 'a', \"it's\"] }}|{{ {'k': none} }}|{{ 1e20 }}|{{ 0.5 }}").unwrap(),
            "None|True|[1, 'a', \"it's\"]|{'k': None}|1e+20|0.5"
        );
    }

    #[test]
    fn generation_tags_render_their_body() {
        assert_eq!(render("a{% generation %}b{% endgeneration %}c").unwrap(), "abc");
        assert_eq!(render("a\n{%- generation -%}\nb\n{%- endgeneration %}c").unwrap(), "abc");
    }

    #[test]
    fn raise_exception_names_the_message() {
        let e = render("{{ raise_exception('System role not supported') }}").unwrap_err();
        assert!(e.message.contains("System role not supported"), "{}", e.message);
        assert_eq!(e.kind, crate::error::ErrorKind::Tokenizer);
    }

    #[test]
    fn syntax_error_names_source_and_line() {
        let e = ChatTemplate::new("ok\n{% if %}".into(), "dir/chat_template.jinja".into()).err().unwrap();
        assert!(e.message.contains("dir/chat_template.jinja"), "{}", e.message);
        assert!(e.message.contains("line 2"), "{}", e.message);
    }

    #[test]
    fn python_methods_and_namespace() {
        let src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ m.content.strip().split('\\n')[0].upper() }}{% endfor %}{{ ns.n }}{{ bos_token }}{{ eos_token }}";
        assert_eq!(render(src).unwrap(), "HÉ \"X\"1<s>");
    }
}
