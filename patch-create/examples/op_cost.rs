//! Time of each step of encoding OLD NEW pairs (tuning aid).
use std::time::Instant;

use patch_create::{encode, split_pack};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    for p in a.chunks(2) {
        let (o, n) = (std::fs::read(&p[0])?, std::fs::read(&p[1])?);
        let opts = encode::EncodeOptions::default();
        let reps = 20;
        let time = |f: &mut dyn FnMut() -> anyhow::Result<usize>| -> anyhow::Result<(f64, usize)> {
            let t = Instant::now();
            let mut n = 0;
            for _ in 0..reps {
                n = f()?;
            }
            Ok((t.elapsed().as_secs_f64() * 1e3 / f64::from(reps), n))
        };
        if std::env::var("ONLY_STREAMS").is_ok() {
            let t = time(&mut || Ok(encode::split_streams(&o, &n)?.ctrl.len()))?;
            println!("{}: streams {:.2} ms", p[1], t.0);
            continue;
        }
        let s = encode::split_streams(&o, &n)?;
        let streams = time(&mut || Ok(encode::split_streams(&o, &n)?.ctrl.len()))?;
        let pack = time(&mut || Ok(split_pack::pack_split(&s, 19)?.len()))?;
        let zref = time(&mut || Ok(encode::compress_with_ref(&o, &n, 9)?.0.len()))?;
        let l1 = time(&mut || Ok(encode::compress(&n, 1)?.len()))?;
        let full = time(&mut || Ok(encode::compress(&n, 19)?.len()))?;
        let all = time(&mut || Ok(encode::encode_change(&o, &n, &opts)?.bytes.len()))?;
        println!(
            "{}: {} B | streams {:.2} ms | pack {:.2} ms ({} B) | zref9 {:.2} ms ({} B) | l1 {:.2} ms | full19 {:.2} ms ({} B) | encode_change {:.2} ms ({} B)",
            p[1], n.len(), streams.0, pack.0, pack.1, zref.0, zref.1, l1.0, full.0, full.1, all.0, all.1
        );
    }
    Ok(())
}
