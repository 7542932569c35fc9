//! Choosing how to update: the cheapest incremental chain (shortest path in bytes over every
//! available patch), repair of only the differing files, or the full installer.
//!
//! Folder `plan/`: this file and [`repo_view`], what the verified targets offer (releases,
//! patches, installers, channel and targeting eligibility). May use: `error`, `report`, `fetch`
//! (to read small verified targets). Decides; changes nothing on disk.

pub mod repo_view;

use std::collections::BTreeMap;

use formats::Version;

use crate::repo_view::PatchEdge;
pub use crate::report::{Method, MethodCost};

/// The cheapest chain of patches from `from` to `to`: indexes into `edges` in order, and the
/// total bytes. Ties are broken by fewer patches, then by the lower intermediate versions.
/// Patches only lead to newer versions, so the graph is acyclic and versions are processed in
/// ascending order.
pub fn cheapest_chain(
    edges: &[PatchEdge],
    from: &Version,
    to: &Version,
) -> Option<(Vec<usize>, u64)> {
    if from == to {
        return Some((Vec::new(), 0));
    }
    // best[v] = (bytes, hops, path)
    let mut best: BTreeMap<&Version, (u64, usize, Vec<usize>)> = BTreeMap::new();
    best.insert(from, (0, 0, Vec::new()));
    let mut versions: Vec<&Version> = edges.iter().map(|e| &e.to).collect();
    versions.sort();
    versions.dedup();
    for v in versions {
        if v <= from {
            continue;
        }
        let mut cand: Option<(u64, usize, Vec<usize>, &Version)> = None;
        for (i, e) in edges.iter().enumerate() {
            if &e.to != v {
                continue;
            }
            let Some((b, h, p)) = best.get(&e.from) else {
                continue;
            };
            let c = (
                b.saturating_add(e.target.length),
                h + 1,
                {
                    let mut p = p.clone();
                    p.push(i);
                    p
                },
                &e.from,
            );
            let better = match &cand {
                None => true,
                Some(x) => (c.0, c.1, c.3) < (x.0, x.1, x.3),
            };
            if better {
                cand = Some(c);
            }
        }
        if let Some((b, h, p, _)) = cand {
            best.insert(v, (b, h, p));
        }
        if v == to {
            break;
        }
    }
    best.remove(to).map(|(b, _, p)| (p, b))
}

/// What one download costs beyond its bytes, in bytes: a round trip (and a request a CDN may
/// bill or rate-limit) is worth about this much transfer. Measured (bench/RESULTS.md, "Release
/// time that follows the change"): a fresh install of a 1,555-file tree over loopback HTTP took
/// 21 s by 1,484 repair files and 6 s by the installer of about the same bytes; at 50 Mbit/s a
/// 10 ms round trip carries about 64 KB.
pub const REQUEST_COST_BYTES: u64 = 64 << 10;

/// Orders available methods by bytes plus [`REQUEST_COST_BYTES`] per request (ties:
/// incremental, repair, installer). A fresh install therefore takes the installer (one
/// request) rather than one repair file per file of about the same bytes, while a repair of a
/// few files still beats the installer.
pub fn order(costs: &[MethodCost]) -> Vec<Method> {
    let mut avail: Vec<(u64, Method)> = costs
        .iter()
        .filter_map(|c| {
            c.bytes.map(|b| {
                let overhead = c.requests.unwrap_or(0).saturating_mul(REQUEST_COST_BYTES);
                (b.saturating_add(overhead), c.method)
            })
        })
        .collect();
    avail.sort();
    avail.into_iter().map(|(_, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use formats::tuf::TargetFile;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn edge(from: &str, to: &str, len: u64) -> PatchEdge {
        PatchEdge {
            from: v(from),
            to: v(to),
            name: format!("{to}/patch-from-{from}.patch"),
            target: TargetFile {
                length: len,
                hashes: Default::default(),
                custom: None,
            },
        }
    }

    fn check(edges: &[PatchEdge], from: &str, to: &str, expected: Option<(&[&str], u64)>) {
        let got = cheapest_chain(edges, &v(from), &v(to)).map(|(p, b)| {
            (
                p.iter()
                    .map(|&i| edges[i].to.to_string())
                    .collect::<Vec<_>>(),
                b,
            )
        });
        let want = expected.map(|(p, b)| (p.iter().map(|s| s.to_string()).collect::<Vec<_>>(), b));
        assert_eq!(got, want);
    }

    #[test]
    fn cheaper_chain_beats_greedy_longest_jump() {
        // Greedy would take the direct 1 -> 4 jump (1000 bytes); two hops cost 300.
        let edges = [
            edge("1.0.0", "4.0.0", 1000),
            edge("1.0.0", "2.0.0", 100),
            edge("2.0.0", "4.0.0", 200),
            edge("2.0.0", "3.0.0", 10),
            edge("3.0.0", "4.0.0", 500),
        ];
        check(&edges, "1.0.0", "4.0.0", Some((&["2.0.0", "4.0.0"], 300)));
    }

    #[test]
    fn ties_prefer_fewer_hops_then_lower_versions() {
        let edges = [
            edge("1.0.0", "3.0.0", 300),
            edge("1.0.0", "2.0.0", 100),
            edge("2.0.0", "3.0.0", 200),
        ];
        check(&edges, "1.0.0", "3.0.0", Some((&["3.0.0"], 300)));
        let edges = [
            edge("1.0.0", "2.0.0", 100),
            edge("2.0.0", "4.0.0", 100),
            edge("1.0.0", "3.0.0", 100),
            edge("3.0.0", "4.0.0", 100),
        ];
        check(&edges, "1.0.0", "4.0.0", Some((&["2.0.0", "4.0.0"], 200)));
        // Edge order in the input does not matter.
        let mut rev = edges.to_vec();
        rev.reverse();
        check(&rev, "1.0.0", "4.0.0", Some((&["2.0.0", "4.0.0"], 200)));
    }

    #[test]
    fn unreachable_and_trivial() {
        let edges = [edge("2.0.0", "3.0.0", 10)];
        check(&edges, "1.0.0", "3.0.0", None);
        check(&edges, "3.0.0", "3.0.0", Some((&[], 0)));
    }

    #[test]
    fn order_sorts_by_bytes() {
        let c = |m, b, requests| MethodCost {
            method: m,
            bytes: b,
            unavailable: None,
            chain: vec![],
            requests,
        };
        let o = order(&[
            c(Method::Installer, Some(50), None),
            c(Method::Repair, Some(50), None),
            c(Method::Incremental, None, None),
        ]);
        assert_eq!(o, vec![Method::Repair, Method::Installer]);
        // A fresh install: 2,000 repair files of 90 MB in all lose to one installer of 91 MB;
        // 3 repair files of 1 MB beat it.
        let mb = 1 << 20;
        let o = order(&[
            c(Method::Installer, Some(91 * mb), Some(1)),
            c(Method::Repair, Some(90 * mb), Some(2000)),
        ]);
        assert_eq!(o, vec![Method::Installer, Method::Repair]);
        let o = order(&[
            c(Method::Installer, Some(91 * mb), Some(1)),
            c(Method::Repair, Some(mb), Some(3)),
        ]);
        assert_eq!(o, vec![Method::Repair, Method::Installer]);
    }
}
