//! The workload's output log: one file, rotated by size, read back by tail.
//!
//! The log directory is the workload's to write in, so reads never follow a link: the directory
//! is opened with `O_NOFOLLOW | O_DIRECTORY`, each file relative to it with `O_NOFOLLOW`, and only
//! a regular file with one link is read (a FIFO does not block the reader: `O_NONBLOCK`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use berth_types::Timestamp;

use crate::logfmt::{self, Framer, Stream};

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

/// The shim's side of the log: the workload's stdout and stderr framed into timestamped
/// records (see [`crate::logfmt`]), each written whole so a rotation never splits one, with
/// timestamps strictly increasing across runs (the first continues after the log's last).
#[derive(Debug)]
pub struct RecordLog {
    log: RotatingLog,
    last: Timestamp,
    out: Framer,
    err: Framer,
    buf: Vec<u8>,
}

impl RecordLog {
    /// Opens the log in `dir` (see [`RotatingLog::open`]).
    pub fn open(dir: &Path, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        let last = last_timestamp(&current(dir))
            .or_else(|| last_timestamp(&rotated(dir, 1)))
            .unwrap_or(Timestamp::from_nanos(0));
        Ok(Self {
            log: RotatingLog::open(dir, max_bytes, keep)?,
            last,
            out: Framer::new(Stream::Stdout),
            err: Framer::new(Stream::Stderr),
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Output read from the workload's stdout (`Stdout`) or stderr (`Stderr`).
    pub fn push(&mut self, stream: Stream, bytes: &[u8]) -> std::io::Result<()> {
        let Self {
            last,
            out,
            err,
            buf,
            ..
        } = self;
        let framer = if stream == Stream::Stderr { err } else { out };
        framer.push(bytes, &mut |s, partial, text| {
            *last = next_ts(*last);
            logfmt::encode(*last, s, partial, text, buf);
        });
        self.write_buf()
    }

    /// A mark of the shim's (a run started or ended).
    pub fn mark(&mut self, text: &str) -> std::io::Result<()> {
        self.last = next_ts(self.last);
        logfmt::encode(
            self.last,
            Stream::Run,
            false,
            text.as_bytes(),
            &mut self.buf,
        );
        self.write_buf()
    }

    /// Whether a stream holds an unfinished line.
    pub fn has_pending(&self) -> bool {
        self.out.has_pending() || self.err.has_pending()
    }

    /// Writes out unfinished lines: as pieces that continue (`partial`) or, when the streams
    /// ended, as whole lines.
    pub fn flush(&mut self, partial: bool) -> std::io::Result<()> {
        let Self {
            last,
            out,
            err,
            buf,
            ..
        } = self;
        for framer in [out, err] {
            framer.flush(partial, &mut |s, p, text| {
                *last = next_ts(*last);
                logfmt::encode(*last, s, p, text, buf);
            });
        }
        self.write_buf()
    }

    fn write_buf(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self.log.write(&self.buf);
        self.buf.clear();
        r
    }
}

/// Now, or just after `last` if the clock has not moved past it (or went back).
fn next_ts(last: Timestamp) -> Timestamp {
    let now = Timestamp::now();
    if now > last {
        now
    } else {
        Timestamp::from_nanos(last.as_nanos() + 1)
    }
}

/// The timestamp of the last record of the log file at `path`, if it has one.
fn last_timestamp(path: &Path) -> Option<Timestamp> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))
        .ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    buf.split(|&b| b == b'\n')
        .rev()
        .find_map(|line| logfmt::parse(line).at)
}

/// Opens `name` in the log directory `dir` for reading, following no symbolic link: neither
/// `dir` itself (its last component) nor `name`. `Ok(None)` if either does not exist.
pub fn open_log(dir: &Path, name: &str) -> std::io::Result<Option<File>> {
    use nix::fcntl::{OFlag, open, openat};
    use nix::sys::stat::Mode;
    let refused = |what: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, what);
    if name.contains('/') {
        return Err(refused(format!("{name:?} is not a file name")));
    }
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let dirfd = match open(dir, flags | OFlag::O_DIRECTORY, Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => {
            return Err(refused(format!(
                "{} is not a directory (a symbolic link?); not followed",
                dir.display()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let fd = match openat(&dirfd, name, flags | OFlag::O_NONBLOCK, Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(nix::errno::Errno::ELOOP) => {
            return Err(refused(format!(
                "{}/{name} is a symbolic link; not followed",
                dir.display()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refused(format!(
            "{}/{name} is not a regular file",
            dir.display()
        )));
    }
    {
        use std::os::unix::fs::MetadataExt;
        if meta.nlink() != 1 {
            return Err(refused(format!(
                "{}/{name} has {} links (a hard link to another file?); not read",
                dir.display(),
                meta.nlink()
            )));
        }
    }
    Ok(Some(file))
}

/// The last `lines` lines of the log as plain text (see [`crate::logread`]), across the
/// rotated files. Follows no link (see [`open_log`]); empty when there is no log.
pub fn tail(dir: &Path, lines: usize) -> std::io::Result<String> {
    let select = crate::logread::Select {
        after: None,
        tail: Some(lines),
    };
    let Some((recs, _)) = crate::logread::open(dir, select)? else {
        return Ok(String::new());
    };
    let mut out = Vec::new();
    logfmt::TextRenderer::new(false).render(&recs, &mut out);
    Ok(String::from_utf8_lossy(&out).into_owned())
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

    #[test]
    fn reads_follow_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "top secret\n").unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        std::os::unix::fs::symlink(&secret, current(&logs)).unwrap();
        let e = tail(&logs, 10).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(crate::logread::open(&logs, Default::default()).is_err());
        // A linked directory is not followed either.
        let linked = dir.path().join("linked");
        std::os::unix::fs::symlink(&logs, &linked).unwrap();
        std::fs::remove_file(current(&logs)).unwrap();
        std::fs::write(current(&logs), "ok\n").unwrap();
        assert_eq!(tail(&logs, 10).unwrap(), "ok\n");
        assert!(tail(&linked, 10).is_err());
        // A hard link to another file, and a FIFO (which would block a plain open), are refused.
        std::fs::remove_file(current(&logs)).unwrap();
        std::fs::hard_link(&secret, current(&logs)).unwrap();
        assert!(tail(&logs, 10).is_err());
        std::fs::remove_file(current(&logs)).unwrap();
        nix::unistd::mkfifo(&current(&logs), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(tail(&logs, 10).is_err());
        assert!(
            crate::logread::open(&dir.path().join("none"), Default::default())
                .unwrap()
                .is_none()
        );
    }
}
