//! How much memory the manager may fill by default, and byte sizes for humans.
use crate::error::{Error, Result};

/// The default budget is this fraction of system memory (see `default_budget`).
pub const DEFAULT_BUDGET_FRACTION: f64 = 0.7;

/// Physical memory in bytes: `MemTotal` from /proc/meminfo on Linux,
/// `sysctl -n hw.memsize` on macOS. None when neither can be read.
pub fn system_memory() -> Option<u64> {
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("MemTotal:") {
                let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
                return Some(kb * 1024);
            }
        }
    }
    let out = std::process::Command::new("sysctl").args(["-n", "hw.memsize"]).output().ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// `DEFAULT_BUDGET_FRACTION` of system memory, capped by MLX's allocator
/// limit when one is set. MLX's Metal "recommended working set" is not exposed
/// by cider's binding, and on CPU there is none, so system memory is the base
/// on every backend (on Apple silicon the working set is itself about 70-75%
/// of RAM, so the two agree closely). Falls back to 8 GiB when memory cannot
/// be read.
pub fn default_budget() -> u64 {
    let sys = system_memory().unwrap_or(8 << 30);
    let mut b = (sys as f64 * DEFAULT_BUDGET_FRACTION) as u64;
    let limit = crate::mlx::memory::limit() as u64;
    if limit > 0 && limit < b {
        b = limit;
    }
    b
}

/// "1.5 GB", "12.0 MB", "512 B" (decimal units, as `ls -h --si` and mlx-lm's
/// "Peak memory: x GB" print).
pub fn format_bytes(b: u64) -> String {
    let f = b as f64;
    if f >= 1e9 {
        format!("{:.2} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2} MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} kB", f / 1e3)
    } else {
        format!("{b} B")
    }
}

/// Bytes from "123", "8GB", "8 GiB", "512MiB", "1.5G", "300k" (case-insensitive;
/// K/M/G/T are decimal, KiB/MiB/GiB/TiB binary).
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| Error::invalid_arg(format!("\"{s}\" is not a size (examples: 8GB, 512MiB, 1000000)")))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        u => return Err(Error::invalid_arg(format!("\"{s}\": unknown size unit \"{u}\" (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"))),
    };
    Ok((n * mult).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("8GB").unwrap(), 8_000_000_000);
        assert_eq!(parse_bytes("1 MiB").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1500);
        assert_eq!(parse_bytes("42").unwrap(), 42);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
        assert_eq!(format_bytes(12_340_000), "12.34 MB");
    }
}
