//! Hugging Face `config.json` for `deberta-v2` models: parsing into a validated
//! [`ModelConfig`] and writing one back.

use std::path::Path;

use deberta_core::config::{PosAttType, RawConfig};
use deberta_core::{Activation, ModelConfig};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};

/// A parsed `config.json`: the model configuration plus the keys that choose heads.
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfig {
    /// The validated model configuration.
    pub model: ModelConfig,
    /// `legacy` (HF `DebertaV2ForMaskedLM`: `cls.predictions` head when true, the default).
    pub legacy: bool,
}

/// Reads and validates `path` (a `config.json`).
pub fn read_config(path: &Path) -> Result<HfConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_config(path, &text)
}

fn int(path: &Path, obj: &Map<String, Value>, key: &str) -> Result<Option<i64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) => Ok(Some(v)),
            // Integral floats (e.g. 768.0) are what some exporters write.
            None => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
                _ => Err(Error::format(
                    path,
                    format!("`{key}` must be an integer, found {n}"),
                )),
            },
        },
        Some(other) => Err(Error::format(
            path,
            format!("`{key}` must be an integer, found {other}"),
        )),
    }
}

fn float(path: &Path, obj: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(Error::format(
            path,
            format!("`{key}` must be a number, found {other}"),
        )),
    }
}

fn boolean(path: &Path, obj: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(Error::format(
            path,
            format!("`{key}` must be true or false, found {other}"),
        )),
    }
}

fn activation(path: &Path, obj: &Map<String, Value>, key: &str) -> Result<Option<Activation>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) => Activation::from_hf_name(name)
            .map(Some)
            .map_err(|_| Error::format(path, format!("`{key}`: unknown activation \"{name}\""))),
        Some(other) => Err(Error::format(
            path,
            format!("`{key}` must be an activation name, found {other}"),
        )),
    }
}

/// `"a|b"` or `["a", "b"]` → the entries, lower-cased and trimmed (HF's parsing).
fn string_list(path: &Path, obj: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(
            s.split('|').map(|x| x.trim().to_lowercase()).collect(),
        )),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.trim().to_lowercase()),
                other => Err(Error::format(
                    path,
                    format!("`{key}` entries must be strings, found {other}"),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(other) => Err(Error::format(
            path,
            format!("`{key}` must be a string or a list, found {other}"),
        )),
    }
}

/// Parses the text of a `config.json`; `path` labels errors.
pub fn parse_config(path: &Path, text: &str) -> Result<HfConfig> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(Error::format(path, "expected a JSON object"));
    };
    if let Some(kind) = obj.get("model_type").and_then(Value::as_str)
        && kind != "deberta-v2"
    {
        return Err(Error::format(
            path,
            format!("model_type is \"{kind}\"; only \"deberta-v2\" (DeBERTa-v2/v3) is supported"),
        ));
    }
    let pos_att_type = match string_list(path, &obj, "pos_att_type")? {
        None => None,
        Some(entries) => {
            let mut parsed = PosAttType::default();
            for entry in entries.iter().filter(|e| !e.is_empty()) {
                parsed.add_entry(entry).map_err(|_| {
                    Error::format(
                        path,
                        format!("`pos_att_type`: unknown entry \"{entry}\" (expected c2p or p2c)"),
                    )
                })?;
            }
            Some(parsed)
        }
    };
    let norm_rel_ebd_layer_norm = string_list(path, &obj, "norm_rel_ebd")?
        .map(|entries| entries.iter().any(|e| e == "layer_norm"));
    let raw = RawConfig {
        vocab_size: int(path, &obj, "vocab_size")?,
        hidden_size: int(path, &obj, "hidden_size")?,
        num_hidden_layers: int(path, &obj, "num_hidden_layers")?,
        num_attention_heads: int(path, &obj, "num_attention_heads")?,
        attention_head_size: int(path, &obj, "attention_head_size")?,
        intermediate_size: int(path, &obj, "intermediate_size")?,
        hidden_act: activation(path, &obj, "hidden_act")?,
        hidden_dropout_prob: float(path, &obj, "hidden_dropout_prob")?,
        attention_probs_dropout_prob: float(path, &obj, "attention_probs_dropout_prob")?,
        max_position_embeddings: int(path, &obj, "max_position_embeddings")?,
        type_vocab_size: int(path, &obj, "type_vocab_size")?,
        initializer_range: float(path, &obj, "initializer_range")?,
        layer_norm_eps: float(path, &obj, "layer_norm_eps")?,
        relative_attention: boolean(path, &obj, "relative_attention")?,
        max_relative_positions: int(path, &obj, "max_relative_positions")?,
        position_buckets: int(path, &obj, "position_buckets")?,
        pad_token_id: int(path, &obj, "pad_token_id")?,
        position_biased_input: boolean(path, &obj, "position_biased_input")?,
        pos_att_type,
        share_att_key: boolean(path, &obj, "share_att_key")?,
        norm_rel_ebd_layer_norm,
        embedding_size: int(path, &obj, "embedding_size")?,
        conv_kernel_size: int(path, &obj, "conv_kernel_size")?,
        conv_groups: int(path, &obj, "conv_groups")?,
        conv_act: activation(path, &obj, "conv_act")?,
    };
    let model = ModelConfig::from_raw(&raw).map_err(|e| Error::format(path, e.to_string()))?;
    Ok(HfConfig {
        model,
        legacy: boolean(path, &obj, "legacy")?.unwrap_or(true),
    })
}

