//! `ktstr kernel info`: what ktstr can tell about a kernel before booting
//! it: release, image, config options it needs, and the struct layout its
//! BTF gives the walker.

use ktstr_walker::kernel::btf::{GroupReport, KernelBtf};
use serde::Serialize;

use super::Kernel;
use super::config::REQUIRED;

/// Layout groups that only some sched_ext kernels have in the form the
/// walker reads; without one the walker reads what stands in its place:
/// before 6.16 there is no `struct scx_sched` (the scheduler's state is in
/// globals), 6.16 has no per-CPU/per-node parts, 6.19's per-CPU part holds
/// no bypass DSQ (it is in `rq->scx`).
pub const VERSION_GATED: &[&str] = &["scx_sched", "scx_sched_pcpu", "scx_sched_pnode"];

/// Facts about one kernel, as printed by `ktstr kernel info`.
#[derive(Debug, Serialize)]
pub struct KernelInfo {
    /// Release from the image's banner.
    pub release: Option<String>,
    /// The file the vmlinux came from.
    pub source: String,
    /// bzImage (with its compression) or ELF.
    pub image: String,
    /// Size of the vmlinux ELF in bytes.
    pub vmlinux_bytes: usize,
    /// PVH entry point (physical), when the image has one.
    pub pvh_entry: Option<u32>,
    /// The config file, when found.
    pub config: Option<String>,
    /// Each required option and its value (`None`: unset or no config).
    pub required_options: Vec<(String, Option<String>)>,
    /// Why the BTF could not be read, if it could not.
    pub btf_error: Option<String>,
    /// The walker's struct groups as this kernel's BTF resolves them.
    pub layout: Vec<GroupReport>,
    /// Offset of `runqueues` in the per-CPU section.
    pub runqueues_percpu_offset: Option<u32>,
}

impl KernelInfo {
    /// Gather the facts about `kernel`.
    pub fn gather(kernel: &Kernel) -> Self {
        let source = kernel.image.source().display().to_string();
        let btf = KernelBtf::from_elf(kernel.image.elf_bytes(), &source);
        Self {
            btf_error: btf.as_ref().err().map(ToString::to_string),
            layout: btf
                .as_ref()
                .map(KernelBtf::layout_report)
                .unwrap_or_default(),
            runqueues_percpu_offset: btf
                .as_ref()
                .ok()
                .and_then(|b| b.percpu_var_offset("runqueues")),
            release: kernel.release.clone(),
            source: kernel.image.source().display().to_string(),
            image: format!("{:?}", kernel.image.kind()),
            vmlinux_bytes: kernel.image.elf_bytes().len(),
            pvh_entry: kernel.image.pvh_entry(),
            config: kernel.config_path.as_ref().map(|p| p.display().to_string()),
            required_options: REQUIRED
                .iter()
                .map(|(o, _)| {
                    let v = kernel
                        .config
                        .as_ref()
                        .and_then(|c| c.get(o))
                        .map(str::to_string);
                    (o.to_string(), v)
                })
                .collect(),
        }
    }

    /// Whether nothing ktstr needs is known to be missing: every group
    /// but the [`VERSION_GATED`] ones resolves, and the required options
    /// are set (when the config is known).
    pub fn usable(&self) -> bool {
        self.btf_error.is_none()
            && self
                .layout
                .iter()
                .all(|g| g.resolved() || VERSION_GATED.contains(&g.group))
            && self
                .required_options
                .iter()
                .all(|(_, v)| v.as_deref() == Some("y") || self.config.is_none())
    }

