//! Host <-> guest messages: the job the host hands the agent, and the
//! framed messages the agent sends back over its serial port.
//!
//! A frame is one line: `KTSTR <version> <length> <json>`, where `length`
//! is the byte length of the JSON text. The version lets a host refuse an
//! agent it does not understand instead of misreading it; the length
//! catches a line that lost or gained bytes on the way.

use serde::{Deserialize, Serialize};

/// Version of the frame format and of [`Job`]/[`Msg`].
pub const VERSION: u32 = 2;

/// Where the agent finds its job in the guest, when the initramfs has one.
pub const JOB_PATH: &str = "/ktstr/job.json";

/// The kernel symbols the agent reports from `/proc/kallsyms` at boot,
/// one name a line (in the initramfs: they are the same for every job).
pub const KALLSYMS_PATH: &str = "/ktstr/kallsyms";

/// Where the agent waits for its job when the initramfs has none: the
/// third serial port, one frame (see [`encode_job`]). A guest waiting
/// there is the same for every job, so the host may snapshot it and
/// start later VMs from that moment.
pub const JOB_PORT: &str = "/dev/ttyS2";

/// Argument that turns the agent binary into a worker process.
pub const WORKER_ARG: &str = "--ktstr-worker";

const MAGIC: &str = "KTSTR";

/// What the host asks the guest to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// [`VERSION`] of the host that wrote it.
    pub version: u32,
    /// The scheduler to start, or `None` for the kernel's default.
    pub scheduler: Option<SchedulerJob>,
    /// cgroups (v2, under `/sys/fs/cgroup`) and their workers, started
    /// once the scheduler is attached.
    pub cgroups: Vec<CgroupJob>,
    /// Changes during the run, in time order.
    pub steps: Vec<Step>,
    /// How long the workload runs.
    pub duration_ms: u64,
    /// Instead of a workload: an interactive shell on the console; the
    /// run ends when it exits.
    #[serde(default)]
    pub shell: bool,
}

/// A cgroup with its workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupJob {
    /// Directory name under `/sys/fs/cgroup`.
    pub name: String,
    /// `cpuset.cpus`, or `None` to leave the cgroup on every CPU.
    pub cpus: Option<Vec<u32>>,
    /// Its workers.
    pub workers: Vec<WorkerSpec>,
    /// `cpu.weight` (1..=10000; the kernel's default is 100).
    #[serde(default)]
    pub weight: Option<u32>,
    /// `cpu.max`: at most `quota_us` of CPU time per `period_us`.
    #[serde(default)]
    pub cpu_max: Option<CpuMax>,
}

/// A cgroup's CPU bandwidth limit (`cpu.max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuMax {
    /// CPU time allowed per period.
    pub quota_us: u64,
    /// The period.
    pub period_us: u64,
}

/// A change at a point of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// When, from the start of the workload.
    pub at_ms: u64,
    /// What.
    pub action: StepAction,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepAction {
    /// Rewrite a cgroup's `cpuset.cpus` (`None`: every CPU).
    SetCpus {
        /// The cgroup.
        cgroup: String,
        /// The new CPUs.
        cpus: Option<Vec<u32>>,
    },
    /// Create a cgroup and start its workers.
    AddCgroup(CgroupJob),
    /// Stop a cgroup's workers and remove it.
    RemoveCgroup {
        /// The cgroup.
        cgroup: String,
    },
    /// Move every worker of one cgroup into another.
    MoveWorkers {
        /// From.
        from: String,
        /// To.
        to: String,
    },
    /// Take a CPU offline or bring it back (CPU hotplug).
    Hotplug {
        /// The CPU.
        cpu: u32,
        /// Online (true) or offline.
        online: bool,
    },
    /// Change the CPU affinity of every worker of a cgroup.
    SetAffinity {
        /// The cgroup.
        cgroup: String,
        /// The CPUs.
        cpus: Vec<u32>,
    },
    /// Rewrite a cgroup's `cpu.weight`.
    SetWeight {
        /// The cgroup.
        cgroup: String,
        /// The weight.
        weight: u32,
    },
}

/// A scheduler binary inside the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerJob {
    /// Path in the guest.
    pub path: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment (e.g. `LD_LIBRARY_PATH`).
    pub env: Vec<(String, String)>,
    /// How long to wait for `/sys/kernel/sched_ext/state` to read `enabled`.
    pub attach_timeout_ms: u64,
}

