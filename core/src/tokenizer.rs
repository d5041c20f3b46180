//! Text <-> token ids for a Hugging Face model folder.
//!
//! `tokenizer.json` is run by the `tokenizers` crate (the engine behind transformers' fast
//! tokenizers); the rest of the folder (`tokenizer_config.json`, `special_tokens_map.json`,
//! `chat_template.jinja`, ...) is read here the way transformers 5 reads it, because mlx-lm
//! loads tokenizers through transformers and mlx-lm is the reference.
use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::chat_template::{ChatTemplate, SpecialTokens};
use crate::detokenizer::StreamDecoder;
use crate::error::{Error, Result};

/// One chat turn as the chat template sees it (`message['role']`, `message['content']`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A loaded tokenizer. Immutable after loading, so one instance can serve many threads.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
    eos_ids: Vec<u32>,
    template: Option<ChatTemplate>,
    /// Ids of SentencePiece byte-fallback pieces (`<0x00>`..`<0xFF>`), when the decoder turns them
    /// back into bytes. The decoder joins a whole run of them before checking UTF-8, so the
    /// stream decoder must not cut a run in two.
    byte_fallback_ids: HashSet<u32>,
}

// `tokenizers::Tokenizer` and `minijinja::Environment` are both Send + Sync; keep it that way.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
};

/// Model types for which transformers 5 ignores a `LlamaTokenizer` class named in
/// `tokenizer_config.json` and runs `tokenizer.json` as written (transformers'
/// `MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS` plus the model types mapped to a generic backend).
const RAW_TOKENIZER_JSON_MODEL_TYPES: &[&str] = &[
    "EvollaModel", "arctic", "aria", "beam", "bigbird_pegasus", "camembertv2-base", "canary",
    "chatlm", "cohere_asr", "ernie4_5", "ernie4_5_moe", "flex_olmo", "fuyu", "glm", "glm4",
    "glm4_moe", "glm4_moe_lite", "glm4v", "glm4v_moe", "glm_image", "glmasr", "got_ocr2",
    "gpt_bigcode", "gradium_phonon_tts", "granite", "granitemoe", "granitemoehybrid",
    "granitemoeshared", "h2ovl_chat", "hyperclovax", "hyperclovax_vision_v2", "hyperclovax_vlm",
    "internlm2", "internlm3", "iquestcoder", "jamba", "kimi_k25", "kimi_linear", "kosmos-2", "llava",
    "llava_next", "mimo_v2_flash", "minicpm3", "minicpm_ocr", "minicpmv", "minicpmv4_6",
    "minicpmv4_7", "minimax_m2", "ministral", "ministral3", "mistral", "mistral3", "mistral_large4",
    "mixtral", "modernbert", "modernbert-decoder", "molmo", "molmo2", "nemo_speechlm", "nemotron",
    "nvfp4", "nystromformer", "olmo2", "olmo3", "olmo_hybrid", "opencua", "openvla",
    "paddleocr_vl", "pegasus_x", "persimmon", "phi3", "phi3_v", "phimoe", "pix2struct", "pixtral",
    "pocket_tts", "qwen2", "qwen3_5", "qwen3_5_moe", "qwen3_5_moe_text", "qwen4_exp", "siglip2",
    "smolvlm", "stablelm", "step3_vl", "umt5", "vipllava", "voxtral", "voxtral_realtime",
    "xlm-roberta-xl",
];

/// Reads an optional JSON file; bad JSON is `InvalidModel` naming the file, line and column.
fn read_json(path: &Path) -> Result<Option<Json>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        Error::invalid_model(format!(
            "{}: invalid JSON at line {} column {}: {e}",
            path.display(),
            e.line(),
            e.column()
        ))
    })
}

fn read_optional_text(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A special token as stored in tokenizer_config.json / special_tokens_map.json: a string, an
/// AddedToken object (`{"content": ...}`), or null.
fn token_string(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_owned),
        _ => None,
    }
}

