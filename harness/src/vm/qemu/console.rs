//! The guest console on disk, bounded: QEMU writes COM1 to its stdout, a
//! host thread copies it to `console.log` and, when the file would pass
//! its limit, rewrites it as a note of what was dropped followed by the
//! newest half of the limit. A guest printing in a loop costs the host at
//! most the limit on disk and half of it in memory.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::thread::JoinHandle;

/// Most bytes `console.log` holds (plus the one-line note).
pub const DEFAULT_LIMIT: u64 = 8 << 20;

/// [`DEFAULT_LIMIT`], or `KTSTR_CONSOLE_MAX_BYTES` when set (tests of a
/// flooding guest use a small one).
pub fn limit() -> u64 {
    std::env::var("KTSTR_CONSOLE_MAX_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n: &u64| n >= 2)
        .unwrap_or(DEFAULT_LIMIT)
}

/// Copy `src` to a new file at `path` until `src` ends, keeping the file
/// within `limit` bytes (plus the note). The thread ends when every writer
/// of `src` is gone (QEMU exited).
pub fn spawn(
    src: impl Read + Send + 'static,
    path: &Path,
    limit: u64,
) -> std::io::Result<JoinHandle<()>> {
    let file = File::create(path)?;
    std::thread::Builder::new()
        .name("ktstr-console".into())
        .spawn(move || {
            if let Err(e) = copy_bounded(src, file, limit) {
                tracing::debug!("console log: {e}");
            }
        })
}

/// The copy loop of [`spawn`].
fn copy_bounded(mut src: impl Read, mut out: File, limit: u64) -> std::io::Result<()> {
    let keep = usize::try_from(limit / 2).unwrap_or(usize::MAX);
    let mut newest: VecDeque<u8> = VecDeque::new();
    let mut in_file = 0u64;
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        total += n as u64;
        newest.extend(chunk);
        let excess = newest.len().saturating_sub(keep);
        newest.drain(..excess);
        if in_file + n as u64 <= limit {
            out.write_all(chunk)?;
            in_file += n as u64;
            continue;
        }
        // Rewrite in place: no second file in the VM's directory, which
        // is removed while this thread may still run.
        let dropped = total - newest.len() as u64;
        let note =
            format!("[ktstr: {dropped} earlier console bytes dropped to keep this file small]\n");
        out.seek(SeekFrom::Start(0))?;
        out.write_all(note.as_bytes())?;
        let (a, b) = newest.as_slices();
        out.write_all(a)?;
        out.write_all(b)?;
        in_file = newest.len() as u64;
        out.set_len(note.len() as u64 + in_file)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that yields `total` bytes of numbered lines, in reads of
    /// varying size, like a guest printing in a loop.
    struct Flood {
        sent: u64,
        total: u64,
    }

    impl Read for Flood {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = (self.total - self.sent)
                .min(buf.len() as u64)
                .min(1000 + self.sent % 7000);
            for (i, b) in buf.iter_mut().take(n as usize).enumerate() {
                let at = self.sent + i as u64;
                *b = if at % 16 == 15 {
                    b'\n'
                } else {
                    b'a' + (at / 16 % 26) as u8
                };
            }
            self.sent += n;
            Ok(n as usize)
        }
    }

    #[test]
    fn a_flood_keeps_the_file_within_the_limit_with_the_newest_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let (limit, total) = (64 << 10, 10 << 20);
        spawn(Flood { sent: 0, total }, &path, limit)
            .unwrap()
            .join()
            .unwrap();
        let text = std::fs::read(&path).unwrap();
        let (note, rest) = text.split_at(text.iter().position(|&b| b == b'\n').unwrap() + 1);
        let note = String::from_utf8_lossy(note);
        assert!(rest.len() as u64 <= limit, "{} bytes kept", rest.len());
        assert!(rest.len() as u64 >= limit / 2, "{} bytes kept", rest.len());
        assert_eq!(
            note,
            format!(
                "[ktstr: {} earlier console bytes dropped to keep this file small]\n",
                total - rest.len() as u64
            )
        );
        // The kept bytes are the last ones sent, in order.
        let mut want = Vec::new();
        let mut f = Flood { sent: 0, total };
        f.read_to_end(&mut want).unwrap();
        assert_eq!(rest, &want[want.len() - rest.len()..]);
    }

    #[test]
    fn a_short_console_is_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        spawn(&b"Linux version 7\nhello\n"[..], &path, 1 << 20)
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"Linux version 7\nhello\n");
    }
}
