//! The model manager (`cider_core::manager`): a registry of model folders,
//! a memory budget with priority/LRU eviction, task-based selection and
//! usage statistics. Translation only; descriptions come back as the core's
//! JSON views, so C sees the same shapes as `cider models --format json` and
//! Python's `cider.Manager`.
use crate::handle::{self, borrow, require_out, write_out};
use crate::model::{cider_model, model_from_arc, path_from_bytes};
use crate::status::{boundary, boundary_value, cider_status, from_core, FfiResult, Failure, Stage};
use cider_core::manager::{
    self as mgr, AcquireOptions, Manager, ManagerConfig, ModelMeta, Registry, RegistryFile, SelectQuery,
    UnloadOutcome,
};
use std::ffi::c_char;
use std::fmt::Display;
use std::path::{Path, PathBuf};

/// Loads models on demand within a memory budget, evicting idle unpinned
/// models by (priority, least recently used), and chooses models for tasks.
/// The registry file format, name resolution and memory accounting are
/// described in docs/registry.md.
///
/// Made by `cider_manager_new`, released by `cider_manager_free`.
/// Thread-safe: any number of threads may call any `cider_manager_*`
/// function on one manager at once (acquiring, generating with and freeing
/// acquired models included). Only `cider_manager_free` must not race with
/// other calls on the same manager.
pub struct cider_manager {
    inner: Manager,
}

/// Options for `cider_manager_new`. Get the defaults from
/// `cider_manager_options_default()` (or zero the struct), then set fields.
/// Fields are only ever appended.
#[repr(C)]
pub struct cider_manager_options {
    /// Bytes of memory the manager may fill with loaded models (weights plus
    /// the KV reserve of `context_length`). 0 (the default): the registry
    /// file's "budget", else 70% of system memory, capped by MLX's memory
    /// limit.
    pub budget_bytes: u64,
    /// Usage statistics file (JSON, written atomically), NUL-terminated;
    /// need not be UTF-8. Read only during `cider_manager_new`. NULL (the
    /// default): the registry file's "stats", else statistics are kept in
    /// memory only.
    pub stats_path: *const c_char,
    /// Tokens of KV cache charged to the budget for each loaded model. 0 (the
    /// default): the registry file's `defaults.context_length`, else 0
    /// (weights only).
    pub context_length: usize,
}

/// What `cider_manager_unload` did.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum cider_unload_outcome {
    /// The model was idle and is unloaded.
    Unloaded = 0,
    /// The model is in use (an acquired `cider_model` or a session made from
    /// one is alive): it is unloaded when the last acquired `cider_model` of it
    /// is freed, or, if sessions outlive that, at the manager's next acquire
    /// or keep-alive check after they are freed.
    Deferred = 1,
    /// The model is registered but was not loaded.
    NotLoaded = 2,
}

/// The default manager options: the default budget, no statistics file,
/// weights-only accounting (unless the registry file says otherwise).
///
/// Thread-safe; cannot fail.
#[no_mangle]
pub extern "C" fn cider_manager_options_default() -> cider_manager_options {
    cider_manager_options { budget_bytes: 0, stats_path: std::ptr::null(), context_length: 0 }
}

fn manager_ref<'a>(mgr: *const cider_manager) -> FfiResult<&'a Manager> {
    // SAFETY: NULL or a live manager handle, which is thread-safe (header contract).
    unsafe { borrow(mgr, "manager") }.map(|m| &m.inner)
}

fn name_arg<'a>(name: *const c_char, param: &str) -> FfiResult<&'a str> {
    // SAFETY: NULL or a NUL-terminated string that lives for the call (header contract).
    unsafe { handle::c_str(name, param) }
}

fn path_arg<'a>(path: *const c_char, param: &str) -> FfiResult<&'a Path> {
    // SAFETY: as `name_arg`; paths need not be UTF-8.
    unsafe { handle::c_bytes(path, param) }.map(path_from_bytes)
}

