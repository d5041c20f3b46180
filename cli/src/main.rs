//! The `cider` command line. It only parses flags and prints: all behaviour
//! lives in cider-core.
mod bench;
mod models;

use cider_core::tokenizer::ChatMessage;
use cider_core::{Error, GenerateOptions, Model, SamplerConfig, Session, StreamEvent};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cider", version, about = "Run LLMs from MLX / Hugging Face model folders")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text from a prompt.
    Generate(GenerateArgs),
    /// Print the token ids of a text as JSON.
    Tokenize {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        text: String,
        /// Wrap the text as a user message in the chat template first.
        #[arg(long)]
        chat: bool,
    },
    /// Render the chat template for messages given as a JSON file ([{"role":..,"content":..}]).
    ChatTemplate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        messages: PathBuf,
        #[arg(long)]
        no_generation_prompt: bool,
    },
    /// Measure load time, time to first token, prompt and generation speed.
    Bench(bench::BenchArgs),
    /// Model registry: list, inspect, scan folders, select a model for a task.
    Models(models::ModelsArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Format {
    Text,
    Json,
}

#[derive(Args)]
struct GenerateArgs {
    #[arg(long)]
    model: PathBuf,
    /// The prompt; "-" reads standard input. "\n" and "\t" are unescaped as mlx_lm.generate does.
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    system: Option<String>,
    #[arg(long)]
    no_chat_template: bool,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[arg(long = "temp", default_value_t = 0.0)]
    temp: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long)]
    repetition_penalty: Option<f32>,
    #[arg(long, default_value_t = 20)]
    repetition_context_size: usize,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[arg(long)]
    ignore_eos: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Where MLX runs: the GPU when the installed MLX has one (CUDA/Metal), else the CPU.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// Compute dtype: "checkpoint" (default; bit-identical to mlx-lm) or a float type
    /// to compute in (weights converted at load; not bit-identical to mlx-lm; see README).
    #[arg(long, default_value = "checkpoint")]
    compute_dtype: String,
    /// CPU streams to split each projection over when running on the CPU (results
    /// stay bit-identical); default: CIDER_CPU_THREADS, else one per core (at most 8).
    #[arg(long)]
    cpu_threads: Option<usize>,
}

/// Parse --compute-dtype into load options.
pub(crate) fn load_options(compute_dtype: &str, cpu_threads: Option<usize>) -> Result<cider_core::LoadOptions, Error> {
    let compute_dtype = match compute_dtype {
        "checkpoint" => None,
        s => Some(cider_core::mlx::Dtype::parse(s).filter(|d| d.is_float()).ok_or_else(|| {
            Error::invalid_arg(format!("--compute-dtype {s}: expected checkpoint, float32, float16 or bfloat16"))
        })?),
    };
    Ok(cider_core::LoadOptions { compute_dtype, cpu_threads })
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Device {
    Auto,
    Cpu,
    Gpu,
}

fn select_device(d: Device) -> Result<(), Error> {
    use cider_core::mlx::device;
    match d {
        Device::Auto => device::set_gpu(device::gpu_available()),
        Device::Cpu => device::set_gpu(false),
        Device::Gpu if !device::gpu_available() => {
            Err(Error::unsupported("--device gpu: the installed MLX has no GPU backend (install mlx[cuda13] or use macOS)"))
        }
        Device::Gpu => device::set_gpu(true),
    }
}

fn main() {
    // A panic would be a bug; still, print one line instead of a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error: {info}");
    }));
    let cli = Cli::parse();
    let r = std::panic::catch_unwind(|| run(cli));
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        Err(_) => std::process::exit(101),
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.cmd {
        Cmd::Generate(a) => generate(a),
        Cmd::Tokenize { model, text, chat } => {
            let tok = cider_core::tokenizer::Tokenizer::from_dir(&model)?;
            let ids = if chat {
                tok.encode_chat(&[ChatMessage { role: "user".into(), content: text }], true)?
            } else {
                tok.encode_prompt(&text)?
            };
            println!("{}", serde_json::to_string(&ids).unwrap());
            Ok(())
        }
        Cmd::ChatTemplate { model, messages, no_generation_prompt } => {
            let tok = cider_core::tokenizer::Tokenizer::from_dir(&model)?;
            let v = cider_core::json::read_json(&messages)?;
            let msgs: Vec<ChatMessage> = serde_json::from_value(v)
                .map_err(|e| Error::invalid_arg(format!("{}: {e}", messages.display())))?;
            let text = tok.apply_chat_template(&msgs, !no_generation_prompt)?;
            print!("{text}");
            std::io::stdout().flush().ok();
            Ok(())
        }
        Cmd::Bench(a) => bench::run(a),
        Cmd::Models(a) => models::run(a),
    }
}