/// A group of identical workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Name, also the workers' comm (truncated to 15 bytes by the kernel).
    pub name: String,
    /// How many.
    pub count: u32,
    /// What each does.
    pub work: Work,
    /// Scheduling policy.
    pub policy: Policy,
    /// Nice value (-20..=19) for the normal policies, priority (1..=99)
    /// for the real-time ones.
    pub nice: i32,
    /// CPUs the workers may run on (`sched_setaffinity`), within their
    /// cgroup's cpuset.
    pub affinity: Option<Vec<u32>>,
}

impl WorkerSpec {
    /// `count` workers doing `work`, normal policy, nice 0, no affinity.
    pub fn new(name: &str, count: u32, work: Work) -> WorkerSpec {
        WorkerSpec {
            name: name.to_string(),
            count,
            work,
            policy: Policy::Normal,
            nice: 0,
            affinity: None,
        }
    }
}

/// What a worker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    /// Burn CPU without sleeping.
    Spin,
    /// Run for `run_us`, sleep for `sleep_us`, again.
    DutyCycle {
        /// Busy part.
        run_us: u64,
        /// Sleeping part.
        sleep_us: u64,
    },
    /// A little work, then `sched_yield`, again.
    Yield,
    /// Fork a child that exits at once, wait for it, again.
    ForkExit,
    /// Two threads waking each other through pipes (one round trip is one
    /// iteration): wakeup latency.
    PingPong,
    /// Sleep `interval_us`, again (cyclictest): how late each wakeup is.
    Cyclic {
        /// The sleep.
        interval_us: u64,
    },
    /// `pairs` sender/receiver thread pairs exchanging 100-byte messages
    /// over pipes or Unix sockets (hackbench): messages are iterations,
    /// delivery delay is the wakeup latency.
    Messages {
        /// Sender/receiver pairs.
        pairs: u32,
        /// Unix stream sockets instead of pipes.
        sockets: bool,
    },
    /// Fork a child that execs `/bin/busybox true`, wait for it, again.
    ForkExec,
    /// `waiters` threads blocked on one futex, all woken at once, again
    /// (a thundering herd): each wakeup's delay is measured.
    FutexHerd {
        /// Threads woken together.
        waiters: u32,
    },
    /// A producer and a consumer thread over a queue of `depth` items:
    /// items are iterations, queueing delay the wakeup latency.
    ProducerConsumer {
        /// Queue capacity.
        depth: u32,
    },
    /// Block in `poll` until a helper thread writes `block_us` later (a
    /// task that waits on I/O): the wake delay past `block_us` is measured.
    Blocking {
        /// How long each wait lasts.
        block_us: u64,
    },
    /// Touch `mib` MiB of memory, placed by `mbind` on NUMA node `node`
    /// (`preferred`: MPOL_PREFERRED, else MPOL_BIND), page after page;
    /// reports the share of pages on another node than the CPU's.
    MemTouch {
        /// Memory size.
        mib: u32,
        /// The node, or `None` for the default policy.
        node: Option<u32>,
        /// Preferred instead of bound.
        preferred: bool,
    },
}

/// A scheduling policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// SCHED_NORMAL.
    Normal,
    /// SCHED_BATCH.
    Batch,
    /// SCHED_IDLE.
    Idle,
    /// SCHED_FIFO.
    Fifo,
    /// SCHED_RR.
    RoundRobin,
}

/// `/sys/kernel/sched_ext/state`: the kernel's `scx_enable_state` names.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScxState {
    /// A BPF scheduler is attached.
    Enabled,
    /// None is.
    #[default]
    Disabled,
    /// One is attaching.
    Enabling,
    /// One is being detached.
    Disabling,
    /// Anything else the file said, or why it could not be read.
    #[serde(untagged)]
    Other(String),
}

impl ScxState {
    /// The state as the file names it.
    pub fn parse(text: &str) -> ScxState {
        match text.trim() {
            "enabled" => ScxState::Enabled,
            "disabled" => ScxState::Disabled,
            "enabling" => ScxState::Enabling,
            "disabling" => ScxState::Disabling,
            other => ScxState::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for ScxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScxState::Enabled => "enabled",
            ScxState::Disabled => "disabled",
            ScxState::Enabling => "enabling",
            ScxState::Disabling => "disabling",
            ScxState::Other(s) => s,
        })
    }
}

