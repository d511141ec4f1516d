//! `ktstr kernel info`: what ktstr can tell about a kernel before booting
//! it: release, image, config options it needs, and the struct layout its
//! BTF gives the walker.

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
}

impl KernelInfo {
    /// Gather the facts about `kernel`.
    pub fn gather(kernel: &Kernel) -> Self {
        Self {
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
        self.required_options
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
        s
    }
}
