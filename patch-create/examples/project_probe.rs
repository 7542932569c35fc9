//! Study: where the split diff of an x86-64 ELF pair spends its bytes, per section, and how
//! much a projection of old's rel32 operands into new's layout would save.
//! `cargo run --release -p patchkit-create --example project_probe -- OLD NEW`
use std::time::Instant;

use object::{Object, ObjectSection, ObjectSegment};
use patch_create::{encode, sa_scan};

struct Seg {
    off: u64,
    addr: u64,
    size: u64,
}

fn segs(f: &object::File) -> Vec<Seg> {
    f.segments()
        .filter_map(|s| {
            let (off, size) = s.file_range();
            (size > 0).then(|| Seg {
                off,
                addr: s.address(),
                size,
            })
        })
        .collect()
}

fn addr_of(s: &[Seg], off: u64) -> Option<u64> {
    s.iter()
        .find(|g| off >= g.off && off < g.off + g.size)
        .map(|g| off - g.off + g.addr)
}
fn off_of(s: &[Seg], addr: u64) -> Option<u64> {
    s.iter()
        .find(|g| addr >= g.addr && addr < g.addr + g.size)
        .map(|g| addr - g.addr + g.off)
}

/// (old_start, new_start, len) sorted by old_start.
struct Eq(Vec<(u64, u64, u64)>, std::cell::RefCell<Vec<bool>>);
impl Eq {
    fn map(&self, x: u64) -> Option<u64> {
        let i = self.0.partition_point(|e| e.0 <= x);
        let mut best: Option<(u64, u64, usize)> = None;
        for (k, e) in self.0[i.saturating_sub(16)..i].iter().enumerate() {
            if x < e.0 + e.2 && best.is_none_or(|b| e.2 > b.1) {
                best = Some((e.1 + (x - e.0), e.2, i.saturating_sub(16) + k));
            }
        }
        best.map(|b| {
            self.1.borrow_mut()[b.2] = true;
            b.0
        })
    }
}

fn cost(eq: &[(u64, u64, u64)]) -> (usize, usize, usize) {
    // merge neighbours (by old) with the same shift
    let mut m: Vec<(u64, u64, u64)> = Vec::new();
    for &(o, n, l) in eq {
        if let Some(last) = m.last_mut() {
            if n as i64 - o as i64 == last.1 as i64 - last.0 as i64 && o >= last.0 + last.2 {
                last.2 = o + l - last.0;
                continue;
            }
        }
        m.push((o, n, l));
    }
    let mut raw = Vec::new();
    let (mut prev_end, mut prev_shift) = (0i64, 0i64);
    for &(o, n, l) in &m {
        let shift = n as i64 - o as i64;
        let zz = |v: i64| ((v << 1) ^ (v >> 63)) as u64;
        encode::put_varint(&mut raw, zz(o as i64 - prev_end));
        encode::put_varint(&mut raw, l);
        encode::put_varint(&mut raw, zz(shift - prev_shift));
        prev_end = (o + l) as i64;
        prev_shift = shift;
    }
    (m.len(), raw.len(), zstd::bulk::compress(&raw, 19).unwrap().len())
}

fn refs(buf: &[u8], ranges: &[[u64; 2]], mut f: impl FnMut(u64)) {
    for &[start, len] in ranges {
        let end = (start + len) as usize;
        let mut i = start as usize;
        while i + 7 <= end {
            let b = &buf[i..];
            let field = if b[0] == 0xE8 || b[0] == 0xE9 {
                Some(i + 1)
            } else if b[0] == 0x0F && b[1] & 0xF0 == 0x80 {
                Some(i + 2)
            } else if b[0] & 0xF0 == 0x40 && matches!(b[1], 0x89 | 0x8B | 0x8D) && b[2] & 0xC7 == 0x05 {
                Some(i + 3)
            } else {
                None
            };
            match field {
                Some(p) => {
                    f(p as u64);
                    i = p + 4;
                }
                None => i += 1,
            }
        }
    }
}

fn sections(f: &object::File) -> Vec<(String, u64, u64)> {
    let mut v: Vec<_> = f
        .sections()
        .filter_map(|s| {
            let (o, l) = s.file_range()?;
            Some((s.name().unwrap_or("?").to_string(), o, l))
        })
        .collect();
    v.sort_by_key(|s| s.1);
    v
}

