//! Writes include/cider.h: cbindgen over the cider-ffi crate with
//! ffi/cbindgen.toml, plus CIDER_VERSION_* macros taken from cider-ffi's
//! version in Cargo.toml (through `cargo metadata`), so no version is ever
//! typed by hand. Usage: cider-header-gen OUTPUT_PATH
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn ffi_version(ffi_dir: &Path) -> Result<String, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1", "--manifest-path"])
        .arg(ffi_dir.join("Cargo.toml"))
        .output()
        .map_err(|e| format!("running cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata output: {e}"))?;
    meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "cider-ffi"))
        .and_then(|p| p["version"].as_str())
        .map(str::to_string)
        .ok_or_else(|| "cargo metadata lists no cider-ffi package".to_string())
}

fn version_macros(version: &str) -> Result<String, String> {
    // Pre-release/build suffixes (1.2.3-rc.1) stay in the string only.
    let core = version.split(['-', '+']).next().unwrap_or(version);
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.parse::<u32>().is_err()) {
        return Err(format!("cider-ffi version {version:?} is not MAJOR.MINOR.PATCH"));
    }
    Ok(format!(
        "/** cider's version, from Cargo.toml; equal to what cider_version() returns. */\n\
         #define CIDER_VERSION_MAJOR {}\n\
         #define CIDER_VERSION_MINOR {}\n\
         #define CIDER_VERSION_PATCH {}\n\
         #define CIDER_VERSION_STRING \"{}\"",
        parts[0], parts[1], parts[2], version
    ))
}

fn run(out: &Path) -> Result<(), String> {
    let ffi_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let ffi_dir = ffi_dir.canonicalize().map_err(|e| format!("{}: {e}", ffi_dir.display()))?;
    let mut config = cbindgen::Config::from_file(ffi_dir.join("cbindgen.toml"))?;
    let macros = version_macros(&ffi_version(&ffi_dir)?)?;
    config.after_includes = Some(match config.after_includes.take() {
        Some(extra) => format!("\n{macros}\n{extra}"),
        None => format!("\n{macros}"),
    });
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_crate(&ffi_dir)
        .generate()
        .map_err(|e| format!("cbindgen: {e}"))?;
    bindings.write_to_file(out);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 2 {
        eprintln!("usage: {} OUTPUT_PATH (usually include/cider.h)", args[0]);
        return ExitCode::from(2);
    }
    match run(Path::new(&args[1])) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cider-header-gen: {e}");
            ExitCode::FAILURE
        }
    }
}