fn core<T>(r: cider_core::Result<T>) -> FfiResult<T> {
    // Tokenizer errors here come from loading a model folder.
    r.map_err(|e| from_core(e, Stage::Load))
}

/// Writes `json` as a malloc'd string to a checked, non-NULL `out`.
fn write_json(out: *mut *mut c_char, json: impl Display) -> FfiResult<()> {
    let p = handle::malloc_str(json.to_string().as_bytes())?;
    // SAFETY: `out` was checked non-NULL by the caller and is writable.
    unsafe { write_out(out, p) };
    Ok(())
}

/// Makes a manager over the registry file at `registry_path` (JSON, see
/// docs/registry.md): the folders it names are scanned and its metadata
/// applied now, reading only config.json and safetensors headers. No model
/// is loaded.
///
/// - `registry_path`: NUL-terminated; need not be UTF-8. NULL for an empty
///   registry (add models with `cider_manager_register` / `cider_manager_scan`).
/// - `options`: NULL for the defaults (`cider_manager_options_default()`).
/// - `out`: must not be NULL; on success receives a new manager owned by the
///   caller, to be released with `cider_manager_free`. Untouched on failure.
///
/// Thread-safe. Returns `CIDER_STATUS_OK`; `CIDER_STATUS_INVALID_ARGUMENT`
/// (`out` NULL; a registry file error: bad JSON with line and column, a
/// wrong or unknown key, named with its key path); `CIDER_STATUS_NOT_FOUND`
/// (no registry file, a scan folder or model named by it missing);
/// `CIDER_STATUS_INVALID_MODEL` / `CIDER_STATUS_UNSUPPORTED` (a model folder
/// named by the file cannot be described; a corrupt statistics file is
/// `CIDER_STATUS_INVALID_ARGUMENT`); `CIDER_STATUS_BACKEND` (I/O errors).
#[no_mangle]
pub extern "C" fn cider_manager_new(
    registry_path: *const c_char,
    options: *const cider_manager_options,
    out: *mut *mut cider_manager,
) -> cider_status {
    boundary("cider_manager_new", || {
        require_out(out, "out")?;
        let registry = if registry_path.is_null() { None } else { Some(path_arg(registry_path, "registry_path")?) };
        let mut config = ManagerConfig::default();
        // SAFETY: `options` is NULL or points to a cider_manager_options (header contract).
        if let Some(o) = unsafe { options.as_ref() } {
            config.budget_bytes = (o.budget_bytes > 0).then_some(o.budget_bytes);
            if !o.stats_path.is_null() {
                config.stats_path = Some(PathBuf::from(path_arg(o.stats_path, "options->stats_path")?));
            }
            config.context_length = (o.context_length > 0).then_some(o.context_length);
        }
        let registry = match registry {
            Some(p) => core(Registry::open(p))?,
            None => Registry::new(),
        };
        let inner = core(Manager::new(registry, config))?;
        // SAFETY: `out` is non-NULL (checked above) and writable.
        unsafe { write_out(out, handle::into_raw(cider_manager { inner })) };
        Ok(())
    })
}

/// Releases a manager. NULL is a no-op. Models acquired from it stay usable:
/// each keeps the manager's state alive until it is freed. Once nothing
/// acquired is left, every loaded model is unloaded and the statistics are
/// saved (to the statistics file, if any). No other thread may be using this
/// handle when it is freed.
#[no_mangle]
pub extern "C" fn cider_manager_free(manager: *mut cider_manager) {
    boundary_value("cider_manager_free", (), || {
        // Not under the MLX lock: the manager takes it itself to free models.
        // SAFETY: NULL or a handle from cider_manager_new not yet freed (header contract).
        unsafe { handle::free_raw(manager) }
    })
}

