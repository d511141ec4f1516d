//! ELF note records (`Elf64_Nhdr` + name + descriptor).
//!
//! Linux (vmlinux `.notes`, `/proc/vmcore`) and QEMU's `dump-guest-memory`
//! pad both the name and the descriptor to 4 bytes in 64-bit files too,
//! whatever the segment's `p_align` says, so this walker always uses 4.

/// One note: who wrote it (`name`), what it is (`n_type`) and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note<'a> {
    /// Owner name without its trailing NUL(s), e.g. `b"CORE"`, `b"QEMU"`.
    pub name: &'a [u8],
    /// Note type, meaningful per owner (e.g. `NT_PRSTATUS` = 1 for `CORE`).
    pub n_type: u32,
    /// Descriptor bytes.
    pub desc: &'a [u8],
}

/// A note area did not hold whole note records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "malformed ELF note at byte {offset:#x} of a {len:#x}-byte note area: \
     its header, name or descriptor runs past the area (the file is truncated or corrupt)"
)]
pub struct NoteError {
    /// Offset of the bad note within the area.
    pub offset: usize,
    /// Length of the note area.
    pub len: usize,
}

/// Iterator over the notes of one note area (a `PT_NOTE` segment's bytes).
///
/// Yields `Err` once for a note that does not fit, then stops.
#[derive(Debug, Clone)]
pub struct Notes<'a> {
    data: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Notes<'a> {
    /// Notes packed in `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            failed: false,
        }
    }
}

const NHDR_SIZE: usize = 12;

fn align4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|v| v & !3)
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

impl<'a> Iterator for Notes<'a> {
    type Item = Result<Note<'a>, NoteError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Every step advances `pos` by at least NHDR_SIZE or stops.
        if self.failed || self.data.len().saturating_sub(self.pos) < NHDR_SIZE {
            return None;
        }
        let start = self.pos;
        let err = NoteError {
            offset: start,
            len: self.data.len(),
        };
        let parsed = (|| {
            let namesz = usize::try_from(u32_at(self.data, start)?).ok()?;
            let descsz = usize::try_from(u32_at(self.data, start + 4)?).ok()?;
            let n_type = u32_at(self.data, start + 8)?;
            let name_at = start + NHDR_SIZE;
            let name_end = name_at.checked_add(namesz)?;
            let name = self.data.get(name_at..name_end)?;
            let desc_at = align4(name_end)?;
            let desc_end = desc_at.checked_add(descsz)?;
            let desc = self.data.get(desc_at..desc_end)?;
            // The last note's padding may be cut off at the area's end.
            let next = align4(desc_end)?.min(self.data.len());
            let name = match name.iter().position(|&b| b == 0) {
                Some(nul) => name.get(..nul)?,
                None => name,
            };
            Some((Note { name, n_type, desc }, next))
        })();
        match parsed {
            Some((note, next)) => {
                self.pos = next;
                Some(Ok(note))
            }
            None => {
                self.failed = true;
                Some(Err(err))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn note(name: &[u8], n_type: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&n_type.to_le_bytes());
        v.extend_from_slice(name);
        v.push(0);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v.extend_from_slice(desc);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn walks_padded_notes() {
        let mut area = note(b"Linux", 0x100, b"7.3.4\0");
        area.extend(note(b"Xen", 18, &[0x60, 0x01, 0x8c, 0x03]));
        let notes: Vec<_> = Notes::new(&area).collect::<Result<_, _>>().unwrap();
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[0].name, b"Linux");
        assert_eq!(notes[0].n_type, 0x100);
        assert_eq!(notes[0].desc, b"7.3.4\0");
        assert_eq!(notes[1].name, b"Xen");
        assert_eq!(notes[1].desc, [0x60, 0x01, 0x8c, 0x03]);
    }

    #[test]
    fn truncated_note_is_an_error_once() {
        let area = note(b"CORE", 1, &[7u8; 40]);
        let cut = &area[..area.len() - 8];
        let mut it = Notes::new(cut);
        assert_eq!(
            it.next(),
            Some(Err(NoteError {
                offset: 0,
                len: cut.len()
            }))
        );
        assert_eq!(it.next(), None);
        // A huge descsz must not overflow or allocate.
        let mut big = note(b"CORE", 1, &[]);
        big[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Notes::new(&big).next(), Some(Err(_))));
    }
}
