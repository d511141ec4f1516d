//! The VMM's port I/O as a hostile guest drives it: arbitrary reads and
//! writes of any width to any port, on the bus the VM builds (two UARTs,
//! the ACPI sleep and reset registers, the i8042 reset line), with host
//! input queued in between. Never a panic; guest output and host input
//! stay within their bounds.
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use ktstr_vmm::devices::IoBus;
use ktstr_vmm::devices::power::{
    AcpiSleep, I8042_COMMAND_PORT, I8042Reset, RESET_CONTROL_PORT, ResetControl, SLEEP_CONTROL_PORT,
};
use ktstr_vmm::devices::serial::{COM1_BASE, COM2_BASE, Output, UART_PORTS, Uart};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, Arbitrary)]
enum Op {
    Read { port: u16, width: u8 },
    Write { port: u16, data: Vec<u8> },
    Send(Vec<u8>),
}

const OUTPUT_LIMIT: usize = 4096;

fuzz_target!(|ops: Vec<Op>| {
    let out = Arc::new(Output::new(OUTPUT_LIMIT));
    let uart =
        |o: &Arc<Output>| Arc::new(Mutex::new(Uart::new(EventFd::new(0).unwrap(), o.clone())));
    let com2 = uart(&out);
    let mut bus = IoBus::new();
    bus.insert(COM1_BASE, UART_PORTS, uart(&out)).unwrap();
    bus.insert(COM2_BASE, UART_PORTS, com2.clone()).unwrap();
    bus.insert(SLEEP_CONTROL_PORT, 2, Arc::new(Mutex::new(AcpiSleep)))
        .unwrap();
    bus.insert(RESET_CONTROL_PORT, 1, Arc::new(Mutex::new(ResetControl)))
        .unwrap();
    bus.insert(I8042_COMMAND_PORT, 1, Arc::new(Mutex::new(I8042Reset)))
        .unwrap();
    for op in ops.iter().take(4096) {
        match op {
            Op::Read { port, width } => {
                // KVM hands over 1, 2 or 4 bytes; be harsher.
                let mut data = vec![0u8; usize::from(*width % 9)];
                bus.read(*port, &mut data);
            }
            Op::Write { port, data } => {
                let _ = bus.write(*port, &data[..data.len().min(8)]);
            }
            Op::Send(data) => {
                let n = com2.lock().unwrap().send(data);
                assert!(n <= data.len());
            }
        }
    }
    assert!(out.bytes().len() <= OUTPUT_LIMIT);
});
