//! How a guest powers off and resets: the ACPI hardware-reduced sleep
//! control register (S5, announced by the FADT and the DSDT's `\_S5_`),
//! the PCI reset control register at 0xcf9 (also the FADT's reset
//! register), and the i8042 reset line (`reboot=k`).

use super::{BusEvent, PortDevice};

/// The sleep control register (FADT `SLEEP_CONTROL_REG`).
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// The sleep status register (FADT `SLEEP_STATUS_REG`); always reads 0
/// (no wake event pending).
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// The PCI reset control register.
pub const RESET_CONTROL_PORT: u16 = 0xcf9;
/// What the FADT tells the guest to write to [`RESET_CONTROL_PORT`]
/// (system reset | reset CPU).
pub const RESET_VALUE: u8 = 0x06;
/// The i8042 command port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// The `SLP_TYP` value the DSDT's `\_S5_` package gives for soft-off.
pub const S5_SLEEP_TYPE: u8 = 5;

/// `SLEEP_CONTROL_REG` bits (ACPI 6.5, 4.8.3.7): SLP_TYP in 2..=4, SLP_EN
/// in 5.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;
const SLP_EN: u8 = 1 << 5;
/// 0xcf9 bit 2 starts the reset.
const RST_CPU: u8 = 1 << 2;
/// i8042 command: pulse the reset line.
const I8042_PULSE_RESET: u8 = 0xfe;

/// Sleep control at offset 0 and sleep status at offset 1.
#[derive(Debug, Default)]
pub struct AcpiSleep;

impl PortDevice for AcpiSleep {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<BusEvent> {
        let value = *data.first()?;
        // Only S5 is announced; a write of any other sleep type (which a
        // guest has no business making) is ignored.
        let s5 = offset == 0
            && value & SLP_EN != 0
            && (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == S5_SLEEP_TYPE;
        s5.then_some(BusEvent::PowerOff)
    }
}

/// The PCI reset control register.
#[derive(Debug, Default)]
pub struct ResetControl;

impl PortDevice for ResetControl {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> Option<BusEvent> {
        (data.first()? & RST_CPU != 0).then_some(BusEvent::Reset)
    }
}

/// The i8042's command port, only for its reset line: there is no
/// keyboard controller behind it (reads float high, as with none).
#[derive(Debug, Default)]
pub struct I8042Reset;

impl PortDevice for I8042Reset {
    fn read(&mut self, _offset: u16, _data: &mut [u8]) {}

    fn write(&mut self, _offset: u16, data: &[u8]) -> Option<BusEvent> {
        (*data.first()? == I8042_PULSE_RESET).then_some(BusEvent::Reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off_and_nothing_else_does() {
        let mut d = AcpiSleep;
        // What Linux's acpi_hw_extended_sleep writes for \_S5_ = 5.
        assert_eq!(d.write(0, &[(5 << 2) | 0x20]), Some(BusEvent::PowerOff));
        assert_eq!(d.write(0, &[5 << 2]), None, "SLP_EN clear");
        assert_eq!(d.write(0, &[(3 << 2) | 0x20]), None, "S3 is not offered");
        assert_eq!(d.write(1, &[(5 << 2) | 0x20]), None, "the status register");
        assert_eq!(d.write(0, &[]), None);
        let mut b = [0xff];
        d.read(1, &mut b);
        assert_eq!(b, [0], "no wake status");
    }

    #[test]
    fn reset_lines() {
        assert_eq!(ResetControl.write(0, &[RESET_VALUE]), Some(BusEvent::Reset));
        assert_eq!(ResetControl.write(0, &[0x02]), None, "only SYS_RST");
        assert_eq!(I8042Reset.write(0, &[0xfe]), Some(BusEvent::Reset));
        assert_eq!(I8042Reset.write(0, &[0xd1]), None);
    }
}