/// Registers the model folder `path` under `name` (replacing a model of that
/// name), reading its config.json and safetensors headers. Does not load it.
///
/// - `manager`, `name` (UTF-8), `path` (need not be UTF-8): must not be NULL.
/// - `metadata_json`: NULL for the defaults, or a JSON object with the keys
///   of a registry file's `models.<name>` entry except `path` (docs/registry.md):
///   `aliases` (list of strings), `priority` (integer >= 0, 0 = most
///   important; default 10), `tasks` (list of strings), `scores` (object of
///   numbers), `pinned` (bool), `keep_alive_s` (seconds; 0 = stay until
///   evicted), `description` (string). Unknown keys are errors.
///
/// Thread-safe. Returns `CIDER_STATUS_OK`; `CIDER_STATUS_INVALID_ARGUMENT`
/// (a NULL argument, bad metadata named by key, a name or alias already used
/// by another model); `CIDER_STATUS_NOT_FOUND` (no such folder or
/// config.json); `CIDER_STATUS_INVALID_MODEL` / `CIDER_STATUS_UNSUPPORTED`
/// (the folder cannot be described); `CIDER_STATUS_BACKEND`.
#[no_mangle]
pub extern "C" fn cider_manager_register(
    manager: *const cider_manager,
    name: *const c_char,
    path: *const c_char,
    metadata_json: *const c_char,
) -> cider_status {
    boundary("cider_manager_register", || {
        let m = manager_ref(manager)?;
        let name = name_arg(name, "name")?;
        let path = path_arg(path, "path")?;
        let meta = if metadata_json.is_null() {
            ModelMeta::default()
        } else {
            parse_meta(name, name_arg(metadata_json, "metadata_json")?)?
        };
        core(m.register(name, path, meta)).map(drop)
    })
}

/// Metadata in the registry file's per-model format, read by the registry
/// file's own parser so the keys, defaults and messages are the same.
fn parse_meta(name: &str, text: &str) -> FfiResult<ModelMeta> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Failure::invalid_arg(format!("`metadata_json` is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(Failure::invalid_arg(format!("`metadata_json` should be a JSON object, found {v}")));
    }
    if v.get("path").is_some() {
        return Err(Failure::invalid_arg("`metadata_json` may not have a \"path\" key (pass the folder as `path`)"));
    }
    let doc = serde_json::json!({ "models": { name: v } });
    let rf = core(RegistryFile::parse(Path::new("metadata_json"), &doc))?;
    Ok(rf.models.into_iter().next().map(|s| s.meta).unwrap_or_default())
}

/// Registers every model folder under `dir`: `dir` itself if it holds
/// config.json (named by the folder's name), else `dir/name` and
/// `dir/org/name` (named `name` and `org/name`). Folders already registered
/// (by path) are kept as they are; a name already taken, or a folder that
/// cannot be described, is skipped. New models take the registry file's
/// `defaults`. No model is loaded.
///
/// - `manager`, `dir` (need not be UTF-8): must not be NULL.
/// - `out_added`: may be NULL; on success receives how many models were added.
///
/// Thread-safe. Returns `CIDER_STATUS_OK`; `CIDER_STATUS_INVALID_ARGUMENT`
/// (a NULL argument); `CIDER_STATUS_NOT_FOUND` (no such folder);
/// `CIDER_STATUS_BACKEND` (I/O errors).
#[no_mangle]
pub extern "C" fn cider_manager_scan(
    manager: *const cider_manager,
    dir: *const c_char,
    out_added: *mut usize,
) -> cider_status {
    boundary("cider_manager_scan", || {
        let m = manager_ref(manager)?;
        let dir = path_arg(dir, "dir")?;
        let n = core(m.scan_dir(dir))?;
        // SAFETY: NULL (skipped) or writable (header contract).
        unsafe { write_out(out_added, n) };
        Ok(())
    })
}

