//! Executable-aware diffs (docs/format.md §6.2.5, §6.2.6): two builds of a real C program,
//! compiled here with `cc`, are released and the update applies byte-identical through an
//! executable-aware encoding, smaller than the plain split diff.
#![allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use e2e_tests::*;

/// C source of a program of many small functions calling each other and printing strings
/// (relative calls, jumps and RIP-relative loads everywhere). Version 2 grows every 37th
/// function, so the code after each of them moves and every relative operand across it
/// changes.
fn program(version: u32) -> String {
    let n = 600u64;
    let mut s = String::from("#include <stdio.h>\n#include <string.h>\n");
    for k in 0..n {
        writeln!(s, "int f{k}(int x);").unwrap();
    }
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    for k in 0..n {
        let (a, b, c) = (next(n), next(n), next(n));
        let extra = if version == 2 && k % 37 == 5 {
            format!(
                "  if (x == {}) {{ puts(\"changed {k}\"); r += f{c}(x + 9); }}\n",
                k * 7 + 3
            )
        } else {
            String::new()
        };
        writeln!(
            s,
            "__attribute__((noinline)) int f{k}(int x) {{\n  static const char msg[] = \"function {k} says %d\\n\";\n  int r = x * {} + {};\n  if (x <= 0) return r;\n  if (r & 1) r += f{a}(x - 1);\n  if (r & 2) r ^= f{b}(x - 2);\n  if (r & 4) printf(msg, r);\n{extra}  return r + (int)strlen(msg);\n}}",
            k.wrapping_mul(2_654_435_761) % 1_000_003,
            next(1000)
        )
        .unwrap();
    }
    s.push_str("int main(int argc, char **argv) { (void)argv; return f0(argc) & 1; }\n");
    s
}

/// Compiles `src` into `out` with the system C compiler.
fn compile(src: &str, dir: &Path, out: &Path) {
    let c = dir.join(format!("{}.c", out.file_name().unwrap().to_string_lossy()));
    std::fs::write(&c, src).unwrap();
    let st = Command::new("cc")
        .args(["-O2", "-fno-inline", "-o"])
        .arg(out)
        .arg(&c)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run the C compiler `cc` ({e}): install it with `apt-get install gcc`")
        });
    assert!(st.success(), "cc failed on {}", c.display());
}

#[test]
fn two_builds_of_a_c_program_patch_byte_identical_through_an_exe_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (r1, r2) = (d.join("rel1"), d.join("rel2"));
    for (r, v) in [(&r1, 1), (&r2, 2)] {
        std::fs::create_dir_all(r.join("bin")).unwrap();
        compile(&program(v), d, &r.join("bin/app"));
        std::fs::write(r.join("README"), format!("version {v}\n")).unwrap();
    }
    let keys = d.join("keys");
    ok(cmd("patch-create").args(["keygen", "--out"]).arg(&keys));
    let repo = d.join("repo");
    let release = |repo: &Path, root: &Path, version: &str, extra: &[&str]| {
        last_json(&ok(cmd("patch-create")
            .args(["release", "--name", "demo", "--json", "--level", "3"])
            .args(extra)
            .arg("--repo")
            .arg(repo)
            .arg("--root")
            .arg(root)
            .args(["--version", version, "--key"])
            .arg(keys.join("release.key"))))
    };
    release(&repo, &r1, "1.0.0", &[]);
    let r = release(&repo, &r2, "2.0.0", &[]);
    let enc = &r["patches"][0]["encodings"];
    // x86-64 ELF: the projection is tried first; on this small program of look-alike
    // functions its map costs about what it saves, and then the branch filter wins.
    assert_eq!(
        enc["exe-project-diff"].as_u64().unwrap_or(0) + enc["exe-split-diff"].as_u64().unwrap_or(0),
        1,
        "the executable is not an executable-aware op: {r}"
    );
    // It pays: the same release without executable-aware candidates is larger.
    let plain_repo = d.join("repo-plain");
    release(&plain_repo, &r1, "1.0.0", &["--no-exe-diff"]);
    let plain = release(&plain_repo, &r2, "2.0.0", &["--no-exe-diff"]);
    let (aware, plain) = (&r["patches"][0]["bytes"], &plain["patches"][0]["bytes"]);
    assert!(
        aware.as_u64().unwrap() < plain.as_u64().unwrap(),
        "executable-aware patch {aware} B, plain {plain} B"
    );
    eprintln!("patch: {aware} B with the executable-aware candidates, {plain} B without");

    let app = d.join("app");
    copy_tree(&r1, &app);
    let out = ok(cmd("patch-apply")
        .arg("apply")
        .arg("--app-dir")
        .arg(&app)
        .arg("--repo")
        .arg(&repo)
        .arg("--public-key")
        .arg(keys.join("release.pub"))
        .arg("--json"));
    let a = last_json(&out);
    assert_eq!(a["to"], "2.0.0");
    assert_eq!(a["method"], "incremental");
    assert_same_tree(&app, &r2);
    // The filtered old file was a temporary file of the staging area: nothing is left behind.
    let leftovers: Vec<_> = walkdir_names(&app.join(".patchkit"))
        .into_iter()
        .filter(|n| n.contains(".exe-old-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Every file name under `dir`, recursively.
fn walkdir_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if p.is_dir() {
            out.extend(walkdir_names(&p));
        }
    }
    out
}