/// `/sys/kernel/sched_ext` as the guest read it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SchedExtState {
    /// `/sys/kernel/sched_ext/state`.
    pub state: ScxState,
    /// `/sys/kernel/sched_ext/root/ops`: the attached scheduler's name.
    pub ops: Option<String>,
}

/// A worker the agent started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Its group's name.
    pub name: String,
    /// Its cgroup.
    pub cgroup: String,
    /// Its pid in the guest.
    pub pid: i32,
    /// Its comm, as the guest's `/proc/<pid>/comm` reads.
    pub comm: String,
}

/// What a worker did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    /// Its group's name.
    pub name: String,
    /// Its cgroup (where it was started).
    pub cgroup: String,
    /// Its pid in the guest.
    pub pid: i32,
    /// Units of work done.
    pub iterations: u64,
    /// CPU time used (user + system).
    pub cpu_ms: u64,
    /// Wall time it ran for.
    pub wall_ms: u64,
    /// Longest time it was kept from running when it wanted to (between
    /// two iterations, minus any sleep it asked for): the scheduling
    /// latency seen from inside.
    pub max_gap_us: u64,
    /// Wakeup latency (wake-based work): worst.
    pub wake_max_us: Option<u64>,
    /// Wakeup latency: mean.
    pub wake_avg_us: Option<u64>,
    /// Wakeup latency percentiles: 50th, 99th, 99.9th.
    #[serde(default)]
    pub wake_pct_us: Option<Percentiles>,
    /// Share of memory pages on another NUMA node than the worker's CPU,
    /// in thousandths (memory work only).
    #[serde(default)]
    pub remote_permille: Option<u32>,
    /// Times it was seen on another CPU than the time before.
    pub migrations: u64,
    /// CPUs it was seen on.
    pub cpus: Vec<u32>,
    /// Why it ended badly, if it did.
    pub error: Option<String>,
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 99th.
    pub p99: u64,
    /// 99.9th.
    pub p999: u64,
    /// How many samples they are of.
    pub samples: u64,
}

/// A message from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    /// First message: who is talking.
    Hello {
        /// Agent version (the crate's).
        agent: String,
        /// `uname -r`.
        release: String,
        /// Online CPUs.
        nr_cpus: u32,
        /// NUMA nodes (`/sys/devices/system/node/node*`).
        numa_nodes: u32,
        /// `/proc/cmdline`.
        cmdline: String,
    },
    /// The initramfs has no job: the agent waits for one on [`JOB_PORT`]
    /// and does nothing else until it comes.
    Ready,
    /// The `/proc/kallsyms` lines of the symbols [`KALLSYMS_PATH`] names.
    Kallsyms {
        /// Lines in kallsyms format.
        text: String,
    },
    /// The scheduler attached.
    SchedulerAttached {
        /// Its pid.
        pid: i32,
        /// `/sys/kernel/sched_ext/root/ops`.
        ops: String,
        /// Time from start to attach.
        after_ms: u64,
    },
    /// The scheduler did not attach.
    SchedulerFailed {
        /// What happened.
        reason: String,
        /// The tail of its output.
        output: String,
    },
    /// Workers are running: a good moment to freeze.
    Running {
        /// Every worker started.
        workers: Vec<WorkerInfo>,
        /// sched_ext as of now.
        sched_ext: SchedExtState,
    },
    /// The workload ended.
    Finished {
        /// Per worker.
        workers: Vec<WorkerResult>,
        /// sched_ext after the workers ended, before the scheduler stopped.
        sched_ext: SchedExtState,
        /// How the scheduler ended, if it ended before it was stopped.
        scheduler_exit: Option<String>,
        /// The tail of the scheduler's output.
        scheduler_output: String,
        /// Per 500 ms window of the workload, each CPU's busy share in
        /// thousandths (`u16::MAX`: offline then).
        #[serde(default)]
        cpu_busy: Vec<Vec<u16>>,
    },
    /// The agent could not go on.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// Why a line is not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// It does not start with the frame magic.
    #[error("not a ktstr frame")]
    NotAFrame,
    /// The header is malformed.
    #[error("malformed frame header")]
    Header,
    /// The agent speaks another version.
    #[error("agent speaks protocol version {0}, this host speaks {VERSION}: rebuild ktstr")]
    Version(u32),
    /// The JSON is not as long as the header says.
    #[error("frame says {declared} bytes of JSON, line has {actual}")]
    Length {
        /// From the header.
        declared: usize,
        /// Found.
        actual: usize,
    },
    /// The JSON is not a message.
    #[error("frame JSON: {0}")]
    Json(String),
    /// A line grew past [`MAX_FRAME`] without ending.
    #[error("a line of more than {0} bytes from the agent channel: not the agent speaking")]
    TooLong(usize),
}