/// Registers the models in the Hugging Face hub cache (`$HF_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), named by repo id
/// (`org/name`). A missing cache adds nothing.
///
/// - `manager`: must not be NULL.
/// - `out_added`: may be NULL; on success receives how many models were added.
///
/// Thread-safe. Returns `CIDER_STATUS_OK` or `CIDER_STATUS_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn cider_manager_scan_hf_cache(manager: *const cider_manager, out_added: *mut usize) -> cider_status {
    boundary("cider_manager_scan_hf_cache", || {
        let m = manager_ref(manager)?;
        let n = m.scan_hf_cache();
        // SAFETY: NULL (skipped) or writable (header contract).
        unsafe { write_out(out_added, n) };
        Ok(())
    })
}

/// The loaded model `name` (a name, an alias, or a model folder path, which
/// is registered on the fly), loading it first if needed. To make room, idle
/// unpinned models are unloaded, least important (largest priority number)
/// first, then least recently used.
///
/// - `manager`, `name` (UTF-8): must not be NULL.
/// - `allow_fallback`: when `name` cannot fit, take instead the best smaller
///   model that shares one of its task tags (ranked as `cider_manager_select`
///   ranks) rather than failing. `cider_manager_loaded_json` shows which.
/// - `out`: must not be NULL; on success receives a model owned by the
///   caller, used like one from `cider_model_load` and released with
///   `cider_model_free`. Untouched on failure. While it, or a session made
///   from it, is alive, the model is in use: never evicted, and an unload is
///   deferred until the last of them is freed. Several acquires of one model
///   share its weights. It may outlive the manager.
///
/// Thread-safe; a load blocks other threads' loads and generation steps
/// while it reads weights.
///
/// Returns `CIDER_STATUS_OK`; `CIDER_STATUS_INVALID_ARGUMENT` (a NULL
/// argument, text that is not UTF-8); `CIDER_STATUS_NOT_FOUND` (no model of
/// that name, alias or path; the message lists the known names);
/// `CIDER_STATUS_OUT_OF_MEMORY` (the model needs more than the whole budget,
/// or pinned and in-use models hold the room and no fallback fits; the
/// message gives the bytes needed, the budget and what is loaded);
/// `CIDER_STATUS_INVALID_MODEL`; `CIDER_STATUS_UNSUPPORTED`;
/// `CIDER_STATUS_BACKEND` (as `cider_model_load`).
#[no_mangle]
pub extern "C" fn cider_manager_acquire(
    manager: *const cider_manager,
    name: *const c_char,
    allow_fallback: bool,
    out: *mut *mut cider_model,
) -> cider_status {
    boundary("cider_manager_acquire", || {
        let m = manager_ref(manager)?;
        let name = name_arg(name, "name")?;
        require_out(out, "out")?;
        let h = core(m.acquire_with(name, &AcquireOptions { allow_fallback, ..Default::default() }))?;
        let mut model = model_from_arc(h.model().clone());
        model.lease = Some(h);
        // SAFETY: `out` is non-NULL (checked above) and writable.
        unsafe { write_out(out, handle::into_raw(model)) };
        Ok(())
    })
}

/// Loads models in order without keeping them in use (later ones may evict
/// earlier ones), stopping at the first failure.
///
/// - `manager`: must not be NULL.
/// - `names`: `n_names` NUL-terminated UTF-8 names, aliases or paths; may be
///   NULL when `n_names` is 0. No element may be NULL.
/// - `out_json`: may be NULL; on success receives a JSON array with one load
///   report per model (`name`, `loaded_now`, `fallback_from`,
///   `estimate_bytes`, `measured_bytes`, `estimate_error_bytes`,
///   `charged_bytes`, `evicted`, `load_seconds`), to be released with
///   `cider_string_free`.
///
/// Thread-safe. Returns the statuses of `cider_manager_acquire`.
#[no_mangle]
pub extern "C" fn cider_manager_preload(
    manager: *const cider_manager,
    names: *const *const c_char,
    n_names: usize,
    out_json: *mut *mut c_char,
) -> cider_status {
    boundary("cider_manager_preload", || {
        let m = manager_ref(manager)?;
        // SAFETY: `names` holds `n_names` pointers when n_names > 0 (header contract).
        let ptrs = unsafe { handle::slice(names, n_names, "names") }?;
        let names: Vec<&str> =
            ptrs.iter().enumerate().map(|(i, &p)| name_arg(p, &format!("names[{i}]"))).collect::<FfiResult<_>>()?;
        let reports = core(m.preload(&names))?;
        if !out_json.is_null() {
            write_json(out_json, mgr::reports_json(&reports))?;
        }
        Ok(())
    })
}

