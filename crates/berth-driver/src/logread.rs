//! Reading the log back: what a request asks for across the rotated files, then following what
//! is written next without losing, repeating or splitting a record.
//!
//! A follower holds the file it reads *open* and knows it by identity (device and inode), never
//! by name: when `output.log` names another file, the rotation has happened, the shim (the one
//! writer) will never write to the held file again, so the follower reads it to its end and only
//! then moves to the new one. Records are whole lines, written by one `write(2)` each, so a
//! follower only ever takes bytes up to the last newline and reads the rest again next time.
//! Timestamps strictly increase within a log, so a record at or before the last one returned is
//! a repeat (a rotation seen half-way through opening the files) and is dropped.
//! Every open goes through [`crate::logs::open_log`]: no link is followed.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_types::Timestamp;

use crate::logfmt::{self, Record, Stream};
use crate::logs::open_log;

/// Most rotated files looked at.
const MAX_FILES: u32 = 1000;

/// What a read asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Select {
    /// Only records strictly after this time (a follower's cursor, or `--since` less 1 ns).
    pub after: Option<Timestamp>,
    /// Only the last this many lines of the workload's output (and the marks among them).
    pub tail: Option<usize>,
}

/// What one follower step found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// New records, oldest first.
    Records(Vec<Record>),
    /// Nothing new yet.
    Idle,
}

/// A follower: the file it reads, held open, and where it is in it.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    file: Option<(File, (u64, u64))>,
    pos: u64,
    last: Option<Timestamp>,
}