/// Picks the chat template out of tokenizer_config.json's `chat_template`: a string, or a list of
/// `{name, template}` of which transformers uses "default".
fn template_from_config(v: &Json, file: &Path) -> Result<Option<String>> {
    match v {
        Json::Null => Ok(None),
        Json::String(s) => Ok(Some(s.clone())),
        Json::Array(items) => {
            for item in items {
                if item.get("name").and_then(Json::as_str) == Some("default") {
                    return match item.get("template") {
                        Some(Json::String(s)) => Ok(Some(s.clone())),
                        _ => Err(Error::invalid_model(format!(
                            "{}: chat_template entry \"default\" has no string \"template\"",
                            file.display()
                        ))),
                    };
                }
            }
            Ok(None)
        }
        _ => Err(Error::invalid_model(format!(
            "{}: chat_template must be a string or a list of {{name, template}}",
            file.display()
        ))),
    }
}

/// transformers 5 does not run a `LlamaTokenizer`'s tokenizer.json as written: it keeps the
/// vocab, merges, added tokens and post-processor but rebuilds the rest (`LlamaTokenizer.__init__`):
/// no normalizer, a Metaspace pre-tokenizer that adds "▁" to the first piece only
/// (`legacy: false`, the default) and a matching decoder. Old tokenizer.json files instead
/// prepend "▁" in the normalizer, which also puts one after every special token. Returns true
/// when it patched `json`.
fn apply_llama_rebuild(json: &mut Json, config: Option<&Json>, model_config: Option<&Json>) -> bool {
    let class = config.and_then(|c| c.get("tokenizer_class")).and_then(Json::as_str);
    let class = class
        .or_else(|| model_config.and_then(|c| c.get("tokenizer_class")).and_then(Json::as_str));
    let Some(class) = class else { return false };
    if class.trim_end_matches("Fast") != "LlamaTokenizer" {
        return false;
    }
    if let Some(mt) = model_config.and_then(|c| c.get("model_type")).and_then(Json::as_str) {
        if RAW_TOKENIZER_JSON_MODEL_TYPES.contains(&mt) {
            return false;
        }
    }
    // A Llama-3 style (byte-level) tokenizer.json keeps its own pipeline.
    let byte_level = |v: Option<&Json>| v.map(|v| v.to_string().contains("\"ByteLevel\"")).unwrap_or(false);
    if byte_level(json.get("pre_tokenizer")) || byte_level(json.get("decoder")) {
        return false;
    }
    if json.pointer("/model/type").and_then(Json::as_str) != Some("BPE") {
        return false;
    }
    let legacy = config.and_then(|c| c.get("legacy")).and_then(Json::as_bool).unwrap_or(false);
    let add_prefix_space =
        config.and_then(|c| c.get("add_prefix_space")).and_then(Json::as_bool).unwrap_or(true);
    let scheme = match (add_prefix_space, legacy) {
        (false, _) => "never",
        (true, true) => "always",
        (true, false) => "first",
    };
    let mut decoders = vec![
        serde_json::json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        serde_json::json!({"type": "ByteFallback"}),
        serde_json::json!({"type": "Fuse"}),
    ];
    if add_prefix_space {
        decoders.push(serde_json::json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let obj = json.as_object_mut().expect("checked above: tokenizer.json is an object");
    obj.insert("normalizer".into(), Json::Null);
    obj.insert(
        "pre_tokenizer".into(),
        serde_json::json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": scheme, "split": false}),
    );
    obj.insert("decoder".into(), serde_json::json!({"type": "Sequence", "decoders": decoders}));
    true
}

/// transformers 5 picks `Qwen2Tokenizer` for every folder whose config.json says
/// `model_type: "qwen2"`, whatever tokenizer_config.json names, and rebuilds the pipeline
/// (`Qwen2Tokenizer.__init__`): NFC normalizer, Qwen's split regex then byte-level
/// pre-tokenizer, byte-level decoder, and a plain BPE over the file's vocab and merges. The
/// file's added tokens and post-processor stay. For real Qwen tokenizers this changes
/// nothing; for another family's tokenizer.json paired with a qwen2 model it is what mlx-lm
/// (through transformers) runs, so cider does the same. Returns true when it patched `json`.
fn apply_qwen2_rebuild(json: &mut Json, model_config: Option<&Json>) -> bool {
    const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let mt = model_config.and_then(|c| c.get("model_type")).and_then(Json::as_str);
    if mt != Some("qwen2") || json.pointer("/model/type").and_then(Json::as_str) != Some("BPE") {
        return false;
    }
    let obj = json.as_object_mut().expect("checked by the caller: tokenizer.json is an object");
    obj.insert("normalizer".into(), serde_json::json!({"type": "NFC"}));
    obj.insert(
        "pre_tokenizer".into(),
        serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]}),
    );
    obj.insert(
        "decoder".into(),
        serde_json::json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
    );
    if let Some(model) = obj.get_mut("model").and_then(Json::as_object_mut) {
        model.insert("dropout".into(), Json::Null);
        model.insert("unk_token".into(), Json::Null);
        model.insert("continuing_subword_prefix".into(), Json::String(String::new()));
        model.insert("end_of_word_suffix".into(), Json::String(String::new()));
        model.insert("fuse_unk".into(), Json::Bool(false));
        model.insert("byte_fallback".into(), Json::Bool(false));
        model.insert("ignore_merges".into(), Json::Bool(false));
    }
    true
}

