//! `ktstr kernel`: fetch, build, list, clean and inspect kernels.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use ktstr::kernel::Kernel;
use ktstr::kernel::build::{BuildOptions, BuildSource, build};
use ktstr::kernel::fetch::{FetchOptions, FetchedFrom, fetch};
use ktstr::kernel::info::KernelInfo;
use ktstr::kernel::version::looks_like_version;

use super::output::terminal_safe;

#[derive(Subcommand)]
pub enum KernelCommand {
    /// Download a Debian cloud kernel with sched_ext and BTF (the newest,
    /// or --release) from trixie or trixie-backports into the cache;
    /// prints its directory as the last line.
    Fetch {
        /// A version (`6.16`, `6.16.12`, `7.3.4+deb13`) or release
        /// (`7.3.4+deb13-cloud-amd64`): the newest matching one.
        #[arg(long)]
        release: Option<String>,
        /// Do not contact the archive; use what is cached.
        #[arg(long)]
        offline: bool,
        /// Also fetch the kernel's KVM modules (irqbypass, kvm, kvm-amd
        /// from its linux-modules package), for booting it as the L1 guest
        /// of the nested-virtualization tier (README: backends).
        #[arg(long)]
        kvm_modules: bool,
    },
    /// Build a kernel with ktstr's small config (tinyconfig + its harness
    /// fragment + yours) from a source tree, or from Debian's
    /// linux-source-X.Y package for a version (`6.12`); cached by source
    /// and config, so the same build twice builds once. Prints its
    /// directory as the last line.
    Build {
        /// A kernel source tree (built in place), or a version whose
        /// Debian linux-source package is downloaded and unpacked once.
        source: String,
        /// A config fragment (`CONFIG_X=y` lines) merged after ktstr's own;
        /// may be given several times.
        #[arg(long = "config-fragment", value_name = "FILE")]
        config_fragments: Vec<PathBuf>,
        /// Parallel make jobs (default: every core).
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
        /// Build even when the cache has this build.
        #[arg(long)]
        force: bool,
        /// Do not contact the archive (the source package must be cached).
        #[arg(long)]
        offline: bool,
    },
    /// List cached kernels: version, origin, sched_ext and BTF, size,
    /// last use.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove cached kernels (all, or those matching VERSION), keeping the
    /// --keep N most recently used.
    Clean {
        /// Only kernels matching this version (`6.16`, `6.16.12+deb13`).
        version: Option<String>,
        /// Keep the N most recently used of them.
        #[arg(long)]
        keep: Option<usize>,
        /// Instead, remove the unpacked kernel sources `kernel build`
        /// builds in (all, or those of VERSION); built kernels stay.
        #[arg(long, conflicts_with = "keep")]
        sources: bool,
    },
    /// Show what ktstr knows about a kernel: release, image, required config
    /// options, and the struct layout its BTF gives.
    Info {
        /// A bzImage, vmlinux, build directory, cache directory or cached
        /// release name.
        kernel: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Carry out one `ktstr kernel` command.
pub fn kernel(command: KernelCommand) -> anyhow::Result<ExitCode> {
    match command {
        KernelCommand::Fetch {
            release,
            offline,
            kvm_modules,
        } => fetch_cmd(FetchOptions { release, offline }, kvm_modules),
        KernelCommand::Build {
            source,
            config_fragments,
            jobs,
            force,
            offline,
        } => {
            let path = Path::new(&source);
            let source = if path.exists() || !looks_like_version(&source) {
                BuildSource::Tree(path.to_path_buf())
            } else {
                BuildSource::Version(source)
            };
            let built = build(&BuildOptions {
                source,
                fragments: config_fragments,
                jobs,
                force,
                offline,
            })?;
            if built.build_time.is_none() {
                tracing::info!("{} (cached)", built.name);
            }
            println!("{}", built.dir.display());
            Ok(ExitCode::SUCCESS)
        }
        KernelCommand::List { json } => list_cmd(json),
        KernelCommand::Clean {
            version,
            sources: true,
            ..
        } => removed(ktstr::kernel::build::clean_sources(version.as_deref())?),
        KernelCommand::Clean { version, keep, .. } => {
            let kernels = ktstr::cache::kernels_dir()?;
            let opts = ktstr::kernel::store::CleanOptions { keep, version };
            removed(ktstr::kernel::store::clean(&kernels, &opts)?)
        }
        KernelCommand::Info { kernel, json } => info_cmd(&kernel, json),
    }
}

fn fetch_cmd(opts: FetchOptions, kvm_modules: bool) -> anyhow::Result<ExitCode> {
    let got = fetch(&opts)?;
    match &got.from {
        FetchedFrom::Cache => tracing::info!("{} (cached)", got.release),
        FetchedFrom::Archive { suite } => {
            tracing::info!("{} (downloaded from {suite})", got.release)
        }
        FetchedFrom::StaleCache { reason } => eprintln!(
            "WARNING: could not ask the archive ({reason}); using the newest CACHED kernel {}, which may not be the newest available",
            got.release
        ),
    }
    if kvm_modules {
        for m in ktstr::kernel::modules::fetch_kvm_modules(&got.dir, opts.offline)? {
            tracing::info!("KVM module {}", m.display());
        }
    }
    println!("{}", got.dir.display());
    Ok(ExitCode::SUCCESS)
}

fn list_cmd(json: bool) -> anyhow::Result<ExitCode> {
    let kernels = ktstr::cache::kernels_dir()?;
    let all = ktstr::kernel::store::list(&kernels);
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else if all.is_empty() {
        println!("no kernels cached under {}", kernels.display());
    } else {
        print!("{}", kernel_table(&all));
    }
    Ok(ExitCode::SUCCESS)
}

/// What `kernel clean` removed.
fn removed(dirs: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    for d in &dirs {
        println!("removed {}", d.display());
    }
    if dirs.is_empty() {
        println!("nothing to remove");
    }
    Ok(ExitCode::SUCCESS)
}

/// `kernel info`: exits 1 when the kernel cannot be used for a run.
fn info_cmd(kernel: &str, json: bool) -> anyhow::Result<ExitCode> {
    let k = Kernel::resolve(kernel)?;
    let info = KernelInfo::gather(&k);
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", terminal_safe(&info.to_text()));
    }
    Ok(if info.usable() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `ktstr kernel list`'s table.
fn kernel_table(all: &[ktstr::kernel::store::CachedKernel]) -> String {
    let yn = |b: bool| if b { "yes" } else { "NO" };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut s = format!(
        "{:<28} {:<28} {:<9} {:<4} {:>8} {}\n",
        "VERSION", "SOURCE", "SCHED_EXT", "BTF", "SIZE", "LAST USED"
    );
    for k in all {
        let mut source = match &k.suite {
            Some(suite) => format!("{} ({suite})", k.origin),
            None => k.origin.to_string(),
        };
        if k.config_from_image {
            // Footnoted below the table.
            source.push('*');
        }
        let used = k.last_used.map_or("never".to_string(), |t| {
            let ago = std::time::Duration::from_secs(now.saturating_sub(t));
            let coarse: Vec<String> = humantime::format_duration(ago)
                .to_string()
                .split(' ')
                .take(2)
                .map(str::to_string)
                .collect();
            format!("{} ago", coarse.join(" "))
        });
        s += &format!(
            "{:<28} {:<28} {:<9} {:<4} {:>6}MB {}\n",
            k.release,
            source,
            yn(k.sched_ext),
            yn(k.btf),
            k.size / 1_000_000,
            used
        );
    }
    if all.iter().any(|k| k.config_from_image) {
        s += "* the archive has no config for it: sched_ext and BTF were checked in the image's BTF\n";
    }
    s
}
