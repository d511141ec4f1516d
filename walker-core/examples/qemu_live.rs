//! Dump a running QEMU guest from outside, as any VMM-side tool could:
//! map its RAM file (`-object memory-backend-file,...,mem-path=FILE,share=on
//! -machine memory-backend=...`) into a vm-memory `GuestMemoryMmap`, read a
//! vCPU's CR3/CR4 and pause/resume over QMP (`-qmp unix:SOCK,server=on,wait=off`).
//! With at most 2 GiB of RAM on q35, file offset = guest-physical address.
//!
//! `cargo run -p ktstr-walker --features embed,vm-memory --example qemu_live -- QMP_SOCK RAM_FILE VMLINUX`

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use ktstr_walker::discover::VcpuRegs;
use ktstr_walker::embed::{Dumper, Kernel, Pause};
use ktstr_walker::kernel::vmlinux::Vmlinux;
use ktstr_walker::mem::VmGuestMemory;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [sock, ram, vmlinux] = &a[..] else {
        return Err("usage: qemu_live QMP_SOCK RAM_FILE VMLINUX".into());
    };
    let kernel = Kernel::from_vmlinux(&Vmlinux::open(vmlinux)?)?;
    // Guest RAM, mapped read-only: the walker never writes guest memory.
    let file = std::fs::File::open(ram)?;
    let size = file.metadata()?.len() as usize;
    let region = MmapRegion::<()>::build(
        Some(FileOffset::new(file, 0)),
        size,
        libc::PROT_READ,
        libc::MAP_SHARED,
    )?;
    let guest = GuestMemoryMmap::from_regions(vec![
        GuestRegionMmap::new(region, GuestAddress(0)).ok_or("region")?,
    ])?;
    let mem = VmGuestMemory(&guest);
    let mut qmp = Qmp::connect(sock)?;
    let info =
        qmp.cmd(r#""human-monitor-command","arguments":{"command-line":"info registers"}"#)?;
    let regs = VcpuRegs {
        cr3: register(&info, "CR3=")?,
        cr4: register(&info, "CR4=")?,
    };
    let mut dumper = Dumper::discover(kernel, &mem, regs)?; // once per boot
    let stopping = Instant::now();
    qmp.cmd(r#""stop""#)?;
    let stopped = Instant::now();
    let captured = dumper.capture(&mem); // reads only, no allocation
    let resuming = Instant::now();
    qmp.cmd(r#""cont""#)?;
    let pause = Pause::timed(stopping, stopped, resuming, Instant::now());
    print!("{}", captured.report(Some(pause)).to_text());
    Ok(())
}

/// The hex value after `name` in `info registers` (first vCPU).
fn register(info: &str, name: &str) -> Result<u64, Error> {
    let at = info.find(name).ok_or("no such register")? + name.len();
    let hex = info.get(at..).unwrap_or_default();
    let end = hex
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(hex.len());
    Ok(u64::from_str_radix(hex.get(..end).unwrap_or_default(), 16)?)
}

/// A minimal QMP client: one command at a time, its reply line.
struct Qmp(BufReader<UnixStream>);

impl Qmp {
    fn connect(path: &str) -> Result<Self, Error> {
        let sock = UnixStream::connect(path)?;
        // QMP serves one client at a time: do not wait forever for a turn.
        sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        let mut q = Qmp(BufReader::new(sock));
        q.reply()?; // the greeting
        q.cmd(r#""qmp_capabilities""#)?;
        Ok(q)
    }
    fn cmd(&mut self, execute: &str) -> Result<String, Error> {
        writeln!(self.0.get_mut(), "{{\"execute\":{execute}}}")?;
        self.reply()
    }
    /// The next line that is not an event.
    fn reply(&mut self) -> Result<String, Error> {
        for _ in 0..1000 {
            let mut line = String::new();
            if self.0.read_line(&mut line)? == 0 {
                return Err("QMP closed".into());
            }
            if line.contains("\"error\"") {
                return Err(line.into());
            }
            if !line.contains("\"event\"") {
                return Ok(line);
            }
        }
        Err("no QMP reply".into())
    }
}