impl Tokenizer {
    /// Reads tokenizer.json (required), tokenizer_config.json, special_tokens_map.json and the
    /// chat template from `dir`.
    ///
    /// Chat template precedence follows transformers: `chat_template.jinja` wins over
    /// tokenizer_config.json's `chat_template` (a string, or a list of `{name, template}` of
    /// which "default" is taken); `chat_template.json` (`{"chat_template": ...}`, the legacy
    /// processor file) is the last resort.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let tok_path = dir.join("tokenizer.json");
        let tok_text = std::fs::read_to_string(&tok_path).map_err(|e| Error::io(&tok_path, e))?;
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json(&config_path)?;
        let stm_path = dir.join("special_tokens_map.json");
        let special_map = read_json(&stm_path)?;
        // config.json only decides whether transformers would rebuild a Llama tokenizer; the
        // model loader reports its problems, so a broken one is simply not consulted here.
        let model_config =
            std::fs::read_to_string(dir.join("config.json")).ok().and_then(|t| serde_json::from_str::<Json>(&t).ok());

        let mut tok_json: Json = serde_json::from_str(&tok_text).map_err(|e| {
            Error::tokenizer(format!(
                "{}: invalid JSON at line {} column {}: {e}",
                tok_path.display(),
                e.line(),
                e.column()
            ))
        })?;
        if !tok_json.is_object() {
            return Err(Error::tokenizer(format!("{}: expected a JSON object", tok_path.display())));
        }
        let patched = apply_qwen2_rebuild(&mut tok_json, model_config.as_ref())
            || apply_llama_rebuild(&mut tok_json, config.as_ref(), model_config.as_ref());
        let parsed = if patched {
            tok_json.to_string().parse::<tokenizers::Tokenizer>()
        } else {
            tok_text.parse::<tokenizers::Tokenizer>()
        };
        let inner = parsed.map_err(|e| Error::tokenizer(format!("{}: {e}", tok_path.display())))?;

