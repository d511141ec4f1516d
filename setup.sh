#!/usr/bin/env bash
# Set up ktstr on a fresh Debian/Ubuntu machine and run its main job on a
# default: install what it needs, build it, fetch the default sched_ext
# kernel into ~/.cache/ktstr and show what ktstr reads from it.
# Idempotent: a second run installs and downloads nothing.
set -euo pipefail
cd "$(dirname "$0")"

SUDO=
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
step() { printf '\n== %s\n' "$*" >&2; }

step "system packages"
# qemu: the VM backend; busybox-static: the guest userland; dwarves
# (pahole) and bpftool: independent BTF readers the tests compare against;
# zstd/xz/lz4/gzip: real compressors for the kernel-image tests;
# debian-archive-keyring: verifies the kernel packages; libc6-dev: the
# static libc the guest agent links; clang-19, libelf-dev, zlib1g-dev,
# pkg-config: building scx_bpfland and the workspace's fixture scheduler
# (scx-fixture/; BPF C needs a recent clang); acpica-tools (iasl): an
# independent AML disassembler the VMM's ACPI tests read the DSDT with.
# make, gcc, flex, bison, bc (and libelf-dev, dwarves): `ktstr kernel
# build`, which builds the pre-6.16 sched_ext kernel below.
# --no-install-recommends: qemu's recommends pull hundreds of packages.
pkgs=(qemu-system-x86 busybox-static dwarves bpftool zstd xz-utils lz4 gzip
      ca-certificates debian-archive-keyring libc6-dev
      clang-19 libelf-dev zlib1g-dev pkg-config acpica-tools
      make gcc flex bison bc)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update -q
    # bpftool is not packaged everywhere (Ubuntu ships it in linux-tools).
    if ! apt-cache show bpftool >/dev/null 2>&1; then
        missing=("${missing[@]/bpftool}")
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends ${missing[@]}
fi

step "rust toolchain pieces"
# The no_std proof builds the walker for a bare-metal target.
rustup target list --installed | grep -qx x86_64-unknown-none || rustup target add x86_64-unknown-none
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
# Fuzzing needs nightly and cargo-fuzz; the rest of ktstr does not.
if rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal; then
    command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
else
    echo "warning: no nightly toolchain: fuzzing (fuzz/) is unavailable" >&2
fi

# The end-to-end tests' schedulers, built once into ktstr's tool cache and
# pinned so a new release cannot change what the tests run. Their builds
# want `clang` to be clang-19: a private symlink, the system's
# alternatives untouched.
cache="${KTSTR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ktstr}"
tools="$cache/tools"
install_scheduler() { # NAME VERSION
    if ! "$tools/bin/$1" --version 2>/dev/null | grep -q "$2"; then
        mkdir -p "$tools/llvm-bin"
        ln -sf "$(command -v clang-19)" "$tools/llvm-bin/clang"
        PATH="$tools/llvm-bin:$PATH" cargo install --locked "$1" \
            --version "$2" --root "$tools"
    fi
}

step "scx_bpfland, the reference scheduler of the end-to-end tests"
# ~4 min on 2 cores, once.
install_scheduler scx_bpfland 1.1.4

step "scx_lavd, a scheduler of another design for the end-to-end tests"
# 450 CPU-seconds to build (about 4 min on 2 idle cores), once.
install_scheduler scx_lavd 1.1.4

step "build"
# What the test command builds (nextest builds with `cargo test --no-run`),
# so the tests start built. `cargo build --all-targets` would build every
# workspace crate a second time: the test profile's artifacts are separate.
cargo test --workspace --no-run

step "fetch the default sched_ext kernel"
# --kvm-modules: the L1 guest of the nested-virtualization tier loads them.
kernel_dir=$(./target/debug/ktstr kernel fetch --kvm-modules | tail -n 1)

# Older layouts for the kernel tests (tests/tests/kernel_fetch.rs): 6.16.x
# (one linux-image package, 51 MB) and 6.19.x (linux-binary only, 13 MB);
# each is downloaded once, later runs find them cached.
./target/debug/ktstr kernel fetch --release 6.16.12 >/dev/null
./target/debug/ktstr kernel fetch --release 6.19 >/dev/null

step "build the pre-6.16 sched_ext kernel (6.12)"
# Debian's 6.12 images lack sched_ext: ktstr builds one from Debian's
# linux-source-6.12 with its harness config, once (measured: 26 min at nice 19
# under a load of 7-9, 541 s of CPU: ~5 min on an idle 2-core machine; a
# 153 MB download, 2.6 GB unpacked and built under ~/.cache/ktstr/sources).
# A later run finds it cached and builds nothing.
nice -n 19 ./target/debug/ktstr kernel build 6.12 >/dev/null
./target/debug/ktstr kernel list

step "what ktstr reads from it"
./target/debug/ktstr kernel info "$kernel_dir"
