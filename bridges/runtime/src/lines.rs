//! Splitting a byte stream (an SSH channel, a file, stdin) into lines with a
//! size limit, for line-oriented sources such as `gerrit stream-events`.
//!
//! A line longer than the limit is not buffered whole: its first bytes are
//! kept for the dead-letter file, the rest is skipped up to the next
//! newline, and the stream goes on. Bytes left without a newline when the
//! stream ends are reported as cut off.

/// One piece of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its `\n`.
    Complete(Vec<u8>),
    /// A line over the limit: its first bytes and its full length.
    TooLong { prefix: Vec<u8>, len: usize },
    /// The stream ended in the middle of a line.
    CutOff(Vec<u8>),
}

/// Incremental line splitter.
#[derive(Debug)]
pub struct Lines {
    buf: Vec<u8>,
    max: usize,
    /// Length so far of an over-long line being skipped.
    skipping: Option<usize>,
}

impl Lines {
    /// Lines up to `max` bytes.
    pub fn new(max: usize) -> Lines {
        Lines {
            buf: Vec::new(),
            max,
            skipping: None,
        }
    }

    /// Feeds bytes; returns the lines they complete.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let nl = data.iter().position(|b| *b == b'\n');
            let chunk = &data[..nl.unwrap_or(data.len())];
            match self.skipping.as_mut() {
                Some(len) => *len += chunk.len(),
                None => {
                    let old = self.buf.len();
                    let room = self.max.saturating_sub(old);
                    if chunk.len() > room {
                        let keep = room.min(crate::deadletter::MAX_KEPT.saturating_sub(old));
                        self.buf.extend_from_slice(&chunk[..keep]);
                        self.skipping = Some(old + chunk.len());
                    } else {
                        self.buf.extend_from_slice(chunk);
                    }
                }
            }
            match nl {
                Some(i) => {
                    let line = std::mem::take(&mut self.buf);
                    out.push(match self.skipping.take() {
                        Some(len) => Line::TooLong {
                            prefix: line[..line.len().min(crate::deadletter::MAX_KEPT)].to_vec(),
                            len,
                        },
                        None => Line::Complete(line),
                    });
                    data = &data[i + 1..];
                }
                None => break,
            }
        }
        out
    }

    /// The stream ended: anything pending was cut off.
    pub fn finish(&mut self) -> Option<Line> {
        let len = self.skipping.take();
        let rest = std::mem::take(&mut self.buf);
        match len {
            Some(len) => Some(Line::TooLong { prefix: rest, len }),
            None if rest.iter().all(u8::is_ascii_whitespace) => None,
            None => Some(Line::CutOff(rest)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_across_pushes_limits_and_cut_off() {
        let mut l = Lines::new(8);
        assert_eq!(l.push(b"ab"), vec![]);
        assert_eq!(
            l.push(b"c\nde\n"),
            vec![
                Line::Complete(b"abc".to_vec()),
                Line::Complete(b"de".to_vec())
            ]
        );
        let got = l.push(b"0123456789abc\nok\n");
        assert_eq!(
            got,
            vec![
                Line::TooLong {
                    prefix: b"01234567".to_vec(),
                    len: 13
                },
                Line::Complete(b"ok".to_vec())
            ]
        );
        // Over the limit across several pushes.
        assert_eq!(l.push(b"0123456"), vec![]);
        assert_eq!(l.push(b"789"), vec![]);
        assert_eq!(
            l.push(b"x\n"),
            vec![Line::TooLong {
                prefix: b"01234567".to_vec(),
                len: 11
            }]
        );
        assert_eq!(l.push(b"{\"half"), vec![]);
        assert_eq!(l.finish(), Some(Line::CutOff(b"{\"half".to_vec())));
        assert_eq!(l.finish(), None);
    }
}
