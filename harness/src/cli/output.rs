//! What every command shares: errors and guest text made fit for a
//! terminal, the interrupt handler, the progress spinner.

use std::io::{IsTerminal, Write};

/// An error and its causes, each said once: errors that print their source
/// and also chain it would otherwise repeat it.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// `text` with the control characters a guest or a file may have put in
/// it (escape sequences that would drive the terminal) shown as `\xNN`;
/// newlines and tabs stay.
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.contains(bad) {
        return text.into();
    }
    // Serial consoles end lines with \r\n; only a lone \r is suspect.
    text.replace("\r\n", "\n")
        .chars()
        .map(|c| {
            if bad(c) {
                format!("\\x{:02x}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Ctrl-C, SIGTERM, SIGHUP: no destructor runs when the process exits from
/// the handler, so stop the VMs and remove their files there.
pub fn install_interrupt_handler() -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        ktstr::vm::kill_all();
        // stderr may be gone with the terminal: no panic over it.
        let _ = writeln!(std::io::stderr(), "ktstr: interrupted");
        std::process::exit(130);
    })?;
    Ok(())
}

/// A spinner with the current phase on a terminal; nothing otherwise (the
/// log lines say enough in CI logs).
pub struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    pub fn new() -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Progress(Some(bar))
    }

    pub fn set(&self, phase: &str) {
        if let Some(b) = &self.0 {
            b.set_message(phase.to_string());
        }
    }

    /// Whether it draws on a terminal.
    pub fn is_terminal(&self) -> bool {
        self.0.is_some()
    }

    /// Clear it.
    pub fn done(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let io = std::io::Error::other("is a FIFO");
        let e = anyhow::Error::new(io)
            .context("cannot read core file x: is a FIFO")
            .context("dumping");
        assert_eq!(
            error_text(&e),
            "dumping: cannot read core file x: is a FIFO"
        );
    }

    #[test]
    fn guest_text_cannot_drive_the_terminal() {
        let hostile = "comm \u{1b}]0;owned\u{7}\u{1b}[2Jx\ry\r\n\tok";
        let safe = terminal_safe(hostile);
        assert!(!safe.contains('\u{1b}') && !safe.contains('\r') && !safe.contains('\u{7}'));
        assert_eq!(safe, "comm \\x1b]0;owned\\x07\\x1b[2Jx\\x0dy\n\tok");
        assert!(matches!(
            terminal_safe("plain\n"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
