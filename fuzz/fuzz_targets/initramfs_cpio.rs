//! The initramfs writer and the newc reader. Arbitrary entries (files,
//! links, directories; paths with any bytes) written by
//! `Initramfs::write_cpio` must read back unchanged with the cpio crate's
//! reader, the one the tests use; and arbitrary bytes fed to that reader
//! end in a value, never a panic or an endless loop. A path under
//! `/TRAILER!!!` (the archive's end marker) is refused.
#![no_main]

use std::collections::BTreeMap;
use std::io::Read;

use arbitrary::Arbitrary;
use ktstr::initramfs::{Initramfs, InitramfsError, TRAILER};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Item {
    File(String, Vec<u8>, u16),
    Link(String, String),
    Dir(String),
}

#[derive(Arbitrary, Debug)]
enum Input {
    Build(Vec<Item>),
    Raw(Vec<u8>),
}

/// Upper bound on entries read back: each takes at least a 110-byte header.
fn max_entries(len: usize) -> usize {
    len / 110 + 1
}

/// Every entry of a newc stream, name -> (mode, data); `None` where the
/// stream is malformed.
fn read_all(mut bytes: &[u8]) -> Option<BTreeMap<String, (u32, Vec<u8>)>> {
    let mut out = BTreeMap::new();
    for _ in 0..max_entries(bytes.len()) {
        let mut r = cpio::NewcReader::new(bytes).ok()?;
        if r.entry().is_trailer() {
            return Some(out);
        }
        let (name, mode) = (r.entry().name().to_string(), r.entry().mode());
        let mut data = Vec::new();
        // The header's size is guest-independent here but still bounded
        // by what is left of the input.
        r.by_ref()
            .take(bytes.len() as u64)
            .read_to_end(&mut data)
            .ok()?;
        out.insert(name, (mode, data));
        bytes = r.finish().ok()?;
    }
    panic!("more entries than the input can hold");
}

/// Whether `p` is inside the writer's contract given what the archive
/// already holds (`taken`: archive path -> is a directory): an absolute
/// path without empty components or NULs, not given before as something else, not
/// under a file or link, and (for a file or link) not a parent of an
/// earlier path.
fn fits(p: &str, dir: bool, taken: &BTreeMap<String, bool>) -> bool {
    let Some(rel) = p.strip_prefix('/') else {
        return false;
    };
    // newc names are NUL-terminated: a NUL cannot be in one.
    if rel.contains('\0') || rel.split('/').any(str::is_empty) {
        return false;
    }
    taken.iter().all(|(k, &k_dir)| {
        if k == rel {
            return dir && k_dir;
        }
        let under = |a: &str, b: &str| a.strip_prefix(b).is_some_and(|r| r.starts_with('/'));
        (k_dir || !under(rel, k)) && (dir || !under(k, rel))
    })
}

fuzz_target!(|inp: Input| {
    match inp {
        Input::Raw(bytes) => {
            let _ = read_all(&bytes);
        }
        Input::Build(items) => {
            let mut ar = Initramfs::default();
            let mut want: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
            let mut taken: BTreeMap<String, bool> = BTreeMap::new();
            for item in items.into_iter().take(64) {
                let (p, dir) = match &item {
                    Item::File(p, ..) | Item::Link(p, _) => (p, false),
                    Item::Dir(p) => (p, true),
                };
                if !fits(p, dir, &taken) {
                    continue;
                }
                let rel = p[1..].to_string();
                let trailer = rel.split('/').next() == Some(TRAILER);
                let added = match item {
                    Item::File(p, data, mode) => {
                        let mode = u32::from(mode) & 0o7777;
                        ar.file(&p, data.clone(), mode)
                            .map(|()| Some((0o100000 | mode, data)))
                    }
                    Item::Link(p, t) => ar
                        .symlink(&p, &t)
                        .map(|()| Some((0o120777, t.into_bytes()))),
                    Item::Dir(p) => ar.directory(&p).map(|()| None),
                };
                // The one path the writer refuses: it would end the archive.
                match added {
                    Err(InitramfsError::Reserved(_)) if trailer => continue,
                    Err(e) => panic!("{rel}: {e}"),
                    Ok(_) if trailer => panic!("{rel} was accepted"),
                    Ok(Some(entry)) => {
                        want.insert(rel.clone(), entry);
                    }
                    Ok(None) => {}
                }
                taken.insert(rel, dir);
            }
            let bytes = ar.to_cpio();
            let got = read_all(&bytes).expect("the writer's archive reads back");
            for (name, entry) in &want {
                assert_eq!(got.get(name), Some(entry), "{name}");
            }
            // Everything else is a parent directory the writer added.
            for (name, (mode, _)) in &got {
                assert!(want.contains_key(name) || *mode == 0o040755, "{name}");
            }
        }
    }
});