fn identity(f: &File) -> std::io::Result<(u64, u64)> {
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

/// Opens the log in `dir`: the records `select` asks for, and a follower placed right after
/// them. `Ok(None)` when the machine has no log directory (destroyed, or never started).
pub fn open(dir: &Path, select: Select) -> std::io::Result<Option<(Vec<Record>, LogReader)>> {
    if !dir.exists() {
        return Ok(None);
    }
    // Newest first: a rotation between two opens can then only repeat a file (dropped by
    // time) or drop the oldest one (which the rotation deleted anyway), never skip one.
    let current = open_current(dir)?;
    let mut files = Vec::new();
    for n in 1..=MAX_FILES {
        match open_log(dir, &format!("output.log.{n}"))? {
            Some(f) => files.push(f),
            None => break,
        }
    }
    let mut reader = LogReader {
        dir: dir.to_owned(),
        file: None,
        pos: 0,
        last: select.after,
    };
    let mut newest_first: Vec<Vec<Record>> = Vec::new();
    let mut lines = 0;
    if let Some(f) = current {
        let (recs, pos) = read_lines(&f, 0, u64::MAX, false)?;
        reader.pos = pos;
        let id = identity(&f)?;
        reader.file = Some((f, id));
        lines += count_lines(&recs);
        newest_first.push(recs);
    }
    for f in files {
        if select.tail.is_some_and(|t| lines >= t) {
            break;
        }
        let (recs, _) = read_lines(&f, 0, u64::MAX, true)?;
        lines += count_lines(&recs);
        newest_first.push(recs);
    }
    let all: Vec<Record> = newest_first.into_iter().rev().flatten().collect();
    let mut picked = reader.keep_new(all);
    if let Some(t) = select.tail {
        picked = last_lines(picked, t);
    }
    Ok(Some((picked, reader)))
}

/// The current file; it is missing only for an instant while the shim rotates it.
fn open_current(dir: &Path) -> std::io::Result<Option<File>> {
    for _ in 0..20 {
        if let Some(f) = open_log(dir, "output.log")? {
            return Ok(Some(f));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(None)
}

fn count_lines(recs: &[Record]) -> usize {
    recs.iter()
        .filter(|r| r.stream != Stream::Run && !r.partial)
        .count()
}

/// The records from where the `tail`-th last line of output begins.
fn last_lines(recs: Vec<Record>, tail: usize) -> Vec<Record> {
    let mut seen = 0;
    let mut start = recs.len();
    for (i, r) in recs.iter().enumerate().rev() {
        if r.stream != Stream::Run && !r.partial {
            if seen == tail {
                break;
            }
            seen += 1;
        }
        start = i;
    }
    if tail == 0 {
        return Vec::new();
    }
    recs.into_iter().skip(start).collect()
}

/// Reads `f` from `pos` (at most `max` bytes): the whole lines in it, and the position after
/// the last one. `to_end`: a file no one writes any more, whose unterminated end is a line.
fn read_lines(f: &File, pos: u64, max: u64, to_end: bool) -> std::io::Result<(Vec<Record>, u64)> {
    let mut f = f;
    f.seek(SeekFrom::Start(pos))?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf)?;
    let whole = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if to_end => buf.len(),
        None => 0,
    };
    let body = &buf[..whole];
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    let recs = if whole == 0 {
        Vec::new()
    } else {
        body.split(|&b| b == b'\n').map(logfmt::parse).collect()
    };
    Ok((recs, pos + whole as u64))
}

/// The file written after the one known as `held`: `output.log.{k-1}` when `held` is now
/// `output.log.k`, or the oldest kept if `held` is gone (the writer outran the rotated files
/// kept; what was between is deleted). `None`: the current file is the successor.
fn successor(dir: &Path, held: (u64, u64)) -> std::io::Result<Option<(File, (u64, u64))>> {
    let mut older: Vec<(File, (u64, u64))> = Vec::new();
    for n in 1..=MAX_FILES {
        match open_log(dir, &format!("output.log.{n}"))? {
            Some(f) => {
                let id = identity(&f)?;
                if id == held {
                    return Ok(older.pop());
                }
                older.push((f, id));
            }
            None => break,
        }
    }
    Ok(older.pop())
}

impl LogReader {
    /// A follower of a log not written yet (the machine has not started): it reads the log
    /// from its start once it appears.
    pub fn empty(dir: &Path, after: Option<Timestamp>) -> Self {
        Self {
            dir: dir.to_owned(),
            file: None,
            pos: 0,
            last: after,
        }
    }

    /// Drops records at or before the last one returned (repeats); keeps lines without time.
    fn keep_new(&mut self, recs: Vec<Record>) -> Vec<Record> {
        let mut out = Vec::with_capacity(recs.len());
        for r in recs {
            match (r.at, self.last) {
                (Some(at), Some(last)) if at <= last => continue,
                (Some(at), _) => self.last = Some(at),
                (None, _) => {}
            }
            out.push(r);
        }
        out
    }

    /// The time of the last record returned: the cursor to resume after.
    pub fn cursor(&self) -> Option<Timestamp> {
        self.last
    }

    /// Reads what was written since the last step (at most about `max` bytes).
    pub fn step(&mut self, max: u64) -> std::io::Result<Step> {
        loop {
            if let Some((f, _)) = &self.file {
                let (recs, pos) = read_lines(f, self.pos, max, false)?;
                if pos > self.pos {
                    self.pos = pos;
                    return Ok(Step::Records(self.keep_new(recs)));
                }
            }
            // Nothing new in the held file: has it been rotated away (or truncated)?
            let Some(named) = open_log(&self.dir, "output.log")? else {
                return Ok(Step::Idle); // between the shim's rename and its new file
            };
            let id = identity(&named)?;
            match &self.file {
                Some((held, held_id)) if *held_id == id => {
                    if held.metadata()?.len() < self.pos {
                        self.pos = 0; // truncated in place (no rotated files kept)
                        continue;
                    }
                    return Ok(Step::Idle);
                }
                Some((held, held_id)) => {
                    // Rotated: the held file is complete now; read its end, then move on to
                    // the file written after it (not the current one: the writer may have
                    // rotated more than once since the last step).
                    let (recs, _) = read_lines(held, self.pos, u64::MAX, true)?;
                    let next = successor(&self.dir, *held_id)?.unwrap_or((named, id));
                    self.file = Some(next);
                    self.pos = 0;
                    if !recs.is_empty() {
                        return Ok(Step::Records(self.keep_new(recs)));
                    }
                }
                None => {
                    self.file = Some((named, id));
                    self.pos = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::RecordLog;

    fn texts(recs: &[Record]) -> Vec<String> {
        recs.iter()
            .filter(|r| r.stream != Stream::Run)
            .map(|r| String::from_utf8_lossy(&r.text).into_owned())
            .collect()
    }

    /// A writer rotating every few KiB while a follower reads: every line once, in order.
    #[test]
    fn a_follower_sees_every_line_once_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let mut log = RecordLog::open(&logs, 8192, 100).unwrap();
        log.mark("started").unwrap();
        let (recs, mut reader) = open(&logs, Select::default()).unwrap().unwrap();
        assert!(texts(&recs).is_empty());
        const N: usize = 20_000;
        let writer = std::thread::spawn(move || {
            for i in 0..N {
                // Pieces that cross write boundaries: the framer must join them.
                let line = format!("line {i} {}\n", "y".repeat(i % 50));
                let (a, b) = line.as_bytes().split_at(line.len() / 2);
                log.push(Stream::Stdout, a).unwrap();
                log.push(Stream::Stdout, b).unwrap();
                if i % 200 == 0 {
                    // Not faster than a reader can follow with 100 files of 8 KiB kept.
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        });
        let mut got = Vec::new();
        while got.len() < N {
            match reader.step(16384).unwrap() {
                Step::Records(r) => got.extend(texts(&r)),
                Step::Idle if writer.is_finished() && got.len() < N => {
                    // One more look after the writer is done, then fail loudly.
                    match reader.step(u64::MAX).unwrap() {
                        Step::Records(r) if !r.is_empty() => got.extend(texts(&r)),
                        _ => break,
                    }
                }
                Step::Idle => std::thread::yield_now(),
            }
        }
        writer.join().unwrap();
        let want: Vec<String> = (0..N)
            .map(|i| format!("line {i} {}", "y".repeat(i % 50)))
            .collect();
        assert_eq!(got.len(), N, "lines lost or repeated");
        assert_eq!(got, want);
        assert!(logs.join("output.log.50").exists(), "the log rotated");
    }

    #[test]
    fn select_after_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RecordLog::open(dir.path(), 4096, 3).unwrap();
        for i in 0..300 {
            log.push(Stream::Stdout, format!("{i}\n").as_bytes())
                .unwrap();
        }
        log.mark("exited code=0").unwrap();
        let (all, _) = open(dir.path(), Select::default()).unwrap().unwrap();
        let at_100 = all
            .iter()
            .find(|r| r.text == b"100")
            .and_then(|r| r.at)
            .unwrap();
        let after = Select {
            after: Some(at_100),
            tail: None,
        };
        let (recs, _) = open(dir.path(), after).unwrap().unwrap();
        assert_eq!(texts(&recs).first().map(String::as_str), Some("101"));
        assert_eq!(texts(&recs).len(), 199);
        let tail = Select {
            after: None,
            tail: Some(3),
        };
        let (recs, _) = open(dir.path(), tail).unwrap().unwrap();
        assert_eq!(texts(&recs), ["297", "298", "299"]);
        assert_eq!(recs.last().map(|r| r.stream), Some(Stream::Run));
        // A new run's timestamps continue after the last ones.
        drop(log);
        let mut log = RecordLog::open(dir.path(), 4096, 3).unwrap();
        log.push(Stream::Stderr, b"again\n").unwrap();
        let (recs, _) = open(dir.path(), Select::default()).unwrap().unwrap();
        let times: Vec<_> = recs.iter().filter_map(|r| r.at).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(recs.last().map(|r| r.stream), Some(Stream::Stderr));
    }
}
