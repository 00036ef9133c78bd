//! What the process has used: peak resident memory.

/// Peak resident memory of this process in MiB (Linux `VmHWM` from `/proc/self/status`);
/// `None` where the system does not report it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reports_a_plausible_peak_on_linux() {
        if cfg!(target_os = "linux") {
            let peak = super::peak_rss_mib().expect("VmHWM on Linux");
            assert!(peak > 0.5 && peak < 1.0e6, "{peak}");
        }
    }
}