fn prompt_ids(model: &Model, a: &GenerateArgs) -> Result<Vec<u32>, Error> {
    let mut prompt = a.prompt.replace("\\n", "\n").replace("\\t", "\t");
    if prompt == "-" {
        prompt = std::io::read_to_string(std::io::stdin()).map_err(|e| Error::invalid_arg(format!("reading stdin: {e}")))?;
    }
    if !a.no_chat_template && model.tokenizer.has_chat_template() {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage { role: "system".into(), content: s.clone() });
        }
        msgs.push(ChatMessage { role: "user".into(), content: prompt });
        model.tokenizer.encode_chat(&msgs, true)
    } else {
        model.encode_prompt(&prompt)
    }
}

fn generate(a: GenerateArgs) -> Result<(), Error> {
    select_device(a.device)?;
    let opts = load_options(&a.compute_dtype, a.cpu_threads)?;
    let model = std::sync::Arc::new(Model::load_with(&a.model, &opts, &mut |_| true)?);
    let ids = prompt_ids(&model, &a)?;
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampler: SamplerConfig { temperature: a.temp, top_p: a.top_p, top_k: a.top_k, min_p: a.min_p, seed: a.seed },
        repetition_penalty: a.repetition_penalty,
        repetition_context_size: a.repetition_context_size,
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
        ..Default::default()
    };
    let text_mode = a.format == Format::Text;
    let mut out = std::io::stdout().lock();
    let mut on_event = |e: &StreamEvent| {
        if text_mode && !e.text.is_empty() {
            let _ = out.write_all(e.text.as_bytes());
            let _ = out.flush();
        }
        true
    };
    let r = Session::new(model.clone()).generate(&ids, &opts, &mut on_event)?;
    let s = &r.stats;
    if text_mode {
        println!();
        eprintln!("==========");
        eprintln!("Prompt: {} tokens, {:.3} tokens-per-sec", s.prompt_tokens, s.prompt_tps);
        eprintln!("Generation: {} tokens, {:.3} tokens-per-sec", s.generation_tokens, s.generation_tps);
        eprintln!("Time to first token: {:.3} s", s.ttft_s);
        eprintln!("Peak memory: {:.3} GB", s.peak_memory_bytes as f64 / 1e9);
        eprintln!("Load: {:.3} s, {:.3} GB resident", model.info.load_seconds, model.info.resident_bytes as f64 / 1e9);
        eprintln!("Finish: {}", r.finish_reason.as_str());
    } else {
        let v = json!({
            "text": r.text,
            "tokens": r.tokens,
            "prompt_tokens": r.prompt_tokens,
            "finish_reason": r.finish_reason.as_str(),
            "stats": {
                "prompt_tokens": s.prompt_tokens,
                "prompt_tps": s.prompt_tps,
                "generation_tokens": s.generation_tokens,
                "generation_tps": s.generation_tps,
                "ttft_s": s.ttft_s,
                "peak_memory_bytes": s.peak_memory_bytes,
                "load_s": model.info.load_seconds,
                "resident_bytes": model.info.resident_bytes,
            }
        });
        println!("{v}");
    }
    Ok(())
}
