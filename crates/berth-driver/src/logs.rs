//! The workload's output log: one file, rotated by size, read back by tail.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The current log file of a machine's log directory.
pub fn current(dir: &Path) -> PathBuf {
    dir.join("output.log")
}

fn rotated(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("output.log.{n}"))
}

/// Appends to `output.log`, rotating it when it reaches `max_bytes` and keeping `keep` old files
/// (`output.log.1` newest): a workload's output can never fill the disk.
#[derive(Debug)]
pub struct RotatingLog {
    dir: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

impl RotatingLog {
    /// Opens (appending to) the current log in `dir`, creating the directory.
    pub fn open(dir: &Path, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(current(dir))?;
        let size = file.metadata()?.len();
        Ok(Self {
            dir: dir.to_owned(),
            file,
            size,
            max_bytes: max_bytes.max(4096),
            keep,
        })
    }

    /// Appends bytes, rotating first if they would push the file past the cap.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + bytes.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
        } else {
            let _ = std::fs::remove_file(rotated(&self.dir, self.keep));
            for n in (1..self.keep).rev() {
                let _ = std::fs::rename(rotated(&self.dir, n), rotated(&self.dir, n + 1));
            }
            std::fs::rename(current(&self.dir), rotated(&self.dir, 1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(current(&self.dir))?;
        }
        self.size = 0;
        Ok(())
    }
}

/// The last `lines` lines of the log (across the current file and the newest rotated one).
pub fn tail(dir: &Path, lines: usize) -> std::io::Result<String> {
    let mut text = String::new();
    for path in [rotated(dir, 1), current(dir)] {
        match File::open(&path) {
            Ok(mut f) => {
                // Read at most the last 1 MiB of each file: enough for any sane tail.
                let len = f.metadata()?.len();
                f.seek(SeekFrom::Start(len.saturating_sub(1 << 20)))?;
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                text.push_str(&String::from_utf8_lossy(&buf));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let all: Vec<&str> = text.split_inclusive('\n').collect();
    Ok(all[all.len().saturating_sub(lines)..].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_cap_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(dir.path(), 4096, 2).unwrap();
        let line = format!("{}\n", "x".repeat(99));
        for _ in 0..200 {
            log.write(line.as_bytes()).unwrap();
        }
        let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(current(dir.path())) <= 4096);
        assert!(size(rotated(dir.path(), 1)) > 0 && size(rotated(dir.path(), 1)) <= 4096);
        assert!(size(rotated(dir.path(), 2)) > 0);
        assert!(
            !rotated(dir.path(), 3).exists(),
            "only 2 rotated files are kept"
        );
        let t = tail(dir.path(), 5).unwrap();
        assert_eq!(t.lines().count(), 5);
    }
}
