//! `cider models list|info|scan|select`: what the model registry knows, from
//! a registry file (`--registry`, or $CIDER_REGISTRY) and/or folders to scan.
//! Nothing here loads weights; all behaviour lives in cider_core::manager.
use cider_core::manager::{
    entry_json, format_bytes, parse_bytes, select, selection_json, stats_json, ModelEntry, Registry, SelectQuery,
    StatsStore,
};
use cider_core::Error;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Format {
    Text,
    Json,
}

#[derive(Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    cmd: ModelsCmd,
}

#[derive(Args)]
struct Sources {
    /// Registry file (docs/registry.md); default $CIDER_REGISTRY when set.
    #[arg(long, global = true)]
    registry: Option<PathBuf>,
    /// Also scan this folder for models (repeatable).
    #[arg(long = "scan", global = true)]
    scan: Vec<PathBuf>,
    /// Also scan the Hugging Face hub cache (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub).
    #[arg(long, global = true)]
    hf_cache: bool,
    /// Tokens of KV cache to include in memory estimates (default: the registry file's, else 0).
    #[arg(long, global = true)]
    context: Option<usize>,
    #[arg(long, value_enum, default_value_t = Format::Text, global = true)]
    format: Format,
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// List registered models: size, parameters, quantization, tasks, priority.
    List {
        #[command(flatten)]
        src: Sources,
    },
    /// Everything known about one model (by name, alias or path), with usage statistics.
    Info {
        name: String,
        #[command(flatten)]
        src: Sources,
    },
    /// Scan folders (and with --hf-cache the hub cache) and report what was found and skipped.
    Scan {
        dirs: Vec<PathBuf>,
        #[command(flatten)]
        src: Sources,
    },
    /// The best model for a task under a memory limit, with the reason for every candidate.
    Select {
        #[arg(long)]
        task: Option<String>,
        /// Largest acceptable estimate, e.g. 8GB or 512MiB (default: no limit).
        #[arg(long)]
        max_memory: Option<String>,
        #[arg(long)]
        min_score: Option<f64>,
        #[arg(long, default_value = "quality")]
        score_key: String,
        #[command(flatten)]
        src: Sources,
    },
}

fn registry(src: &Sources, extra: &[PathBuf]) -> Result<Registry, Error> {
    let file = src.registry.clone().or_else(|| std::env::var_os("CIDER_REGISTRY").map(PathBuf::from));
    let mut reg = match file {
        Some(f) => Registry::open(&f)?,
        None => Registry::new(),
    };
    for d in src.scan.iter().chain(extra) {
        reg.scan_dir(d)?;
    }
    if src.hf_cache {
        reg.scan_hf_cache();
    }
    Ok(reg)
}

fn context(src: &Sources, reg: &Registry) -> usize {
    src.context.unwrap_or_else(|| reg.default_context())
}

fn stats_store(reg: &Registry) -> Result<Option<StatsStore>, Error> {
    match reg.file.as_ref().and_then(|f| f.stats.as_ref()) {
        Some(p) => StatsStore::open(p).map(Some),
        None => Ok(None),
    }
}

fn quant_str(e: &ModelEntry) -> String {
    match &e.quantization {
        None => e.dtype.clone(),
        Some(q) => format!("q{}g{}{}", q.bits, q.group_size, if q.mixed { " mixed" } else { "" }),
    }
}

fn params_str(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.1}B", n as f64 / 1e9)
    } else if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else {
        format!("{:.1}K", n as f64 / 1e3)
    }
}

fn print_table(entries: &[ModelEntry], ctx: usize) {
    if entries.is_empty() {
        println!("no models (give --registry FILE, --scan DIR or --hf-cache)");
        return;
    }
    println!("{:<32} {:<8} {:>8} {:<14} {:>10} {:>10} {:>3} {:<16} PATH", "NAME", "TYPE", "PARAMS", "WEIGHTS", "DISK", "ESTIMATE", "PRI", "TASKS");
    for e in entries {
        let mut tasks = e.meta.tasks.join(",");
        if e.meta.pinned {
            tasks.push_str(" (pinned)");
        }
        println!(
            "{:<32} {:<8} {:>8} {:<14} {:>10} {:>10} {:>3} {:<16} {}",
            e.name,
            e.model_type,
            params_str(e.parameters),
            quant_str(e),
            format_bytes(e.disk_bytes),
            format_bytes(e.estimate_bytes(ctx)),
            e.meta.priority,
            if tasks.is_empty() { "-".into() } else { tasks },
            e.path.display()
        );
    }
}

pub fn run(a: ModelsArgs) -> Result<(), Error> {
    match a.cmd {
        ModelsCmd::List { src } => {
            let reg = registry(&src, &[])?;
            let ctx = context(&src, &reg);
            let stats = stats_store(&reg)?;
            if src.format == Format::Json {
                let models: Vec<_> = reg
                    .entries
                    .iter()
                    .map(|e| {
                        let mut v = entry_json(e, ctx);
                        if let Some(s) = &stats {
                            v["stats"] = stats_json(&s.get(&e.name));
                        }
                        v
                    })
                    .collect();
                println!("{}", json!({ "models": models }));
            } else {
                print_table(&reg.entries, ctx);
            }
            Ok(())
        }
        ModelsCmd::Info { name, src } => {
            let reg = registry(&src, &[])?;
            let ctx = context(&src, &reg);
            let e = reg.resolve(&name)?;
            let mut v = entry_json(e, ctx);
            if let Some(s) = stats_store(&reg)? {
                v["stats"] = stats_json(&s.get(&e.name));
            }
            if src.format == Format::Json {
                println!("{v}");
            } else {
                let obj = v.as_object().unwrap();
                for (k, val) in obj {
                    let shown = match val {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let shown = if k.ends_with("_bytes") && val.is_u64() {
                        format!("{} ({})", format_bytes(val.as_u64().unwrap()), val)
                    } else {
                        shown
                    };
                    println!("{k:<20} {shown}");
                }
            }
            Ok(())
        }
        ModelsCmd::Scan { dirs, src } => {
            let reg = registry(&src, &dirs)?;
            let ctx = context(&src, &reg);
            if src.format == Format::Json {
                let models: Vec<_> = reg.entries.iter().map(|e| entry_json(e, ctx)).collect();
                let skipped: Vec<_> =
                    reg.skipped.iter().map(|s| json!({"path": s.path.display().to_string(), "reason": s.reason})).collect();
                println!("{}", json!({ "models": models, "skipped": skipped }));
            } else {
                print_table(&reg.entries, ctx);
                for s in &reg.skipped {
                    println!("skipped {}: {}", s.path.display(), s.reason);
                }
            }
            Ok(())
        }
        ModelsCmd::Select { task, max_memory, min_score, score_key, src } => {
            let reg = registry(&src, &[])?;
            let q = SelectQuery {
                task,
                max_memory: max_memory.as_deref().map(parse_bytes).transpose()?,
                min_score,
                score_key,
                context_length: context(&src, &reg),
            };
            let s = select(reg.entries.iter(), &q);
            if src.format == Format::Json {
                println!("{}", selection_json(&s));
            } else {
                match &s.chosen {
                    Some(c) => println!("{c}"),
                    None => println!("no model fits"),
                }
                for c in &s.candidates {
                    println!("  {}: {}", c.name, c.reason);
                }
            }
            if s.chosen.is_none() && src.format == Format::Text {
                return Err(Error::not_found("no registered model satisfies the query"));
            }
            Ok(())
        }
    }
}