/// Marks a model never to be evicted while loaded (pinning does not load it).
///
/// - `manager`, `name` (UTF-8 name, alias or path): must not be NULL.
///
/// Thread-safe. Returns `CIDER_STATUS_OK`; `CIDER_STATUS_INVALID_ARGUMENT`;
/// `CIDER_STATUS_NOT_FOUND` (no such model).
#[no_mangle]
pub extern "C" fn cider_manager_pin(manager: *const cider_manager, name: *const c_char) -> cider_status {
    boundary("cider_manager_pin", || {
        let m = manager_ref(manager)?;
        core(m.pin(name_arg(name, "name")?))
    })
}

/// Makes a pinned model evictable again. As `cider_manager_pin`.
#[no_mangle]
pub extern "C" fn cider_manager_unpin(manager: *const cider_manager, name: *const c_char) -> cider_status {
    boundary("cider_manager_unpin", || {
        let m = manager_ref(manager)?;
        core(m.unpin(name_arg(name, "name")?))
    })
}

/// Unloads a model now if it is idle, else once it is let go of (see
/// `CIDER_UNLOAD_OUTCOME_DEFERRED`). Pinned models are unloaded too.
///
/// - `manager`, `name` (UTF-8 name, alias or path): must not be NULL.
/// - `out`: may be NULL; on success receives what happened.
///
/// Thread-safe. Returns `CIDER_STATUS_OK`; `CIDER_STATUS_INVALID_ARGUMENT`;
/// `CIDER_STATUS_NOT_FOUND` (no such model).
#[no_mangle]
pub extern "C" fn cider_manager_unload(
    manager: *const cider_manager,
    name: *const c_char,
    out: *mut cider_unload_outcome,
) -> cider_status {
    boundary("cider_manager_unload", || {
        let m = manager_ref(manager)?;
        let outcome = match core(m.unload(name_arg(name, "name")?))? {
            UnloadOutcome::Unloaded => cider_unload_outcome::Unloaded,
            UnloadOutcome::Deferred => cider_unload_outcome::Deferred,
            UnloadOutcome::NotLoaded => cider_unload_outcome::NotLoaded,
        };
        // SAFETY: NULL (skipped) or writable (header contract).
        unsafe { write_out(out, outcome) };
        Ok(())
    })
}

/// Chooses the best registered model for a task without loading anything:
/// models with the task tag whose estimate fits `max_memory`, ranked by
/// priority (smallest first), then "quality" score (highest first), then
/// estimate (smallest first), then name.
///
/// - `manager`: must not be NULL.
/// - `task`: the required task tag (UTF-8); NULL for any model.
/// - `max_memory`: the largest acceptable estimate in bytes (weights only);
///   0 for the manager's budget.
/// - `out_json`: must not be NULL; on success receives
///   `{"chosen": name or null, "candidates": [{"name", "eligible", "chosen",
///   "reason", "priority", "score", "estimate_bytes"}, ...]}` (eligible
///   candidates in rank order, then the skipped ones, each with the reason),
///   to be released with `cider_string_free`. Untouched on failure.
///
/// Thread-safe. Returns `CIDER_STATUS_OK`; `CIDER_STATUS_INVALID_ARGUMENT`;
/// `CIDER_STATUS_OUT_OF_MEMORY` (the string could not be allocated).
#[no_mangle]
pub extern "C" fn cider_manager_select(
    manager: *const cider_manager,
    task: *const c_char,
    max_memory: u64,
    out_json: *mut *mut c_char,
) -> cider_status {
    boundary("cider_manager_select", || {
        let m = manager_ref(manager)?;
        let task = if task.is_null() { None } else { Some(name_arg(task, "task")?.to_string()) };
        require_out(out_json, "out_json")?;
        let q = SelectQuery { task, max_memory: (max_memory > 0).then_some(max_memory), ..Default::default() };
        write_json(out_json, mgr::selection_json(&m.select(&q)))
    })
}

