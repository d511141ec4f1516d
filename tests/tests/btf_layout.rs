//! The layout resolved from the real kernel's BTF, checked against two
//! independent readers of the same BTF: pahole (struct members) and
//! bpftool (the per-CPU DATASEC).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use ktstr_tests::{Need, have_tool, skip};
use ktstr_walker::Layout;
use ktstr_walker::kernel::btf::KernelBtf;

/// What pahole says about one struct: member name -> (offset, type), size.
#[derive(Debug, Default)]
struct PaholeStruct {
    size: Option<u32>,
    members: HashMap<String, (u32, String)>,
}

/// `pahole -F btf -C name vmlinux`, parsed; `None` when pahole knows no such
/// struct. Members inside anonymous unions/structs are printed with offsets
/// from the outer struct, so every `name; /* off size */` line counts.
fn pahole(vmlinux: &Path, name: &str) -> Option<PaholeStruct> {
    let out = Command::new("pahole")
        .args(["-F", "btf", "-C", name])
        .arg(vmlinux)
        .output()
        .expect("run pahole");
    let text = String::from_utf8_lossy(&out.stdout);
    let header = format!("struct {name} {{");
    let body: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with(&header))
        .take_while(|l| !l.starts_with("};"))
        .collect();
    if body.is_empty() {
        return None;
    }
    let mut s = PaholeStruct::default();
    for line in body {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("/* size: ") {
            s.size = rest.split(',').next().and_then(|n| n.trim().parse().ok());
            continue;
        }
        let Some((decl, comment)) = line.split_once(";") else {
            continue;
        };
        let Some(nums) = comment.trim().strip_prefix("/*") else {
            continue;
        };
        let decl = decl.split(" __attribute__").next().unwrap_or(decl);
        if decl.contains(':') || decl.ends_with('}') {
            continue; // bitfield, or the end of an anonymous block
        }
        let offset = nums.split_whitespace().next().and_then(|n| n.parse().ok());
        let mut words: Vec<&str> = decl.split_whitespace().collect();
        let Some(last) = words.pop() else { continue };
        let member = last.trim_start_matches('*');
        let member = member.split('[').next().unwrap_or(member).to_string();
        let ty = words.last().copied().unwrap_or_default().to_string();
        if let Some(o) = offset {
            s.members.entry(member).or_insert((o, ty));
        }
    }
    Some(s)
}

/// Offset of a member path per pahole (dotted: nested struct members).
fn pahole_path(
    vmlinux: &Path,
    cache: &mut HashMap<String, Option<PaholeStruct>>,
    strukt: &str,
    path: &str,
) -> Option<u32> {
    path.split('|').find_map(|alt| {
        let mut cur = strukt.to_string();
        let mut total = 0;
        for part in alt.split('.') {
            let s = cache
                .entry(cur.clone())
                .or_insert_with(|| pahole(vmlinux, &cur))
                .as_ref()?;
            let (off, ty) = s.members.get(part)?.clone();
            total += off;
            cur = ty;
        }
        Some(total)
    })
}

