//! The model manager: one place that knows which models are on disk
//! (`Registry`, read from config.json and safetensors headers only), which are
//! loaded and what they cost (`Manager`, a memory budget with priority/LRU
//! eviction), which suits a task (`select`), and how each has been used
//! (`UsageStats`, persisted between runs). Every binding translates this.
//!
//! The registry file format is documented in `docs/registry.md`.
pub mod budget;
mod handle;
mod state;
#[allow(clippy::module_inception)]
mod manager;
mod meta;
mod registry;
mod scan;
mod select;
mod stats;
mod to_json;

pub use budget::{default_budget, format_bytes, parse_bytes, system_memory, DEFAULT_BUDGET_FRACTION};
pub use handle::ModelHandle;
pub use manager::{AcquireOptions, LoadReport, LoadedModel, Manager, ManagerConfig, MemoryReport, UnloadOutcome};
pub use meta::{ModelMeta, RegistryDefaults, RegistryFile};
pub use registry::{ModelEntry, QuantSummary, Registry, Skipped, Source};
pub use scan::{hf_hub_cache, inspect_model};
pub use select::{select, Candidate, SelectQuery, Selection};
pub use stats::{StatsStore, UsageStats};
pub use to_json::{
    all_stats_json, entries_json, entry_json, loaded_json, loaded_list_json, memory_json, report_json, reports_json,
    selection_json, stats_json,
};
