//! Reusable pieces of a table page: reading bounded query parameters, links that keep the
//! current filters, sortable column headers and paging.

use super::error::{WebError, WebResult};

/// Longest query value accepted (ids, versions, search text).
pub const MAX_QUERY_VALUE: usize = 128;

/// The value of a query parameter, `None` when absent or empty; 400 naming it when longer
/// than [`MAX_QUERY_VALUE`] or holding control characters.
pub fn param(name: &str, v: &Option<String>) -> WebResult<Option<String>> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) if s.len() > MAX_QUERY_VALUE => Err(WebError::bad(
            name,
            format!("longer than {MAX_QUERY_VALUE} bytes"),
        )),
        Some(s) if s.chars().any(char::is_control) => {
            Err(WebError::bad(name, "control characters are not allowed"))
        }
        Some(s) => Ok(Some(s.to_string())),
    }
}

/// A page number from the query (1-based, at most 1,000,000).
pub fn page_number(v: &Option<String>) -> WebResult<u64> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(1),
        Some(s) => s
            .parse::<u64>()
            .ok()
            .filter(|p| (1..=1_000_000).contains(p))
            .ok_or_else(|| WebError::bad("page", "must be a number from 1 to 1000000")),
    }
}

/// `base?k=v&...` with the non-empty values, urlencoded.
pub fn url_with(base: &str, params: &[(&str, String)]) -> String {
    let kept: Vec<(&str, &str)> = params
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    if kept.is_empty() {
        return base.to_string();
    }
    format!(
        "{base}?{}",
        serde_urlencoded::to_string(kept).unwrap_or_default()
    )
}

/// Where a table is in its rows.
#[derive(Debug, Clone)]
pub struct Paging {
    /// Current page (1-based).
    pub page: u64,
    /// Rows per page.
    pub per_page: u64,
    /// Rows matching.
    pub total: u64,
    /// Link to the previous page.
    pub prev: Option<String>,
    /// Link to the next page.
    pub next: Option<String>,
}

impl Paging {
    /// Paging of `total` rows, linking pages with `params` plus `page`.
    pub fn new(
        base: &str,
        params: &[(&str, String)],
        page: u64,
        per_page: u64,
        total: i64,
    ) -> Self {
        let total = u64::try_from(total).unwrap_or(0);
        let link = |p: u64| {
            let mut ps = params.to_vec();
            ps.push(("page", p.to_string()));
            url_with(base, &ps)
        };
        Paging {
            page,
            per_page,
            total,
            prev: (page > 1).then(|| link(page - 1)),
            next: (page.saturating_mul(per_page) < total).then(|| link(page + 1)),
        }
    }

    /// Rows to skip.
    pub fn offset(page: u64, per_page: u64) -> i64 {
        i64::try_from(page.saturating_sub(1).saturating_mul(per_page)).unwrap_or(i64::MAX)
    }

    /// Number of pages (at least 1).
    pub fn pages(&self) -> u64 {
        self.total.div_ceil(self.per_page.max(1)).max(1)
    }
}

/// A sortable column header: its label, the link that sorts by it (flipping the direction
/// when it is the current sort) and an arrow when it is.
#[derive(Debug, Clone)]
pub struct SortHeader {
    /// Label.
    pub label: &'static str,
    /// Link.
    pub href: String,
    /// `▲`, `▼` or empty.
    pub arrow: &'static str,
}

impl SortHeader {
    /// The header of column `key` given the current sort, linking with `params`.
    pub fn new(
        base: &str,
        params: &[(&str, String)],
        label: &'static str,
        key: &str,
        current: &str,
        desc: bool,
    ) -> Self {
        let here = key == current;
        let mut ps = params.to_vec();
        ps.push(("sort", key.to_string()));
        if here && !desc {
            ps.push(("dir", "desc".into()));
        }
        SortHeader {
            label,
            href: url_with(base, &ps),
            arrow: match (here, desc) {
                (false, _) => "",
                (true, false) => "▲",
                (true, true) => "▼",
            },
        }
    }
}

/// `ms` as `YYYY-MM-DD HH:MM:SS` UTC, or `never`.
pub fn when(ms: Option<i64>) -> String {
    match ms {
        None => "never".into(),
        Some(ms) => crate::util::rfc3339(ms).replace('T', " ").replace('Z', ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_keep_filters_and_drop_empty_ones() {
        let u = url_with(
            "/ui/devices",
            &[
                ("app", "game".into()),
                ("tag", String::new()),
                ("q", "a b&c".into()),
            ],
        );
        assert_eq!(u, "/ui/devices?app=game&q=a+b%26c");
        assert_eq!(url_with("/ui/devices", &[]), "/ui/devices");
    }

    #[test]
    fn paging_links_and_bounds() {
        let p = Paging::new("/x", &[], 1, 50, 120);
        assert_eq!(p.pages(), 3);
        assert!(p.prev.is_none());
        assert_eq!(p.next.as_deref(), Some("/x?page=2"));
        let p = Paging::new("/x", &[], 3, 50, 120);
        assert!(p.next.is_none());
        assert_eq!(Paging::offset(3, 50), 100);
        assert!(page_number(&Some("0".into())).is_err());
        assert!(page_number(&Some("x".into())).is_err());
        assert_eq!(page_number(&None).ok(), Some(1));
    }

    #[test]
    fn query_values_are_bounded() {
        assert!(param("q", &Some("a".repeat(200))).is_err());
        assert!(param("q", &Some("a\u{0}b".into())).is_err());
        assert_eq!(param("q", &Some("  ".into())).ok(), Some(None));
    }
}
