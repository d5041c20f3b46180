//! `cider bench`: filled in by the performance work.
use cider_core::Error;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long)]
    pub model: PathBuf,
}

pub fn run(a: BenchArgs) -> Result<(), Error> {
    Err(Error::unsupported(format!("bench is not built yet (model {})", a.model.display())))
}
