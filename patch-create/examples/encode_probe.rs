//! Prints, for OLD NEW file pairs, the size and time of each encoding candidate (tuning aid).
use std::time::Instant;

use patch_create::encode::{self, EncodeOptions};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let level: i32 = std::env::var("LEVEL")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(19);
    for pair in args.chunks(2) {
        let [o, n] = pair else {
            anyhow::bail!("pairs of OLD NEW expected")
        };
        let old = std::fs::read(o)?;
        let new = std::fs::read(n)?;
        let t = Instant::now();
        let s = encode::split_streams(&old, &new)?;
        let t_diff = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let packed = encode::pack_split(&s, level)?;
        let t_pack = t.elapsed().as_secs_f64();
        println!(
            "{n}: new {} ctrl {} pairs {} extra {} -> split {} (diff {t_diff:.2}s pack {t_pack:.2}s)",
            new.len(),
            s.ctrl.len(),
            s.pairs.len(),
            s.extra.len(),
            packed.len()
        );
        for lvl in [19, 22] {
            let c = encode::compress_window(&s.ctrl, lvl, 24)?.len();
            let p = encode::compress_window(&s.pairs, lvl, 24)?.len();
            let e = encode::compress_window(&s.extra, lvl, 24)?.len();
            println!("   L{lvl} zstd alone: ctrl {c} pairs {p} extra {e}");
        }
        if std::env::var("ALL").is_ok() {
            let opts = EncodeOptions {
                level,
                try_zstd_ref: true,
                threads,
                ..EncodeOptions::default()
            };
            let t = Instant::now();
            let e = encode::encode_change(&old, &new, &opts)?;
            println!(
                "   chosen {:?} {} ({:.2}s)",
                e.chosen,
                e.bytes.len(),
                t.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