#[test]
fn layout_from_real_btf_matches_pahole() {
    let dir = match ktstr_tests::cached_kernel_dir() {
        Ok(d) => d,
        Err(e) => return skip("layout_from_real_btf_matches_pahole", Need::Kernel, &e),
    };
    if !have_tool("pahole") {
        return skip(
            "layout_from_real_btf_matches_pahole",
            Need::Tool,
            "pahole not installed (package dwarves)",
        );
    }
    let vmlinux = dir.join("vmlinux");
    let btf = KernelBtf::open(&vmlinux).expect("BTF of the fetched kernel");
    let layout = btf.layout();
    let report = btf.layout_report();
    let mut cache = HashMap::new();
    let mut compared = 0;
    for (group, strukt, members) in Layout::GROUPS {
        let theirs = cache
            .entry(strukt.to_string())
            .or_insert_with(|| pahole(&vmlinux, strukt));
        let rep = report
            .iter()
            .find(|r| r.group == *group)
            .expect("report row");
        let Some(theirs) = theirs.as_ref() else {
            assert!(
                !rep.resolved(),
                "{group}: pahole has no struct {strukt}, we resolved it"
            );
            continue;
        };
        let size = theirs.size.expect("pahole prints the size");
        if !rep.resolved() {
            // We refused the group: pahole must lack a required member too.
            for m in members.iter().filter(|m| m.required) {
                if rep.missing_required.contains(&m.name) {
                    assert_eq!(
                        pahole_path(&vmlinux, &mut cache, strukt, m.path),
                        None,
                        "{group}.{}",
                        m.name
                    );
                }
            }
            continue;
        }
        assert_eq!(rep.size, Some(size), "{group} size");
        for m in members.iter() {
            let want = pahole_path(&vmlinux, &mut cache, strukt, m.path);
            let ours =
                rep.missing_optional.contains(&m.name) || rep.missing_required.contains(&m.name);
            match want {
                Some(off) => {
                    assert!(
                        !ours,
                        "{group}.{}: pahole has it at {off}, we did not resolve it",
                        m.name
                    );
                    compared += 1;
                    let got = offset_of(&layout, group, m.name);
                    assert_eq!(got, Some(off), "{group}.{} ({})", m.name, m.path);
                }
                None => assert!(
                    ours,
                    "{group}.{}: we resolved it, pahole does not have it",
                    m.name
                ),
            }
        }
    }
    assert!(compared > 60, "only {compared} members compared");
    let missing: Vec<&str> = layout.missing_groups().collect();
    // 7.3 moved the 6.12-era globals into scx_sched: every group exists.
    assert!(
        missing.is_empty(),
        "groups missing on this kernel: {missing:?}"
    );
}

/// A resolved offset by group and member name, through the JSON form of the
/// layout (so the test does not restate the layout's field list).
fn offset_of(layout: &Layout, group: &str, member: &str) -> Option<u32> {
    let v = serde_json::to_value(layout).expect("layout to json");
    let field = Layout::GROUPS.iter().position(|(g, _, _)| *g == group)?;
    v.get(layout_field_names()[field])?
        .get(member)?
        .as_u64()
        .map(|x| x as u32)
}

/// `Layout`'s field names, in `Layout::GROUPS` order (serde's view).
fn layout_field_names() -> Vec<&'static str> {
    vec![
        "list_head",
        "rq",
        "scx_rq",
        "task",
        "entity",
        "dsq_list_node",
        "dsq",
        "ops",
        "sched",
        "sched_pcpu",
        "sched_pnode",
        "exit_info",
        "rhashtable",
        "bucket_table",
        "rhash_head",
        "css_set",
        "cgroup",
        "kernfs_node",
        "event_stats",
        "idr",
        "xa_node",
        "bpf_map",
        "bpf_array",
        "struct_ops_map",
        "bpf_link",
        "bpf_prog",
        "prog_aux",
        "btf",
        "bpf_htab",
        "htab_bucket",
        "htab_elem",
    ]
}

#[test]
fn runqueues_is_found_in_the_percpu_datasec_as_bpftool_says() {
    let dir = match ktstr_tests::cached_kernel_dir() {
        Ok(d) => d,
        Err(e) => return skip("runqueues_percpu", Need::Kernel, &e),
    };
    if !have_tool("bpftool") {
        return skip("runqueues_percpu", Need::Tool, "bpftool not installed");
    }
    let vmlinux = dir.join("vmlinux");
    let btf = KernelBtf::open(&vmlinux).expect("BTF");
    let out = Command::new("bpftool")
        .args(["btf", "dump", "file"])
        .arg(&vmlinux)
        .output()
        .expect("bpftool");
    let text = String::from_utf8_lossy(&out.stdout);
    let want: u32 = text
        .lines()
        .find(|l| l.contains("(VAR 'runqueues')"))
        .and_then(|l| {
            l.split("offset=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("bpftool lists runqueues in a DATASEC");
    assert_eq!(btf.percpu_var_offset("runqueues"), Some(want));
    assert_eq!(
        btf.enum_value(Some("scx_exit_kind"), "SCX_EXIT_ERROR"),
        Some(1024)
    );
}