/// The registered models (nothing is loaded) as a JSON array of objects:
/// `name`, `path`, `model_type`, `parameters`, `quantization`, `dtype`,
/// `disk_bytes`, `weight_bytes`, `context_length`, `kv_bytes_per_token`,
/// `estimate_bytes`, `has_chat_template`, `aliases`, `priority`, `tasks`,
/// `scores`, `pinned`, `keep_alive_s`, `description`, ...
///
/// - `manager`, `out_json`: must not be NULL. On success `*out_json`
///   receives the string, to be released with `cider_string_free`.
///
/// Thread-safe. Returns `CIDER_STATUS_OK`; `CIDER_STATUS_INVALID_ARGUMENT`;
/// `CIDER_STATUS_OUT_OF_MEMORY`.
#[no_mangle]
pub extern "C" fn cider_manager_list_json(manager: *const cider_manager, out_json: *mut *mut c_char) -> cider_status {
    boundary("cider_manager_list_json", || {
        let m = manager_ref(manager)?;
        require_out(out_json, "out_json")?;
        write_json(out_json, mgr::entries_json(&m.entries(), 0))
    })
}

/// One registered model, as an object of `cider_manager_list_json`.
///
/// - `manager`, `name` (UTF-8 name, alias or path), `out_json`: must not be
///   NULL. On success `*out_json` receives the string, to be released with
///   `cider_string_free`.
///
/// Thread-safe. Returns `CIDER_STATUS_OK`; `CIDER_STATUS_INVALID_ARGUMENT`;
/// `CIDER_STATUS_NOT_FOUND`; `CIDER_STATUS_OUT_OF_MEMORY`.
#[no_mangle]
pub extern "C" fn cider_manager_info_json(
    manager: *const cider_manager,
    name: *const c_char,
    out_json: *mut *mut c_char,
) -> cider_status {
    boundary("cider_manager_info_json", || {
        let m = manager_ref(manager)?;
        let name = name_arg(name, "name")?;
        require_out(out_json, "out_json")?;
        let e = core(m.entry(name))?;
        write_json(out_json, mgr::entry_json(&e, 0))
    })
}

/// The loaded models, sorted by name, as a JSON array of objects: `name`,
/// `path`, `charged_bytes` (what the budget is charged), `measured_bytes`
/// (MLX memory the load added), `estimate_bytes`, `handles` (live acquired
/// models), `in_use`, `pinned`, `priority`, `idle_seconds`, `unload_pending`.
///
/// - `manager`, `out_json`: must not be NULL. On success `*out_json`
///   receives the string, to be released with `cider_string_free`.
///
/// Thread-safe (a snapshot). Returns `CIDER_STATUS_OK`;
/// `CIDER_STATUS_INVALID_ARGUMENT`; `CIDER_STATUS_OUT_OF_MEMORY`.
#[no_mangle]
pub extern "C" fn cider_manager_loaded_json(manager: *const cider_manager, out_json: *mut *mut c_char) -> cider_status {
    boundary("cider_manager_loaded_json", || {
        let m = manager_ref(manager)?;
        require_out(out_json, "out_json")?;
        write_json(out_json, mgr::loaded_list_json(&m.loaded()))
    })
}

