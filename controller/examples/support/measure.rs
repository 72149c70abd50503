//! What the benchmarks read about a process and how they print a figure: CPU time and memory
//! from `/proc`, percentiles, PASS/FAIL.

use anyhow::{Context, Result};

/// `utime + stime` of `pid`, in milliseconds.
pub fn cpu_ms(pid: u32, tick_ms: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its `)` are fixed.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime field 15.
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i - 3)
            .context("short /proc/<pid>/stat")?
            .parse::<f64>()?)
    };
    Ok((ticks(14)? + ticks(15)?) * tick_ms)
}

/// Milliseconds per clock tick (`getconf CLK_TCK`, 100 on Linux unless configured otherwise).
pub fn tick_ms() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|hz| *hz > 0.0)
        .map_or(10.0, |hz| 1000.0 / hz)
}

/// A memory line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .with_context(|| format!("no {field} line"))?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("no {field} value"))?;
    Ok(kib.parse()?)
}

/// The value at quantile `q` (0.0–1.0) of `values` (nearest rank).
pub fn pick<T: Copy + PartialOrd>(values: &[T], q: f64) -> T {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}
