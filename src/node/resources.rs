//! What a node costs its host: resident memory and bytes on disk, as
//! `status` shows them.

use std::path::Path;

/// This process's resident set size in bytes, from `/proc/self/status`;
/// `None` where that file does not exist (not Linux) or cannot be read.
pub fn rss_bytes() -> Option<u64> {
    rss_of("self")
}

/// The resident set size of the process `pid` (a number, or `self`) in
/// bytes, from its `/proc/<pid>/status`; `None` where that cannot be read.
pub fn rss_of(pid: impl std::fmt::Display) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    vm_rss(&status)
}

/// The `VmRSS` line of a `/proc/<pid>/status` text, in bytes.
fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Bytes the files under `dir` take on disk (allocated blocks on Unix, so
/// a sparse or preallocated file counts what it really uses), down to a
/// depth of four directories. Entries that vanish or cannot be read while
/// it walks are skipped: the figure is for display.
pub fn disk_bytes(dir: &Path) -> u64 {
    fn walk(dir: &Path, depth: u32) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() && depth > 0 => walk(&e.path(), depth - 1),
                Ok(m) if m.is_file() => allocated(&m),
                _ => 0,
            })
            .sum()
    }
    walk(dir, 4)
}

#[cfg(unix)]
fn allocated(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(m).saturating_mul(512)
}

#[cfg(not(unix))]
fn allocated(m: &std::fs::Metadata) -> u64 {
    m.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vm_rss_line_is_read_in_bytes() {
        let status = "Name:\tflotilla\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t4\n";
        assert_eq!(vm_rss(status), Some(1234 * 1024));
        assert_eq!(vm_rss("Name:\tx\n"), None);
        assert_eq!(vm_rss("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn this_process_has_a_resident_set_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_bytes().is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn disk_bytes_counts_files_in_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(disk_bytes(dir.path()), 0);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub").join("f"), vec![7u8; 100_000]).unwrap();
        std::fs::write(dir.path().join("g"), vec![7u8; 10_000]).unwrap();
        let n = disk_bytes(dir.path());
        assert!(n >= 110_000, "{n}");
        assert_eq!(disk_bytes(&dir.path().join("missing")), 0);
    }
}
