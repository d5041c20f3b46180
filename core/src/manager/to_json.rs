//! JSON views of registry entries, selections and loaded models, shared by
//! the CLI's `--format json` and the bindings so every host sees one shape.
use super::manager::{LoadReport, LoadedModel, MemoryReport};
use super::registry::{ModelEntry, Source};
use super::select::Selection;
use super::stats::UsageStats;
use serde_json::{json, Value};

/// `context` = tokens of KV cache in `estimate_bytes`.
pub fn entry_json(e: &ModelEntry, context: usize) -> Value {
    let source = match &e.source {
        Source::Folder => json!({"kind": "folder"}),
        Source::HfCache { repo, revision } => json!({"kind": "hf_cache", "repo": repo, "revision": revision}),
    };
    let quant = e.quantization.as_ref().map(|q| {
        let overrides: serde_json::Map<String, Value> = q
            .overrides
            .iter()
            .map(|(k, v)| {
                (k.clone(), v.map_or(Value::Bool(false), |p| json!({"bits": p.bits, "group_size": p.group_size})))
            })
            .collect();
        json!({"bits": q.bits, "group_size": q.group_size, "mixed": q.mixed, "overrides": overrides, "unquantized": q.unquantized})
    });
    json!({
        "name": e.name,
        "path": e.path.display().to_string(),
        "source": source,
        "model_type": e.model_type,
        "parameters": e.parameters,
        "quantization": quant,
        "dtype": e.dtype,
        "disk_bytes": e.disk_bytes,
        "weight_bytes": e.weight_bytes,
        "context_length": e.context_length,
        "kv_bytes_per_token": e.kv_bytes_per_token,
        "estimate_context": context,
        "estimate_bytes": e.estimate_bytes(context),
        "has_chat_template": e.has_chat_template,
        "aliases": e.meta.aliases,
        "priority": e.meta.priority,
        "tasks": e.meta.tasks,
        "scores": e.meta.scores,
        "pinned": e.meta.pinned,
        "keep_alive_s": e.meta.keep_alive.map(|d| d.as_secs_f64()),
        "description": e.meta.description,
    })
}

pub fn stats_json(s: &UsageStats) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

pub fn selection_json(s: &Selection) -> Value {
    json!({
        "chosen": s.chosen,
        "candidates": s.candidates.iter().map(|c| json!({
            "name": c.name,
            "eligible": c.eligible,
            "chosen": c.chosen,
            "reason": c.reason,
            "priority": c.priority,
            "score": c.score,
            "estimate_bytes": c.estimate_bytes,
        })).collect::<Vec<_>>(),
    })
}

pub fn loaded_json(l: &LoadedModel) -> Value {
    json!({
        "name": l.name,
        "path": l.path.display().to_string(),
        "charged_bytes": l.charged_bytes,
        "measured_bytes": l.measured_bytes,
        "estimate_bytes": l.estimate_bytes,
        "handles": l.handles,
        "in_use": l.in_use,
        "pinned": l.pinned,
        "priority": l.priority,
        "idle_seconds": l.idle_seconds,
        "unload_pending": l.unload_pending,
    })
}

pub fn report_json(r: &LoadReport) -> Value {
    json!({
        "name": r.name,
        "loaded_now": r.loaded_now,
        "fallback_from": r.fallback_from,
        "fallback_reason": r.fallback_reason,
        "estimate_bytes": r.estimate_bytes,
        "measured_bytes": r.measured_bytes,
        "estimate_error_bytes": r.estimate_error_bytes,
        "charged_bytes": r.charged_bytes,
        "evicted": r.evicted,
        "load_seconds": r.load_seconds,
    })
}

pub fn memory_json(m: &MemoryReport) -> Value {
    json!({
        "budget_bytes": m.budget_bytes,
        "accounted_bytes": m.accounted_bytes,
        "mlx_active_bytes": m.mlx_active_bytes,
        "mlx_peak_bytes": m.mlx_peak_bytes,
        "mlx_cache_bytes": m.mlx_cache_bytes,
    })
}

/// A JSON array of `entry_json` views.
pub fn entries_json(entries: &[ModelEntry], context: usize) -> Value {
    Value::Array(entries.iter().map(|e| entry_json(e, context)).collect())
}

pub fn loaded_list_json(loaded: &[LoadedModel]) -> Value {
    Value::Array(loaded.iter().map(loaded_json).collect())
}

pub fn reports_json(reports: &[LoadReport]) -> Value {
    Value::Array(reports.iter().map(report_json).collect())
}

/// {name: stats} for every model with statistics.
pub fn all_stats_json(all: &std::collections::BTreeMap<String, UsageStats>) -> Value {
    Value::Object(all.iter().map(|(k, s)| (k.clone(), stats_json(s))).collect())
}
