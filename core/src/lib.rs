//! cider's core: the MLX binding, model loading, tokenizers, models and the
//! generation loop. Every binding (C, Python, Swift) only translates to this.
pub mod error;
pub mod mlx;
pub mod tokenizer;
pub mod chat_template;
pub mod detokenizer;
pub mod cache;
pub mod generate;
pub mod json;
pub mod model;
pub mod models;
pub mod nn;
pub mod rope;
pub mod safetensors;
pub mod sampling;
pub mod weights;

pub use error::{Error, ErrorKind, Result};
pub use generate::{FinishReason, GenerateOptions, GenerationResult, Session, Stats, StreamEvent};
pub use model::{LoadOptions, Model, ModelInfo};
pub use sampling::SamplerConfig;
pub mod manager;