/// Memory, in bytes, as a JSON object: `budget_bytes`, `accounted_bytes`
/// (charged for loaded models and loads in flight), `mlx_active_bytes`,
/// `mlx_peak_bytes`, `mlx_cache_bytes` (MLX's own counters, process-wide).
///
/// - `manager`, `out_json`: must not be NULL. On success `*out_json`
///   receives the string, to be released with `cider_string_free`.
///
/// Thread-safe. Returns `CIDER_STATUS_OK`; `CIDER_STATUS_INVALID_ARGUMENT`;
/// `CIDER_STATUS_OUT_OF_MEMORY`.
#[no_mangle]
pub extern "C" fn cider_manager_memory_json(manager: *const cider_manager, out_json: *mut *mut c_char) -> cider_status {
    boundary("cider_manager_memory_json", || {
        let m = manager_ref(manager)?;
        require_out(out_json, "out_json")?;
        write_json(out_json, mgr::memory_json(&m.memory()))
    })
}

/// Usage statistics (the format of the statistics file's per-model entries,
/// docs/registry.md): `loads`, `unloads`, `acquires`, `last_used_unix`,
/// `last_load_seconds`, `measured_bytes`, `estimate_error_bytes`, ...
///
/// - `manager`, `out_json`: must not be NULL.
/// - `name`: a UTF-8 name, alias or path for that model's statistics (an
///   object); NULL for `{name: statistics}` of every model that has any.
/// - On success `*out_json` receives the string, to be released with
///   `cider_string_free`.
///
/// Thread-safe. Returns `CIDER_STATUS_OK`; `CIDER_STATUS_INVALID_ARGUMENT`;
/// `CIDER_STATUS_NOT_FOUND` (no such model); `CIDER_STATUS_OUT_OF_MEMORY`.
#[no_mangle]
pub extern "C" fn cider_manager_stats_json(
    manager: *const cider_manager,
    name: *const c_char,
    out_json: *mut *mut c_char,
) -> cider_status {
    boundary("cider_manager_stats_json", || {
        let m = manager_ref(manager)?;
        let name = if name.is_null() { None } else { Some(name_arg(name, "name")?) };
        require_out(out_json, "out_json")?;
        match name {
            Some(n) => write_json(out_json, mgr::stats_json(&core(m.stats(n))?)),
            None => write_json(out_json, mgr::all_stats_json(&m.all_stats())),
        }
    })
}

/// Changes the memory budget and unloads idle unpinned models (least
/// important, then least recently used, first) until the rest fit. Pinned
/// and in-use models stay, and may keep usage above the budget until they
/// are released.
///
/// - `manager`: must not be NULL.
/// - `budget_bytes`: the new budget in bytes; 0 for the default (70% of
///   system memory, capped by MLX's memory limit).
///
/// Thread-safe. Returns `CIDER_STATUS_OK` or `CIDER_STATUS_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn cider_manager_set_budget(manager: *const cider_manager, budget_bytes: u64) -> cider_status {
    boundary("cider_manager_set_budget", || {
        let m = manager_ref(manager)?;
        let bytes = if budget_bytes == 0 { mgr::default_budget() } else { budget_bytes };
        m.set_budget(bytes);
        Ok(())
    })
}

/// Writes the statistics file now (atomically: a temporary file, then a
/// rename). It is also written every few seconds while statistics change,
/// and by `cider_manager_free`. Without a statistics file this does nothing.
///
/// - `manager`: must not be NULL.
///
/// Thread-safe. Returns `CIDER_STATUS_OK`; `CIDER_STATUS_INVALID_ARGUMENT`;
/// `CIDER_STATUS_NOT_FOUND` / `CIDER_STATUS_BACKEND` (the file could not be
/// written; the message names it).
#[no_mangle]
pub extern "C" fn cider_manager_save_stats(manager: *const cider_manager) -> cider_status {
    boundary("cider_manager_save_stats", || core(manager_ref(manager)?.save_stats()))
}

// The header promises that a manager may be shared by threads.
const _: fn() = || {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Manager>();
};
