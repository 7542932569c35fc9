//! zstd-ref candidate: total size and time per level over OLD NEW pairs (tuning aid).
use std::time::Instant;

use patch_create::encode;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut pairs = Vec::new();
    for p in args.chunks(2) {
        let (o, n) = (std::fs::read(&p[0])?, std::fs::read(&p[1])?);
        if n.len() <= 2 << 20 {
            pairs.push((o, n));
        }
    }
    let splits: Vec<usize> = pairs
        .iter()
        .map(|(o, n)| encode::split_diff(o, n, &Default::default()).map(|v| v.len()))
        .collect::<Result<_, _>>()?;
    for l in [1, 3, 5, 7, 9, 11, 12, 13, 15, 17, 19] {
        let t = Instant::now();
        let mut total = 0;
        for _ in 0..10 {
            total = 0;
            for ((o, n), sp) in pairs.iter().zip(&splits) {
                total += encode::compress_with_ref(o, n, l)?.0.len().min(*sp);
            }
        }
        println!("L{l}: {total} B {:.4}s", t.elapsed().as_secs_f64() / 10.0);
    }
    let t = Instant::now();
    let mut total = 0;
    for _ in 0..10 {
        total = 0;
        for (o, n) in &pairs {
            total += encode::split_diff(o, n, &Default::default())?.len();
        }
    }
    println!("split: {total} B {:.4}s", t.elapsed().as_secs_f64() / 10.0);
    Ok(())
}