/// The longest frame a host accepts. The agent's largest (the results,
/// with the scheduler's output tail) are kilobytes.
pub const MAX_FRAME: usize = 8 << 20;

/// `msg` as one framed line, newline included.
pub fn encode(msg: &Msg) -> String {
    let json = serde_json::to_string(msg).unwrap_or_else(|e| {
        // Unreachable for these types; still a frame rather than a panic.
        format!(r#"{{"type":"error","message":"cannot encode a message: {e}"}}"#)
    });
    frame(&json)
}

/// `job` as one framed line for [`JOB_PORT`], newline included.
pub fn encode_job(job: &Job) -> String {
    frame(&serde_json::to_string(job).expect("a job serializes"))
}

fn frame(json: &str) -> String {
    format!("{MAGIC} {VERSION} {} {json}\n", json.len())
}

/// The message in one line (trailing `\r`/`\n` ignored).
pub fn decode(line: &str) -> Result<Msg, FrameError> {
    decode_frame(line)
}

/// The job in one line from [`JOB_PORT`] (trailing `\r`/`\n` ignored).
pub fn decode_job(line: &str) -> Result<Job, FrameError> {
    decode_frame(line)
}

fn decode_frame<T: serde::de::DeserializeOwned>(line: &str) -> Result<T, FrameError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let rest = line
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or(FrameError::NotAFrame)?;
    let mut parts = rest.splitn(3, ' ');
    let (Some(version), Some(len), Some(json)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(FrameError::Header);
    };
    let version: u32 = version.parse().map_err(|_| FrameError::Header)?;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let declared: usize = len.parse().map_err(|_| FrameError::Header)?;
    if declared != json.len() {
        return Err(FrameError::Length {
            declared,
            actual: json.len(),
        });
    }
    serde_json::from_str(json).map_err(|e| FrameError::Json(e.to_string()))
}

/// Noise lines a [`FrameReader`] keeps for error reports; later ones are
/// only counted.
const MAX_NOISE_LINES: usize = 50;
/// Bytes of a noise line kept.
const MAX_NOISE_LINE: usize = 200;

/// Frames out of a byte stream that may carry anything (a serial port
/// the kernel also writes to, a hostile guest): lines that are not frames
/// are kept as noise up to a bound, and no line is buffered past
/// [`MAX_FRAME`].
#[derive(Debug, Default)]
pub struct FrameReader {
    partial: Vec<u8>,
    /// The first lines that were not frames.
    pub noise: Vec<String>,
    /// Noise lines not kept.
    pub noise_dropped: u64,
}

