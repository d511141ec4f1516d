//! `ktstr kernel info`: what ktstr can tell about a kernel before booting
//! it: release, image, config options it needs, and the struct layout its
//! BTF gives the walker.

use ktstr_walker::kernel::btf::{GroupReport, KernelBtf};
use serde::Serialize;

use super::Kernel;
use super::config::REQUIRED;

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

    /// Whether nothing ktstr needs is known to be missing.
    pub fn usable(&self) -> bool {
        self.btf_error.is_none()
            && self.layout.iter().all(GroupReport::resolved)
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
            let status = match (g.struct_found, g.resolved()) {
                (false, _) => "MISSING (no such struct)".to_string(),
                (true, false) => format!("MISSING required {}", g.missing_required.join(", ")),
                (true, true) => format!("ok, {} bytes", g.size.unwrap_or(0)),
            };
            s += &format!("  {:<18} {status}", g.group);
            if !g.missing_optional.is_empty() {
                s += &format!(" (absent here: {})", g.missing_optional.join(", "));
            }
            s += "\n";
        }
        if let Some(o) = self.runqueues_percpu_offset {
            s += &format!("per-CPU runqueues at .data..percpu+{o:#x}\n");
        }
        s
    }
}
