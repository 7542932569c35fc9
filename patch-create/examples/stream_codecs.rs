//! Split-diff streams of OLD NEW: raw, zstd and LZMA2 sizes and decode times (tuning aid).
use std::io::Read;
use std::time::Instant;

use patch_create::encode;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (o, n) = (std::fs::read(&a[0])?, std::fs::read(&a[1])?);
    let s = encode::split_streams(&o, &n)?;
    for (name, d) in [("ctrl", &s.ctrl), ("pairs", &s.pairs), ("extra", &s.extra)] {
        let z = encode::compress_window(d, 22, 22)?;
        let t = Instant::now();
        for _ in 0..10 {
            let mut v = Vec::new();
            zstd::stream::read::Decoder::new(&z[..])?.read_to_end(&mut v)?;
        }
        let zt = t.elapsed().as_secs_f64() / 10.0;
        let mut x = Vec::new();
        {
            use std::io::Write;
            let mut w = liblzma::write::XzEncoder::new(&mut x, 9 | liblzma::stream::PRESET_EXTREME);
            w.write_all(d)?;
            w.finish()?;
        }
        let t = Instant::now();
        for _ in 0..10 {
            let mut v = Vec::new();
            liblzma::read::XzDecoder::new(&x[..]).read_to_end(&mut v)?;
        }
        let xt = t.elapsed().as_secs_f64() / 10.0;
        println!(
            "{name}: raw {} zstd {} ({zt:.4}s) xz {} ({xt:.4}s)",
            d.len(),
            z.len(),
            x.len()
        );
    }
    Ok(())
}