impl FrameReader {
    /// A reader at the start of a stream.
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Messages completed by `bytes`, the stream's next output. A frame of
    /// another protocol version is an error (nothing the agent says can be
    /// trusted), and so is a line longer than [`MAX_FRAME`] (the guest is
    /// not speaking the protocol).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Msg>, FrameError> {
        self.partial.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            match decode(&line) {
                Ok(m) => out.push(m),
                Err(e @ FrameError::Version(_)) => return Err(e),
                Err(_) if line.trim().is_empty() => {}
                Err(e) if self.noise.len() < MAX_NOISE_LINES => {
                    let text: String = line.trim_end().chars().take(MAX_NOISE_LINE).collect();
                    self.noise.push(format!("{text}: {e}"));
                }
                Err(_) => self.noise_dropped += 1,
            }
        }
        if self.partial.len() > MAX_FRAME {
            self.partial = Vec::new();
            return Err(FrameError::TooLong(MAX_FRAME));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scx_states_keep_the_kernels_words_on_the_wire() {
        for (text, state) in [
            ("enabled\n", ScxState::Enabled),
            ("disabling", ScxState::Disabling),
            (
                "unreadable: ENOENT",
                ScxState::Other("unreadable: ENOENT".into()),
            ),
        ] {
            let parsed = ScxState::parse(text);
            assert_eq!(parsed, state);
            let json = serde_json::to_string(&parsed).unwrap();
            assert_eq!(json, format!("{:?}", text.trim()));
            assert_eq!(serde_json::from_str::<ScxState>(&json).unwrap(), state);
        }
    }

    #[test]
    fn a_hostile_stream_cannot_grow_memory() {
        let mut r = FrameReader::new();
        // Endless noise: kept up to a bound, counted past it, each line cut.
        let line = format!("{}\n", "x".repeat(10_000));
        for _ in 0..1000 {
            assert!(r.feed(line.as_bytes()).unwrap().is_empty());
        }
        assert_eq!(r.noise.len(), MAX_NOISE_LINES);
        assert_eq!(r.noise_dropped, 1000 - MAX_NOISE_LINES as u64);
        assert!(r.noise.iter().all(|l| l.len() < MAX_NOISE_LINE + 100));
        // A line that never ends.
        let chunk = vec![b'y'; 1 << 20];
        let mut fed = 0;
        let err = loop {
            match r.feed(&chunk) {
                Ok(_) => fed += chunk.len(),
                Err(e) => break e,
            }
            assert!(fed <= MAX_FRAME, "buffered past the bound");
        };
        assert!(matches!(err, FrameError::TooLong(_)), "{err}");
        // The next frame still decodes.
        let msg = Msg::Error {
            message: "after".into(),
        };
        let mut bytes = b"\n".to_vec();
        bytes.extend(encode(&msg).into_bytes());
        assert_eq!(r.feed(&bytes).unwrap(), vec![msg]);
    }

    fn sample() -> Msg {
        Msg::Running {
            workers: vec![WorkerInfo {
                name: "spin".into(),
                cgroup: "a".into(),
                pid: 42,
                comm: "spin \"quoted\"\n".into(),
            }],
            sched_ext: SchedExtState {
                state: ScxState::Enabled,
                ops: Some("bpfland_1.1.4".into()),
            },
        }
    }

    #[test]
    fn frames_round_trip_through_a_tty() {
        let line = encode(&sample());
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        // A tty's ONLCR turns the newline into CR LF.
        let tty = line.replace('\n', "\r\n");
        assert_eq!(decode(&tty), Ok(sample()));
    }

    #[test]
    fn damaged_frames_are_refused() {
        let line = encode(&sample());
        assert_eq!(
            decode("[    1.0] random console"),
            Err(FrameError::NotAFrame)
        );
        assert_eq!(decode("KTSTR 1"), Err(FrameError::Header));
        assert_eq!(
            decode(&line.replacen(
                &format!("KTSTR {VERSION}"),
                &format!("KTSTR {}", VERSION + 1),
                1
            )),
            Err(FrameError::Version(VERSION + 1))
        );
        let short = line.replacen("spin", "spi", 1);
        assert!(matches!(decode(&short), Err(FrameError::Length { .. })));
        let body = r#"{"type":"nope"}"#;
        assert!(matches!(
            decode(&format!("KTSTR {VERSION} {} {body}", body.len())),
            Err(FrameError::Json(_))
        ));
    }

    #[test]
    fn job_round_trips() {
        let job = Job {
            version: VERSION,
            scheduler: Some(SchedulerJob {
                path: "/ktstr/bin/scx_bpfland".into(),
                args: vec![],
                env: vec![("LD_LIBRARY_PATH".into(), "/lib".into())],
                attach_timeout_ms: 10_000,
            }),
            cgroups: vec![CgroupJob {
                name: "a".into(),
                cpus: Some(vec![0, 1]),
                weight: Some(200),
                cpu_max: Some(CpuMax {
                    quota_us: 50_000,
                    period_us: 100_000,
                }),
                workers: vec![WorkerSpec::new(
                    "spin",
                    2,
                    Work::DutyCycle {
                        run_us: 10,
                        sleep_us: 20,
                    },
                )],
            }],
            steps: vec![Step {
                at_ms: 5,
                action: StepAction::SetCpus {
                    cgroup: "a".into(),
                    cpus: None,
                },
            }],
            duration_ms: 1000,
            shell: false,
        };
        let text = serde_json::to_string(&job).unwrap();
        assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), job);
        // As a frame for the job port, through a tty's CR LF.
        let line = encode_job(&job);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        assert_eq!(decode_job(&line.replace('\n', "\r\n")), Ok(job));
        // A message is not a job.
        assert!(matches!(
            decode_job(&encode(&Msg::Ready)),
            Err(FrameError::Json(_))
        ));
    }
}
