//! The log's record format: one line per record, written whole by the shim.
//!
//! ```text
//! 2026-12-02T14:40:44.123456789Z out hello
//! 2026-12-02T14:40:44.123456790Z err+ the first 16 KiB of a longer line…
//! 2026-12-02T14:40:45.000000000Z run exited code=0
//! ```
//!
//! The timestamp is RFC 3339 with nine fractional digits (always 30 bytes), strictly increasing
//! within a machine's log, so it is also the cursor a follower resumes from (`after`). The
//! stream is `out`, `err` or `run` (the shim's marks: a run started, a run exited); a trailing
//! `+` marks a piece of a line that continues in the stream's next record (a line longer than
//! [`MAX_RECORD_TEXT`], or one the workload left unfinished for a while). A line that does not
//! parse (a log written before this format) reads as a whole stdout line without a time.

use berth_types::Timestamp;

/// Longest text of one record; a longer line is cut into pieces marked partial.
pub const MAX_RECORD_TEXT: usize = 16 * 1024;
/// Bytes of the timestamp at the start of every record.
const TS_LEN: usize = 30;

/// Where a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The workload's stdout.
    Stdout,
    /// The workload's stderr.
    Stderr,
    /// The shim's mark: a run started or ended.
    Run,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Stream::Stdout => "out",
            Stream::Stderr => "err",
            Stream::Run => "run",
        }
    }

    /// The name shown to people and on the wire (`stdout`, `stderr`, `run`).
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Run => "run",
        }
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When the shim read it (`None` for a line of the older, unframed format).
    pub at: Option<Timestamp>,
    /// Its stream.
    pub stream: Stream,
    /// The line continues in the stream's next record.
    pub partial: bool,
    /// The text, without the newline.
    pub text: Vec<u8>,
}

/// Appends the record's line (with its newline) to `out`.
pub fn encode(at: Timestamp, stream: Stream, partial: bool, text: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format_ts(at).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.tag().as_bytes());
    if partial {
        out.push(b'+');
    }
    out.push(b' ');
    out.extend_from_slice(text);
    out.push(b'\n');
}

/// The fixed-width RFC 3339 form of a timestamp.
pub fn format_ts(at: Timestamp) -> String {
    at.to_string()
}

/// Parses one line (without its newline).
pub fn parse(line: &[u8]) -> Record {
    parse_framed(line).unwrap_or_else(|| Record {
        at: None,
        stream: Stream::Stdout,
        partial: false,
        text: line.to_vec(),
    })
}

fn parse_framed(line: &[u8]) -> Option<Record> {
    if line.len() < TS_LEN + 5 || line[TS_LEN] != b' ' {
        return None;
    }
    let ts = std::str::from_utf8(&line[..TS_LEN]).ok()?;
    let at = humantime::parse_rfc3339(ts).ok()?;
    let rest = &line[TS_LEN + 1..];
    let space = rest.iter().position(|&b| b == b' ')?;
    let (tag, text) = (&rest[..space], &rest[space + 1..]);
    let (tag, partial) = match tag.strip_suffix(b"+") {
        Some(t) => (t, true),
        None => (tag, false),
    };
    let stream = match tag {
        b"out" => Stream::Stdout,
        b"err" => Stream::Stderr,
        b"run" => Stream::Run,
        _ => return None,
    };
    Some(Record {
        at: Some(Timestamp::from_system_time(at)),
        stream,
        partial,
        text: text.to_vec(),
    })
}

/// Cuts one stream's bytes into records: whole lines, pieces of at most [`MAX_RECORD_TEXT`], and
/// what is left unfinished until [`Framer::flush`].
#[derive(Debug)]
pub struct Framer {
    stream: Stream,
    pending: Vec<u8>,
}

