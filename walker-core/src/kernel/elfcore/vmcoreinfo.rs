//! The kernel's VMCOREINFO note: `KEY=value` lines that describe the running
//! kernel to dump tools (`OSRELEASE=`, `SYMBOL(runqueues)=ffff...`,
//! `KERNELOFFSET=`, `NUMBER(phys_base)=`, `OFFSET(list_head.next)=`, ...).

use std::string::String;
use std::vec::Vec;

use crate::Symbols;

/// Parsed VMCOREINFO text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmcoreInfo {
    entries: Vec<(String, String)>,
    skipped: usize,
}

impl VmcoreInfo {
    /// Parse VMCOREINFO text; lines without `=` or not UTF-8 are skipped and
    /// counted, a trailing NUL padding is ignored.
    pub fn parse(text: &[u8]) -> Self {
        let mut info = Self::default();
        for line in text.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(|&b| b == 0) {
                continue;
            }
            let parsed = core::str::from_utf8(line)
                .ok()
                .and_then(|l| l.split_once('='))
                .filter(|(k, _)| !k.is_empty());
            match parsed {
                Some((k, v)) => info.entries.push((String::from(k), String::from(v))),
                None => info.skipped += 1,
            }
        }
        info
    }

    /// The value of `key` (e.g. `OSRELEASE`, `SYMBOL(scx_tasks)`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All entries in note order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Lines that were not `KEY=value`.
    pub fn skipped_lines(&self) -> usize {
        self.skipped
    }

    /// `SYMBOL(name)`: a runtime (KASLR-applied) kernel virtual address.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        let v = self.get(&std::format!("SYMBOL({name})"))?;
        u64::from_str_radix(v.trim(), 16).ok()
    }

    /// `NUMBER(name)`, printed by the kernel as a signed decimal.
    pub fn number(&self, name: &str) -> Option<i64> {
        self.get(&std::format!("NUMBER({name})"))?
            .trim()
            .parse()
            .ok()
    }

    /// `OFFSET(struct.member)` in bytes.
    pub fn offset(&self, name: &str) -> Option<u64> {
        self.get(&std::format!("OFFSET({name})"))?
            .trim()
            .parse()
            .ok()
    }

    /// `SIZE(name)` in bytes.
    pub fn size(&self, name: &str) -> Option<u64> {
        self.get(&std::format!("SIZE({name})"))?.trim().parse().ok()
    }

    /// `KERNELOFFSET`: the KASLR slide of the kernel image.
    pub fn kernel_offset(&self) -> Option<u64> {
        u64::from_str_radix(self.get("KERNELOFFSET")?.trim(), 16).ok()
    }

    /// `OSRELEASE`: the kernel release (`uname -r`).
    pub fn osrelease(&self) -> Option<&str> {
        self.get("OSRELEASE")
    }

    /// `BUILD-ID`: the hex GNU build-id of the kernel that wrote the core
    /// (kernels since 5.9 write it).
    pub fn build_id(&self) -> Option<&str> {
        self.get("BUILD-ID").map(str::trim)
    }

    /// Every `SYMBOL(..)` entry that [`Symbols`] has a slot for.
    pub fn symbols(&self) -> Symbols {
        let mut s = Symbols::default();
        for name in Symbols::NAMES {
            if let Some(addr) = self.symbol(name) {
                s.set(name, addr);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_style_text() {
        // Shaped like the kernel's vmcoreinfo_append_str() output.
        let text = b"OSRELEASE=7.3.4+deb13-cloud-amd64\nPAGESIZE=4096\nBUILD-ID=1fe99684\n\
            SYMBOL(runqueues)=ffffffff83cf1e40\nSYMBOL(bogus)=zz\n\
            OFFSET(list_head.next)=0\nSIZE(list_head)=16\nNUMBER(phys_base)=-2097152\n\
            KERNELOFFSET=1c000000\ngarbage line\n\xff\xfe=1\n\0\0\0";
        let v = VmcoreInfo::parse(text);
        assert_eq!(v.osrelease(), Some("7.3.4+deb13-cloud-amd64"));
        assert_eq!(v.build_id(), Some("1fe99684"));
        assert_eq!(v.symbol("runqueues"), Some(0xffff_ffff_83cf_1e40));
        assert_eq!(v.symbol("bogus"), None);
        assert_eq!(v.symbol("missing"), None);
        assert_eq!(v.offset("list_head.next"), Some(0));
        assert_eq!(v.size("list_head"), Some(16));
        assert_eq!(v.number("phys_base"), Some(-2_097_152));
        assert_eq!(v.kernel_offset(), Some(0x1c00_0000));
        assert_eq!(v.skipped_lines(), 2);
        let s = v.symbols();
        assert_eq!(s.runqueues, Some(0xffff_ffff_83cf_1e40));
        assert_eq!(s.scx_tasks, None);
    }
}
