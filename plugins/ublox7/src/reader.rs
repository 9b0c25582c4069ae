//! Cutting a serial byte stream into NMEA sentences, resynchronising on `$` after anything that
//! is not one: binary UBX frames, noise, bytes at the wrong baud rate, cut or over-long lines.
//! Every dropped byte and line is counted. No I/O.

/// The longest sentence kept. NMEA 0183 allows 82 characters; some receivers exceed it a little.
pub const MAX_LINE: usize = 120;

/// What the reader dropped and kept.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReaderStats {
    /// Bytes outside any sentence (binary frames, noise).
    pub garbage_bytes: u64,
    /// Sentences cut short by the next `$`.
    pub cut_lines: u64,
    /// Sentences longer than [`MAX_LINE`].
    pub too_long: u64,
    /// Sentences holding a byte that is not printable ASCII (wrong baud rate, noise).
    pub bad_bytes: u64,
    /// Sentences without a `*hh` checksum.
    pub no_checksum: u64,
    /// Sentences whose checksum does not match.
    pub bad_checksum: u64,
    /// Sentences with a good checksum that the NMEA parser could not read, or whose numbers
    /// no receiver sends (NaN or infinite, a latitude past the poles, 60 or more minutes, a
    /// speed or altitude beyond the receiver's limits).
    pub malformed: u64,
    /// Good sentences of a type this plugin does not use (TXT, ZDA, ...).
    pub ignored: u64,
    /// Good sentences used.
    pub sentences: u64,
}

impl ReaderStats {
    /// These counts and `other`'s added (the counts of a port closed before, and of the one
    /// open now).
    pub fn plus(&self, other: &ReaderStats) -> ReaderStats {
        ReaderStats {
            garbage_bytes: self.garbage_bytes + other.garbage_bytes,
            cut_lines: self.cut_lines + other.cut_lines,
            too_long: self.too_long + other.too_long,
            bad_bytes: self.bad_bytes + other.bad_bytes,
            no_checksum: self.no_checksum + other.no_checksum,
            bad_checksum: self.bad_checksum + other.bad_checksum,
            malformed: self.malformed + other.malformed,
            ignored: self.ignored + other.ignored,
            sentences: self.sentences + other.sentences,
        }
    }

    /// Everything dropped, as one number.
    pub fn dropped(&self) -> u64 {
        self.cut_lines
            + self.too_long
            + self.bad_bytes
            + self.no_checksum
            + self.bad_checksum
            + self.malformed
    }
}

/// Collects bytes into lines that start with `$`.
#[derive(Debug, Default)]
pub struct LineReader {
    line: Vec<u8>,
    in_line: bool,
    /// Counters.
    pub stats: ReaderStats,
}

impl LineReader {
    /// Feeds bytes; `on_line` gets each complete line (without `\r\n`).
    pub fn push(&mut self, bytes: &[u8], mut on_line: impl FnMut(&str, &mut ReaderStats)) {
        for &b in bytes {
            match b {
                b'$' => {
                    if self.in_line && self.line.len() > 1 {
                        self.stats.cut_lines += 1;
                    }
                    self.line.clear();
                    self.line.push(b);
                    self.in_line = true;
                }
                _ if !self.in_line => {
                    if b != b'\r' && b != b'\n' {
                        self.stats.garbage_bytes += 1;
                    }
                }
                b'\n' => {
                    self.in_line = false;
                    if self.line.last() == Some(&b'\r') {
                        self.line.pop();
                    }
                    // Only printable ASCII was let in, so this is valid UTF-8.
                    if let Ok(s) = std::str::from_utf8(&self.line) {
                        on_line(s, &mut self.stats);
                    }
                    self.line.clear();
                }
                b'\r' | 0x20..=0x7e => {
                    self.line.push(b);
                    if self.line.len() > MAX_LINE {
                        self.stats.too_long += 1;
                        self.in_line = false;
                        self.line.clear();
                    }
                }
                _ => {
                    self.stats.bad_bytes += 1;
                    self.stats.garbage_bytes += 1;
                    self.in_line = false;
                    self.line.clear();
                }
            }
        }
    }
}

/// Checks `$...*hh`: the XOR of the characters between `$` and `*` must be `hh`.
pub fn checksum_ok(line: &str) -> Result<(), ChecksumError> {
    let body = line.strip_prefix('$').ok_or(ChecksumError::Missing)?;
    let (data, sum) = body.rsplit_once('*').ok_or(ChecksumError::Missing)?;
    let stated = u8::from_str_radix(sum.trim_end(), 16).map_err(|_| ChecksumError::Missing)?;
    if sum.trim_end().len() != 2 {
        return Err(ChecksumError::Missing);
    }
    let actual = data.bytes().fold(0u8, |a, b| a ^ b);
    if actual == stated {
        Ok(())
    } else {
        Err(ChecksumError::Mismatch)
    }
}

/// Why a checksum was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumError {
    /// No `*hh` at the end.
    Missing,
    /// `hh` is not the XOR of the sentence.
    Mismatch,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(r: &mut LineReader, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        r.push(bytes, |l, _| out.push(l.to_owned()));
        out
    }

    #[test]
    fn splits_lines_and_strips_crlf() {
        let mut r = LineReader::default();
        assert_eq!(lines(&mut r, b"$GPA*00\r\n$GPB"), ["$GPA*00"]);
        assert_eq!(lines(&mut r, b"*01\r\n"), ["$GPB*01"]);
        assert_eq!(r.stats, ReaderStats::default());
    }

    #[test]
    fn resynchronises_after_binary_and_cut_lines() {
        let mut r = LineReader::default();
        let mut input = b"\xb5\x62\x01\x07\x5c\x00garbage$GPCUT,1,2$GPOK*00\r\n".to_vec();
        input.extend_from_slice(b"$GPX,\xff\xfe*00\r\n$GPY*00\n");
        assert_eq!(lines(&mut r, &input), ["$GPOK*00", "$GPY*00"]);
        assert_eq!(r.stats.cut_lines, 1);
        assert_eq!(r.stats.bad_bytes, 1);
        assert_eq!(
            r.stats.garbage_bytes,
            6 + 7 + 1 + 4,
            "UBX header, `garbage`, 0xff, then `\\xfe*00` of the bad line"
        );
    }

    #[test]
    fn drops_over_long_lines() {
        let mut r = LineReader::default();
        let mut input = b"$GP".to_vec();
        input.extend(std::iter::repeat_n(b'A', 500));
        input.extend_from_slice(b"\r\n$GPOK*00\r\n");
        assert_eq!(lines(&mut r, &input), ["$GPOK*00"]);
        assert_eq!(r.stats.too_long, 1);
    }

    #[test]
    fn checksums() {
        assert_eq!(checksum_ok("$GPVTG,,T,,M,0.016,N,0.030,K,A*27"), Ok(()));
        assert_eq!(
            checksum_ok("$GPVTG,,T,,M,0.016,N,0.030,K,A*28"),
            Err(ChecksumError::Mismatch)
        );
        assert_eq!(
            checksum_ok("$GPVTG,,T,,M,0.016,N,0.030,K,A"),
            Err(ChecksumError::Missing)
        );
        assert_eq!(checksum_ok("$GPVTG*2"), Err(ChecksumError::Missing));
    }
}