    /// The human-readable view.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
        s += &format!("release:   {}\n", or_unknown(&self.release));
        s += &format!("image:     {} ({})\n", self.source, self.image);
        s += &format!("vmlinux:   {} bytes\n", self.vmlinux_bytes);
        s += &format!(
            "pvh entry: {}\n",
            self.pvh_entry
                .map_or("none (cannot PVH-boot)".into(), |e| format!("{e:#x}"))
        );
        s += &format!("config:    {}\n", or_unknown(&self.config));
        for (o, v) in &self.required_options {
            let verdict = match (v.as_deref(), &self.config) {
                (Some("y"), _) => "ok",
                (_, None) => "unknown",
                _ => "MISSING",
            };
            s += &format!("  {o}={} {verdict}\n", v.as_deref().unwrap_or("(unset)"));
        }
        if let Some(e) = &self.btf_error {
            s += &format!("btf:       UNREADABLE: {e}\n");
            return s;
        }
        let ok = self.layout.iter().filter(|g| g.resolved()).count();
        s += &format!(
            "btf layout: {ok} of {} struct groups resolved\n",
            self.layout.len()
        );
        for g in &self.layout {
            let gated = VERSION_GATED.contains(&g.group);
            let status = match (g.struct_found, g.resolved(), gated) {
                (_, true, _) => format!("ok, {} bytes", g.size.unwrap_or(0)),
                (false, _, true) => "not in this kernel (fine: its layout predates it)".to_string(),
                (true, _, true) => format!(
                    "not in the walker's form here (lacks {}; fine: read elsewhere)",
                    g.missing_required.join(", ")
                ),
                (false, _, false) => "MISSING (no such struct)".to_string(),
                (true, _, false) => {
                    format!("MISSING required {}", g.missing_required.join(", "))
                }
            };
            s += &format!("  {:<18} {status}", g.group);
            if g.struct_found && !g.missing_optional.is_empty() {
                s += &format!(" (absent here: {})", g.missing_optional.join(", "));
            }
            s += "\n";
        }
        if let Some(o) = self.runqueues_percpu_offset {
            s += &format!("per-CPU runqueues at .data..percpu+{o:#x}\n");
        }
        if self
            .layout
            .iter()
            .any(|g| g.group == "scx_sched" && !g.struct_found)
        {
            s += "scheduler state: in globals (a kernel before 6.16: no scx_root)\n";
        }
        s += if self.usable() {
            "usable:    yes\n"
        } else {
            "usable:    NO (see MISSING above)\n"
        };
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &'static str, found: bool, missing: &[&'static str]) -> GroupReport {
        GroupReport {
            group: name,
            strukt: name,
            struct_found: found,
            size: found.then_some(64),
            missing_required: missing.to_vec(),
            missing_optional: Vec::new(),
        }
    }

    fn info(layout: Vec<GroupReport>) -> KernelInfo {
        KernelInfo {
            release: Some("6.16.12".into()),
            source: "fixture".into(),
            image: "Elf".into(),
            vmlinux_bytes: 1,
            pvh_entry: Some(0x100_0000),
            config: None,
            required_options: Vec::new(),
            btf_error: None,
            layout,
            runqueues_percpu_offset: None,
        }
    }

    // Fixture: the shapes `ktstr kernel info` found in the BTF of 6.16.12
    // (no per-CPU/per-node parts), 6.19.14 (a per-CPU part without a bypass
    // DSQ) and a built 6.12 (no scx_sched at all).
    #[test]
    fn version_gated_groups_may_be_absent_and_core_ones_may_not() {
        let v616 = info(vec![
            group("rq", true, &[]),
            group("scx_sched", true, &[]),
            group("scx_sched_pcpu", false, &[]),
            group("scx_sched_pnode", false, &[]),
        ]);
        assert!(v616.usable());
        let t = v616.to_text();
        assert!(t.contains("scx_sched_pcpu     not in this kernel"), "{t}");
        assert!(
            t.contains("usable:    yes") && !t.contains("MISSING"),
            "{t}"
        );
        let v619 = info(vec![group("scx_sched_pcpu", true, &["bypass_dsq"])]);
        assert!(v619.usable());
        assert!(v619.to_text().contains("lacks bypass_dsq"));
        let v612 = info(vec![group("scx_sched", false, &[])]);
        assert!(v612.usable());
        assert!(v612.to_text().contains("in globals"));
        let broken = info(vec![group("scx_dispatch_q", true, &["nr"])]);
        assert!(!broken.usable());
        assert!(broken.to_text().contains("MISSING required nr"));
        assert!(!info(vec![group("rq", false, &[])]).usable());
    }
}