        // Special tokens: tokenizer_config.json, overridden by special_tokens_map.json unless the
        // config carries `added_tokens_decoder` (transformers 5 then ignores the map).
        let mut special = SpecialTokens::default();
        let names = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];
        let config_has_decoder = config.as_ref().is_some_and(|c| c.get("added_tokens_decoder").is_some());
        for name in names {
            let mut value = config.as_ref().and_then(|c| c.get(name)).and_then(token_string);
            if !config_has_decoder {
                if let Some(v) = special_map.as_ref().and_then(|m| m.get(name)).and_then(token_string) {
                    value = Some(v);
                }
            }
            special.set(name, value);
        }

        // EOS ids: every EOS string either file names that the vocabulary knows.
        let mut eos_ids = Vec::new();
        let eos_sources = [config.as_ref(), special_map.as_ref()];
        for src in eos_sources.into_iter().flatten() {
            let candidates: Vec<String> = match src.get("eos_token") {
                Some(Json::Array(items)) => items.iter().filter_map(token_string).collect(),
                Some(v) => token_string(v).into_iter().collect(),
                None => vec![],
            };
            for s in candidates {
                if let Some(id) = inner.token_to_id(&s) {
                    if !eos_ids.contains(&id) {
                        eos_ids.push(id);
                    }
                }
            }
        }

        let jinja_path = dir.join("chat_template.jinja");
        let json_path = dir.join("chat_template.json");
        let mut template_src: Option<(String, String)> =
            read_optional_text(&jinja_path)?.map(|t| (t, jinja_path.display().to_string()));
        if template_src.is_none() {
            if let Some(v) = config.as_ref().and_then(|c| c.get("chat_template")) {
                template_src = template_from_config(v, &config_path)?
                    .map(|t| (t, format!("{} (chat_template)", config_path.display())));
            }
        }
        if template_src.is_none() {
            if let Some(v) = read_json(&json_path)? {
                match v.get("chat_template") {
                    Some(ct) => {
                        template_src = template_from_config(ct, &json_path)?
                            .map(|t| (t, format!("{} (chat_template)", json_path.display())));
                    }
                    None => {
                        return Err(Error::invalid_model(format!(
                            "{}: missing key \"chat_template\"",
                            json_path.display()
                        )))
                    }
                }
            }
        }
        let template = match template_src {
            Some((src, name)) => Some(ChatTemplate::new(src, name)?),
            None => None,
        };

        // Byte-fallback pieces only matter when the decoder turns them back into bytes.
        let mut byte_fallback_ids = HashSet::new();
        let decoder_json = tok_json.get("decoder").map(|d| d.to_string()).unwrap_or_default();
        if decoder_json.contains("\"ByteFallback\"") {
            for b in 0..=255u8 {
                if let Some(id) = inner.token_to_id(&format!("<0x{b:02X}>")) {
                    byte_fallback_ids.insert(id);
                }
            }
        }

        Ok(Tokenizer { inner, special, eos_ids, template, byte_fallback_ids })
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::tokenizer(format!("encoding {} bytes of text: {e}", text.len())))?;
        Ok(enc.get_ids().to_vec())
    }

    /// mlx-lm's rule for a plain prompt (`generate.stream_generate`): add the tokenizer's special
    /// tokens unless the text already starts with the BOS token string.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let add = match self.bos_token() {
            None => true,
            Some(bos) => !text.starts_with(bos),
        };
        self.encode(text, add)
    }

    /// Decodes with the tokenizer.json decoder. Ids the vocabulary does not know (a model's
    /// embedding is often padded past the vocabulary) are dropped, as in HF tokenizers.
    /// transformers' `clean_up_tokenization_spaces` is not applied; mlx-lm's streaming
    /// detokenizers, which produce generated text, do not apply it either.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::tokenizer(format!("decoding {} token ids: {e}", ids.len())))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.special.bos.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.special.eos.as_deref()
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// EOS ids named by tokenizer_config.json's `eos_token` (string or AddedToken object) and
    /// special_tokens_map.json. generation_config.json / config.json `eos_token_id` lists are
    /// the model loader's to add (mlx-lm merges them in the same way).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// Where the chat template came from (file, or file and key), if there is one.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.template.as_ref().map(|t| t.source_name())
    }

    /// Renders like transformers' `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)`. Note that mlx-lm also passes `enable_thinking=True` for
    /// vocabularies with `<think>` tokens; templates that test `enable_thinking is defined`
    /// treat True and undefined the same way, so that is not passed here.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let Some(t) = &self.template else {
            return Err(Error::tokenizer(
                "this tokenizer has no chat template (no chat_template.jinja, no \"chat_template\" in tokenizer_config.json, no chat_template.json)",
            ));
        };
        if messages.is_empty() {
            return Err(Error::invalid_arg("cannot apply a chat template to an empty conversation"));
        }
        t.render(messages, add_generation_prompt, &self.special)
    }

    /// Tokenizes a rendered template as mlx-lm does: no special tokens added again (the
    /// template writes BOS itself).
    pub fn encode_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }

    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    pub(crate) fn is_byte_fallback(&self, id: u32) -> bool {
        self.byte_fallback_ids.contains(&id)
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.special.bos)
            .field("eos_token_ids", &self.eos_ids)
            .field("chat_template", &self.chat_template_source())
            .finish()
    }
}
