//! From serial bytes to epochs: [`LineReader`] + checksum + the `nmea` crate + [`Assembler`].
//! No I/O; the source feeds it what the port (or a replay) delivers.

use crate::{
    epoch::{Assembler, Epoch},
    reader::{checksum_ok, ChecksumError, LineReader, ReaderStats},
};
use nmea::{Error, ParseResult};

/// Decodes a byte stream into epochs.
#[derive(Debug, Default)]
pub struct Decoder {
    reader: LineReader,
    assembler: Assembler,
}

/// What one line turned into.
enum Line {
    Sentence(Box<ParseResult>),
    /// A GSV: talker id and satellites in view. Read from the fields directly, since the `nmea`
    /// crate refuses the valid `$GPGSV,1,1,00*79` that a receiver without satellites sends.
    InView(String, u16),
    Dropped,
}

/// The talker and satellites-in-view field of a `$xxGSV,total,number,in_view,...` sentence.
fn gsv_in_view(line: &str) -> Option<(String, u16)> {
    let body = line.strip_prefix('$')?.split('*').next()?;
    let mut fields = body.split(',');
    let head = fields.next()?;
    if head.len() != 5 || !head.ends_with("GSV") {
        return None;
    }
    let n = fields.nth(2)?.parse().ok()?;
    Some((head[..2].to_owned(), n))
}

fn decode_line(line: &str, stats: &mut ReaderStats) -> Line {
    match checksum_ok(line) {
        Err(ChecksumError::Missing) => {
            stats.no_checksum += 1;
            return Line::Dropped;
        }
        Err(ChecksumError::Mismatch) => {
            stats.bad_checksum += 1;
            return Line::Dropped;
        }
        Ok(()) => {}
    }
    if let Some((talker, n)) = gsv_in_view(line) {
        stats.sentences += 1;
        return Line::InView(talker, n);
    }
    match nmea::parse_str(line) {
        Ok(ParseResult::TXT(_)) => {
            stats.ignored += 1;
            Line::Dropped
        }
        Ok(s) => {
            stats.sentences += 1;
            Line::Sentence(Box::new(s))
        }
        Err(Error::Unsupported(_) | Error::Unknown(_) | Error::DisabledSentence) => {
            stats.ignored += 1;
            Line::Dropped
        }
        Err(_) => {
            stats.malformed += 1;
            Line::Dropped
        }
    }
}

impl Decoder {
    /// Feeds bytes; returns the epochs they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Epoch> {
        let mut out = Vec::new();
        let assembler = &mut self.assembler;
        self.reader
            .push(bytes, |line, stats| match decode_line(line, stats) {
                Line::Sentence(s) => out.extend(assembler.push(&s)),
                Line::InView(talker, n) => assembler.in_view(&talker, n),
                Line::Dropped => {}
            });
        out
    }

    /// Ends the epoch in progress (the line went quiet).
    pub fn flush(&mut self) -> Option<Epoch> {
        self.assembler.flush()
    }

    /// Counters.
    pub fn stats(&self) -> &ReaderStats {
        &self.reader.stats
    }
}