/// Per new section: mismatching add bytes and literal bytes of the plain diff.
fn breakdown(old: &[u8], new: &[u8], secs: &[(String, u64, u64)]) -> anyhow::Result<Vec<(u64, u64, u64)>> {
    let mut ms = Vec::new();
    sa_scan::diff(old, new, |m| {
        ms.push(m);
        Ok(())
    })?;
    let mut per = vec![(0u64, 0u64, 0u64); secs.len() + 1];
    let sec_of = |p: u64| secs.iter().position(|s| p >= s.1 && p < s.1 + s.2).unwrap_or(secs.len());
    for m in &ms {
        for k in 0..m.add_length {
            if old[m.add_old_start + k] != new[m.add_new_start + k] {
                per[sec_of((m.add_new_start + k) as u64)].0 += 1;
            }
        }
        for p in m.copy_start()..m.copy_end {
            per[sec_of(p as u64)].1 += 1;
        }
    }
    per[0].2 = ms.len() as u64;
    Ok(per)
}

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (old, new) = (std::fs::read(&a[0])?, std::fs::read(&a[1])?);
    let opts = encode::EncodeOptions::default();
    let (fo, fnew) = (object::File::parse(&*old)?, object::File::parse(&*new)?);
    let (so, sn) = (segs(&fo), segs(&fnew));
    let secs = sections(&fnew);
    let min_len: u64 = std::env::var("MIN_LEN").ok().and_then(|v| v.parse().ok()).unwrap_or(32);

    let t = Instant::now();
    let plain = encode::split_diff(&old, &new, &opts)?.len();
    println!("plain split diff {plain} B ({:.1} s)", t.elapsed().as_secs_f64());
    let show = std::env::var_os("BREAKDOWN").is_some();
    let per = if show { breakdown(&old, &new, &secs)? } else { vec![(0, 0, 0); secs.len() + 1] };
    println!("{:<20} {:>10} {:>10} {:>10}", "section", "size", "mismatch", "literal");
    for (i, s) in secs.iter().enumerate() {
        if per[i].0 + per[i].1 > 1000 {
            println!("{:<20} {:>10} {:>10} {:>10}", s.0, s.2, per[i].0, per[i].1);
        }
    }

    // Equivalences from the plain diff's matches.
    let mut eq = Vec::new();
    sa_scan::diff(&old, &new, |m| {
        if m.add_length as u64 >= min_len {
            eq.push((m.add_old_start as u64, m.add_new_start as u64, m.add_length as u64));
        }
        Ok(())
    })?;
    eq.sort_unstable();
    let n_eq = eq.len();
    let eq = Eq(eq, std::cell::RefCell::new(vec![false; n_eq]));
    // Its cost: sorted by old, (gap, len, shift delta) varints, zstd -19.
    let mut raw = Vec::new();
    let (mut prev_end, mut prev_shift) = (0i64, 0i64);
    for &(o, n, l) in &eq.0 {
        let shift = n as i64 - o as i64;
        let zz = |v: i64| ((v << 1) ^ (v >> 63)) as u64;
        encode::put_varint(&mut raw, zz(o as i64 - prev_end));
        encode::put_varint(&mut raw, l);
        encode::put_varint(&mut raw, zz(shift - prev_shift));
        prev_end = (o + l) as i64;
        prev_shift = shift;
    }
    let eq_cost = zstd::bulk::compress(&raw, 19)?.len();
    println!("equivalences: {} (>= {min_len} B), {} B raw, {eq_cost} B zstd-19", eq.0.len(), raw.len());

    let code = patch_create::exe::code_ranges(&old).map(|c| c.1).unwrap_or_default();
    let mut proj = old.clone();
    let (mut seen, mut done, mut same) = (0u64, 0u64, 0u64);
    refs(&old, &code, |p| {
        seen += 1;
        let disp = i32::from_le_bytes(old[p as usize..p as usize + 4].try_into().unwrap());
        let (Some(pc_addr), Some(p_new)) = (addr_of(&so, p + 4), eq.map(p)) else { return };
        let target = pc_addr.wrapping_add_signed(i64::from(disp));
        let Some(t_off) = off_of(&so, target) else { return };
        let Some(t_new) = eq.map(t_off) else { return };
        let (Some(pc_new), Some(t_new_addr)) = (addr_of(&sn, p_new + 4), addr_of(&sn, t_new)) else { return };
        let d = t_new_addr as i64 - pc_new as i64;
        let Ok(d) = i32::try_from(d) else { return };
        done += 1;
        if d == disp {
            same += 1;
        }
        proj[p as usize..p as usize + 4].copy_from_slice(&d.to_le_bytes());
    });
    // R_X86_64_RELATIVE relocations (24-byte RELA entries) of .rela.dyn and their slots.
    let (mut relocs, mut slots) = (0u64, 0u64);
    if std::env::var_os("RELOCS").is_some() {
        if let Some(sec) = fo.section_by_name(".rela.dyn") {
            let (ro, rl) = sec.file_range().unwrap();
            let proj_addr = |a: u64| -> Option<u64> {
                let o = off_of(&so, a)?;
                addr_of(&sn, eq.map(o)?)
            };
            for e in (ro..ro + rl).step_by(24) {
                let e = e as usize;
                let rd = |k: usize| u64::from_le_bytes(old[e + k..e + k + 8].try_into().unwrap());
                if rd(8) != 8 {
                    continue;
                }
                let (r_off, add) = (rd(0), rd(16));
                if let Some(n) = proj_addr(r_off) {
                    proj[e..e + 8].copy_from_slice(&n.to_le_bytes());
                }
                if let Some(n) = proj_addr(add) {
                    proj[e + 16..e + 24].copy_from_slice(&n.to_le_bytes());
                    relocs += 1;
                    if let Some(so_) = off_of(&so, r_off) {
                        let so_ = so_ as usize;
                        if so_ + 8 <= old.len() && u64::from_le_bytes(old[so_..so_ + 8].try_into().unwrap()) == add {
                            proj[so_..so_ + 8].copy_from_slice(&n.to_le_bytes());
                            slots += 1;
                        }
                    }
                }
            }
        }
        if let Some(sec) = fo.section_by_name(".eh_frame_hdr") {
            let (ho, hl) = sec.file_range().unwrap();
            let ha = sec.address();
            let nh = fnew.section_by_name(".eh_frame_hdr").unwrap().address();
            let h = ho as usize;
            if old[h..h + 4] == [1, 0x1b, 0x03, 0x3b] {
                let n = u32::from_le_bytes(old[h + 8..h + 12].try_into().unwrap()) as usize;
                for k in 0..n.min(((hl - 12) / 8) as usize) {
                    for j in 0..2 {
                        let p = h + 12 + k * 8 + j * 4;
                        let v = i32::from_le_bytes(old[p..p + 4].try_into().unwrap());
                        let a = ha.wrapping_add_signed(i64::from(v));
                        if let Some(o) = off_of(&so, a) {
                            if let Some(no) = eq.map(o) {
                                if let Some(na) = addr_of(&sn, no) {
                                    let d = (na as i64 - nh as i64) as i32;
                                    proj[p..p + 4].copy_from_slice(&d.to_le_bytes());
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    println!("relocs {relocs} slots {slots}");
    println!("operands: {seen} seen, {done} projected, {same} unchanged by it");
    let used: Vec<_> = eq.0.iter().zip(eq.1.borrow().iter()).filter(|x| *x.1).map(|x| *x.0).collect();
    println!("map merged all {:?}, used only {} -> merged {:?}", cost(&eq.0), used.len(), cost(&used));
    let t = Instant::now();
    let projected = encode::split_diff(&proj, &new, &opts)?.len();
    println!(
        "projected split diff {projected} B + map {eq_cost} B = {} B ({:.3} of plain) ({:.1} s)",
        projected + eq_cost,
        (projected + eq_cost) as f64 / plain as f64,
        t.elapsed().as_secs_f64()
    );
    let per = if show { breakdown(&proj, &new, &secs)? } else { vec![(0, 0, 0); secs.len() + 1] };
    for (i, s) in secs.iter().enumerate() {
        if per[i].0 + per[i].1 > 1000 {
            println!("{:<20} {:>10} {:>10} {:>10}", s.0, s.2, per[i].0, per[i].1);
        }
    }
    Ok(())
}