/// An `f32` setting as the shortest decimal that reads back as the same `f32` (`0.1`, not
/// `0.10000000149011612`), which is how Python writes the values these settings come from.
fn f32_json(value: f32) -> Value {
    format!("{value}")
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// The `config.json` object for a configuration, with exactly the keys transformers 5.x
/// `save_pretrained` writes for a `DebertaV2Config` (see `tests/fixtures/*/config.json`):
/// `embedding_size` only when it differs from `hidden_size`, `attention_head_size` only when it
/// differs from `hidden_size / num_attention_heads` (transformers reads both with those
/// defaults), the `conv_*` keys only with a ConvLayer, and no `transformers_version` (no
/// transformers wrote the file). `architectures` names the class the checkpoint is for;
/// `legacy` chooses the MLM head layout (`false`: `lm_predictions.lm_head.*`).
pub fn config_json(cfg: &ModelConfig, architecture: &str, legacy: bool) -> Value {
    let mut pos = Vec::new();
    if cfg.pos_att_type.p2c {
        pos.push("p2c");
    }
    if cfg.pos_att_type.c2p {
        pos.push("c2p");
    }
    let mut obj = json!({
        "architectures": [architecture],
        "model_type": "deberta-v2",
        "dtype": "float32",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": cfg.hidden_act.hf_name(),
        "hidden_dropout_prob": f32_json(cfg.hidden_dropout_prob),
        "attention_probs_dropout_prob": f32_json(cfg.attention_probs_dropout_prob),
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": f32_json(cfg.initializer_range),
        "layer_norm_eps": f32_json(cfg.layer_norm_eps),
        "relative_attention": cfg.relative_attention,
        "max_relative_positions": cfg.max_relative_positions,
        "position_buckets": if cfg.position_buckets > 0 { cfg.position_buckets as i64 } else { -1 },
        "pad_token_id": cfg.pad_token_id,
        "bos_token_id": null,
        "eos_token_id": null,
        "position_biased_input": cfg.position_biased_input,
        "pos_att_type": pos,
        "share_att_key": cfg.share_att_key,
        "norm_rel_ebd": if cfg.norm_rel_ebd_layer_norm { "layer_norm" } else { "none" },
        "pooler_dropout": 0.0,
        "pooler_hidden_act": "gelu",
        "pooler_hidden_size": cfg.hidden_size,
        "tie_word_embeddings": true,
        "legacy": legacy,
    });
    if let Value::Object(map) = &mut obj {
        if cfg.embedding_size != cfg.hidden_size {
            map.insert("embedding_size".into(), json!(cfg.embedding_size));
        }
        if cfg.num_attention_heads * cfg.attention_head_size != cfg.hidden_size {
            map.insert("attention_head_size".into(), json!(cfg.attention_head_size));
        }
        if let Some(conv) = cfg.conv {
            map.insert("conv_kernel_size".into(), json!(conv.kernel_size));
            map.insert("conv_groups".into(), json!(conv.groups));
            map.insert("conv_act".into(), json!(conv.activation.hf_name()));
        }
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HfConfig> {
        parse_config(Path::new("config.json"), text)
    }

    #[test]
    fn parses_v3_style_config() {
        let cfg = parse(
            r#"{"model_type":"deberta-v2","hidden_size":32,"num_attention_heads":4,"num_hidden_layers":2,
                "intermediate_size":64,"vocab_size":128,"relative_attention":true,"position_buckets":8,
                "max_relative_positions":16,"pos_att_type":["p2c","c2p"],"norm_rel_ebd":"layer_norm",
                "share_att_key":true,"position_biased_input":false,"legacy":false}"#,
        )
        .unwrap();
        assert!(cfg.model.pos_att_type.c2p && cfg.model.pos_att_type.p2c);
        assert!(cfg.model.norm_rel_ebd_layer_norm);
        assert!(!cfg.legacy);
        let back = config_json(&cfg.model, "DebertaV2Model", false);
        assert_eq!(parse(&back.to_string()).unwrap(), cfg);
    }

    #[test]
    fn bad_configs_name_the_key() {
        let cases = [
            (r#"{"hidden_act":"gelu_9000"}"#, "hidden_act"),
            (r#"{"hidden_size":"big"}"#, "hidden_size"),
            (
                r#"{"hidden_size":30,"num_attention_heads":4}"#,
                "num_attention_heads",
            ),
            (r#"{"pos_att_type":"c2p|p2p"}"#, "pos_att_type"),
            (r#"{"model_type":"bert"}"#, "model_type"),
            (r#"{"hidden_size": 32, "#, "invalid JSON"),
            (r#"[1, 2]"#, "JSON object"),
        ];
        for (text, needle) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
