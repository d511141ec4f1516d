//! Port-I/O devices and the bus that dispatches guest port accesses to
//! them by registered range.
//!
//! A device sees offsets into its own range; what it asks of the VM (power
//! off, reset) comes back from [`IoBus::write`] as a [`BusEvent`], so
//! devices know nothing of vCPUs or VM state.

pub mod power;
pub mod serial;

use std::sync::{Arc, Mutex, MutexGuard};

/// What a device write asks the VM to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusEvent {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset.
    Reset,
}

/// A device on the I/O bus.
pub trait PortDevice: Send {
    /// A guest read of `data.len()` bytes at `offset` into the device's
    /// range; `data` arrives filled with 0xff (an open bus).
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// A guest write at `offset` into the device's range.
    fn write(&mut self, offset: u16, data: &[u8]) -> Option<BusEvent>;
}

/// Why a device could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The range is empty or runs past port 0xffff.
    #[error("port range {base:#x}+{len} is empty or runs past 0xffff")]
    BadRange {
        /// First port.
        base: u16,
        /// Ports in the range.
        len: u16,
    },
    /// The range overlaps one already registered.
    #[error("port range {base:#x}+{len} overlaps {other:#x}+{other_len}")]
    Overlap {
        /// First port.
        base: u16,
        /// Ports in the range.
        len: u16,
        /// The registered range's first port.
        other: u16,
        /// Its length.
        other_len: u16,
    },
}

/// A shared device: the bus and its owner (e.g. the VM feeding a UART's
/// input) both hold it.
pub type SharedDevice = Arc<Mutex<dyn PortDevice>>;

struct Entry {
    base: u16,
    len: u16,
    device: SharedDevice,
}

/// Port ranges and the devices behind them.
#[derive(Default)]
pub struct IoBus {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for IoBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| (e.base, e.len)))
            .finish()
    }
}

fn lock(d: &SharedDevice) -> MutexGuard<'_, dyn PortDevice + 'static> {
    // A device that panicked mid-access keeps plain register state; the
    // guest is better served by a device that still answers.
    d.lock().unwrap_or_else(|e| e.into_inner())
}

impl IoBus {
    /// An empty bus.
    pub fn new() -> IoBus {
        IoBus::default()
    }

    /// Register `device` for ports `base..base + len`.
    pub fn insert(&mut self, base: u16, len: u16, device: SharedDevice) -> Result<(), BusError> {
        let end = u32::from(base) + u32::from(len);
        if len == 0 || end > 0x1_0000 {
            return Err(BusError::BadRange { base, len });
        }
        if let Some(e) = self.entries.iter().find(|e| {
            u32::from(e.base) < end && u32::from(base) < u32::from(e.base) + u32::from(e.len)
        }) {
            return Err(BusError::Overlap {
                base,
                len,
                other: e.base,
                other_len: e.len,
            });
        }
        self.entries.push(Entry { base, len, device });
        Ok(())
    }

    fn find(&self, port: u16) -> Option<(&Entry, u16)> {
        self.entries.iter().find_map(|e| {
            let offset = port.checked_sub(e.base)?;
            (offset < e.len).then_some((e, offset))
        })
    }

    /// A guest read: the device's answer, or all ones where no device is.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        if let Some((e, offset)) = self.find(port) {
            lock(&e.device).read(offset, data);
        }
    }

    /// A guest write; writes where no device is are dropped.
    pub fn write(&self, port: u16, data: &[u8]) -> Option<BusEvent> {
        let (e, offset) = self.find(port)?;
        lock(&e.device).write(offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last write; reads return the offset.
    struct Probe(Option<(u16, u8)>);

    impl PortDevice for Probe {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data[0] = offset as u8;
        }
        fn write(&mut self, offset: u16, data: &[u8]) -> Option<BusEvent> {
            self.0 = Some((offset, data[0]));
            (data[0] == 0xee).then_some(BusEvent::Reset)
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let probe = Arc::new(Mutex::new(Probe(None)));
        let mut bus = IoBus::new();
        bus.insert(0x3f8, 8, probe.clone()).unwrap();
        let mut b = [0u8; 1];
        bus.read(0x3fb, &mut b);
        assert_eq!(b, [3]);
        bus.read(0x400, &mut b);
        assert_eq!(b, [0xff], "no device: open bus");
        assert_eq!(bus.write(0x3f9, &[7]), None);
        assert_eq!(probe.lock().unwrap().0, Some((1, 7)));
        assert_eq!(bus.write(0x3f8, &[0xee]), Some(BusEvent::Reset));
        assert_eq!(bus.write(0x3f7, &[0xee]), None, "below the range");
    }

    #[test]
    fn refuses_overlaps_and_bad_ranges() {
        let mut bus = IoBus::new();
        let dev = || -> SharedDevice { Arc::new(Mutex::new(Probe(None))) };
        bus.insert(0x600, 2, dev()).unwrap();
        assert!(matches!(
            bus.insert(0x601, 1, dev()),
            Err(BusError::Overlap { other: 0x600, .. })
        ));
        assert!(matches!(
            bus.insert(0x5ff, 2, dev()),
            Err(BusError::Overlap { .. })
        ));
        bus.insert(0x602, 1, dev()).unwrap();
        assert!(matches!(
            bus.insert(0xffff, 2, dev()),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(0x10, 0, dev()),
            Err(BusError::BadRange { .. })
        ));
    }
}
