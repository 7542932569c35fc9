//! Size and time of the plain split diff and of the `exe-project-diff` and `exe-split-diff`
//! candidates of OLD NEW
//! executable pairs (tuning aid): `cargo run --release -p patchkit-create --example exe_probe --
//! OLD NEW [OLD NEW...]`.
use std::time::Instant;

use patch_create::{encode, exe};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let opts = encode::EncodeOptions::default();
    for p in a.chunks(2) {
        let (mut o, mut n) = (std::fs::read(&p[0])?, std::fs::read(&p[1])?);
        let t = Instant::now();
        let plain = encode::split_diff(&o, &n, &opts)?.len();
        let t_plain = t.elapsed().as_secs_f64();
        if let Some(proj) = exe::projection_for(&o, &n) {
            let t = Instant::now();
            let m = encode::encode_as(&o, &n, &encode::Chosen::ExeProjectDiff(proj), &opts)?.len();
            println!(
                "{}: exe-project-diff {m} B ({:.3} of split-diff; {:.1} s)",
                p[1],
                m as f64 / plain as f64,
                t.elapsed().as_secs_f64()
            );
        }
        let Some(filter) = exe::filter_for(&o, &n) else {
            println!("{}: not an executable pair; split diff {plain} B", p[1]);
            continue;
        };
        let t = Instant::now();
        exe::encode_pair(&filter, &mut o, &mut n);
        let t_filter = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let filtered = encode::split_diff(&o, &n, &opts)?.len();
        let t_exe = t.elapsed().as_secs_f64();
        println!(
            "{}: {:?} span 2^{} ranges {:?} -> {:?}\n  split-diff {plain} B ({t_plain:.1} s) | exe-split-diff {filtered} B ({:.3}) (filter {t_filter:.2} s, diff {t_exe:.1} s)",
            p[1],
            filter.arch,
            filter.span_log,
            filter.old_code,
            filter.new_code,
            filtered as f64 / plain as f64
        );
    }
    Ok(())
}