impl Framer {
    /// A framer for `stream`.
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    /// Whether an unfinished line waits for its end.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Frames `bytes`, calling `emit(stream, partial, text)` for each record that is complete.
    pub fn push(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(Stream, bool, &[u8])) {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            let (line, rest) = (&bytes[..nl], &bytes[nl + 1..]);
            if self.pending.is_empty() {
                self.emit_line(line, emit);
            } else {
                let mut whole = std::mem::take(&mut self.pending);
                whole.extend_from_slice(line);
                self.emit_line(&whole, emit);
            }
            bytes = rest;
        }
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= MAX_RECORD_TEXT {
            let rest = self.pending.split_off(MAX_RECORD_TEXT);
            emit(self.stream, true, &self.pending);
            self.pending = rest;
        }
    }

    /// Writes out an unfinished line: as a piece that continues (`partial`), or as a whole line
    /// (the stream ended).
    pub fn flush(&mut self, partial: bool, emit: &mut impl FnMut(Stream, bool, &[u8])) {
        if !self.pending.is_empty() {
            emit(self.stream, partial, &std::mem::take(&mut self.pending));
        }
    }

    fn emit_line(&self, mut line: &[u8], emit: &mut impl FnMut(Stream, bool, &[u8])) {
        while line.len() > MAX_RECORD_TEXT {
            emit(self.stream, true, &line[..MAX_RECORD_TEXT]);
            line = &line[MAX_RECORD_TEXT..];
        }
        emit(self.stream, false, line);
    }
}

/// Renders records as plain text, one line per line of output (its pieces joined again), with
/// the time at the start of each line if asked; the shim's marks are not output and are left
/// out. Keeps state between calls, so a follower renders chunk by chunk.
#[derive(Debug, Default)]
pub struct TextRenderer {
    timestamps: bool,
    /// The stream whose line is unfinished (its last record was a piece).
    open: Option<Stream>,
}

impl TextRenderer {
    /// A renderer; `timestamps` puts each line's time (RFC 3339) before it.
    pub fn new(timestamps: bool) -> Self {
        Self {
            timestamps,
            open: None,
        }
    }

    /// Appends the text of `recs` to `out`.
    pub fn render(&mut self, recs: &[Record], out: &mut Vec<u8>) {
        for r in recs {
            if r.stream == Stream::Run {
                continue;
            }
            match self.open {
                Some(s) if s == r.stream => {}
                Some(_) => {
                    out.push(b'\n');
                    self.start_line(r, out);
                }
                None => self.start_line(r, out),
            }
            out.extend_from_slice(&r.text);
            if r.partial {
                self.open = Some(r.stream);
            } else {
                out.push(b'\n');
                self.open = None;
            }
        }
    }

    fn start_line(&self, r: &Record, out: &mut Vec<u8>) {
        if self.timestamps
            && let Some(at) = r.at
        {
            out.extend_from_slice(format_ts(at).as_bytes());
            out.push(b' ');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_old_lines_read_as_stdout() {
        let at = Timestamp::now();
        let mut out = Vec::new();
        encode(at, Stream::Stderr, true, b"a b  c", &mut out);
        assert_eq!(out.len(), TS_LEN + " err+ a b  c\n".len());
        let r = parse(&out[..out.len() - 1]);
        assert_eq!(
            r,
            Record {
                at: Some(at),
                stream: Stream::Stderr,
                partial: true,
                text: b"a b  c".to_vec()
            }
        );
        let old = parse(b"just a line");
        assert_eq!(
            (old.at, old.stream, old.text),
            (None, Stream::Stdout, b"just a line".to_vec())
        );
        let mut empty = Vec::new();
        encode(at, Stream::Stdout, false, b"", &mut empty);
        assert_eq!(parse(&empty[..empty.len() - 1]).text, b"");
    }

    #[test]
    fn framer_keeps_lines_whole_and_cuts_long_ones() {
        let mut f = Framer::new(Stream::Stdout);
        let mut got = Vec::new();
        let mut emit = |_: Stream, p: bool, t: &[u8]| got.push((p, t.to_vec()));
        f.push(b"one\ntw", &mut emit);
        f.push(b"o\nthr", &mut emit);
        f.flush(false, &mut emit);
        let long = vec![b'x'; MAX_RECORD_TEXT * 2 + 5];
        f.push(&long, &mut emit);
        f.push(b"\n", &mut emit);
        assert_eq!(got[0], (false, b"one".to_vec()));
        assert_eq!(got[1], (false, b"two".to_vec()));
        assert_eq!(got[2], (false, b"thr".to_vec()));
        assert!(got[3].0);
        assert!(got[4].0);
        assert_eq!(got[5], (false, b"xxxxx".to_vec()));
        assert_eq!(got.len(), 6);
    }
}
