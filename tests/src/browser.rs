//! A real headless Chromium driven over WebDriver ([`fantoccini`]) for the dashboard tests:
//! [`Browser::start`] runs `chromedriver --port=FREE` itself and a headless Chromium with a
//! temporary profile; both are ended on drop. Calls are blocking (each runs on the browser's
//! own tokio runtime) so tests stay plain `#[test]` functions like the other fleet tests.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

/// The first of `names` found on `PATH`.
pub fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// A headless Chromium session.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium (1200x800 window); panics with the install
    /// command when either is missing.
    pub fn start() -> Browser {
        let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"])
            .expect("chromium is missing: apt-get install -y chromium chromium-driver");
        let driver_bin = find_program(&["chromedriver"])
            .expect("chromedriver is missing: apt-get install -y chromium-driver");
        let port = crate::pg::free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().expect("profile dir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let url = format!("http://127.0.0.1:{port}");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1200,800", "--no-first-run", "--disable-extensions",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let r = rt.block_on(async {
                ClientBuilder::new(HttpConnector::new())
                    .capabilities(caps.clone())
                    .connect(&url)
                    .await
            });
            match r {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => panic!("no WebDriver session: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        Browser {
            rt,
            client: Some(client),
            driver,
            _profile: profile,
        }
    }

    /// Runs a future on the browser's runtime.
    pub fn block<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The WebDriver client.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("browser is open")
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.block(self.client().goto(url))
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// The visible text of the first element matching `css`, waiting up to 15 s for one to
    /// appear (after a click that submits a form, the next page may not have loaded yet). An
    /// element found on the page being replaced goes stale before its text is read: it is
    /// looked up again on the new page.
    pub fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        self.block(async {
            loop {
                let e = self
                    .client()
                    .wait()
                    .at_most(deadline.saturating_duration_since(Instant::now()))
                    .for_element(Locator::Css(css))
                    .await?;
                match e.text().await {
                    Err(err) if err.is_stale_element_reference() && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    r => return r,
                }
            }
        })
        .unwrap_or_else(|e| panic!("text of {css}: {e}"))
    }

    /// How many elements match `css`.
    pub fn count(&self, css: &str) -> usize {
        self.block(self.client().find_all(Locator::Css(css)))
            .map(|v| v.len())
            .unwrap_or(0)
    }

    /// An attribute of the first element matching `css`.
    pub fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.block(async {
            let e = self.client().find(Locator::Css(css)).await?;
            e.attr(name).await
        })
        .unwrap_or_else(|e| panic!("attribute {name} of {css}: {e}"))
    }

    /// A computed CSS property of the first element matching `css`.
    pub fn css(&self, css: &str, prop: &str) -> String {
        self.block(async {
            let e = self.client().find(Locator::Css(css)).await?;
            e.css_value(prop).await
        })
        .unwrap_or_else(|e| panic!("css {prop} of {css}: {e}"))
    }

    /// Types `value` into the input matching `css` (cleared first).
    pub fn fill(&self, css: &str, value: &str) {
        self.block(async {
            let e = self.client().find(Locator::Css(css)).await?;
            e.clear().await?;
            e.send_keys(value).await
        })
        .unwrap_or_else(|e| panic!("fill {css}: {e}"));
    }

    /// Picks the option `value` of the select matching `css`.
    pub fn select(&self, css: &str, value: &str) {
        self.block(async {
            let e = self.client().find(Locator::Css(css)).await?;
            e.select_by_value(value).await
        })
        .unwrap_or_else(|e| panic!("select {value} in {css}: {e}"));
    }

    /// Clicks the element matching `css` (a submit button waits for the next page).
    pub fn click(&self, css: &str) {
        self.block(async {
            let e = self.client().find(Locator::Css(css)).await?;
            e.click().await
        })
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Runs JavaScript in the page and returns its value.
    pub fn eval(&self, script: &str) -> Value {
        self.block(self.client().execute(script, Vec::new()))
            .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    /// The page's title.
    pub fn title(&self) -> String {
        self.block(self.client().title()).expect("title")
    }

    /// The current URL.
    pub fn url(&self) -> String {
        self.block(self.client().current_url())
            .expect("url")
            .to_string()
    }

    /// Waits up to 15 s for the current URL to satisfy `want` (a click that submits a form
    /// returns before the next page may have loaded), and returns it; panics naming `what` and
    /// the last URL seen.
    pub fn wait_url(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let start = std::time::Instant::now();
        loop {
            let url = self.url();
            if want(&url) {
                return url;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(15),
                "waited 15 s for {what}; the browser is at {url}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Waits up to 15 s for an element matching `css` to be on the page.
    pub fn wait_css(&self, css: &str) {
        self.block(async {
            self.client()
                .wait()
                .at_most(std::time::Duration::from_secs(15))
                .for_element(Locator::Css(css))
                .await
        })
        .unwrap_or_else(|e| panic!("waited 15 s for {css}: {e}"));
    }

    /// The value of cookie `name` (HttpOnly ones too: WebDriver sees every cookie).
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.block(self.client().get_named_cookie(name))
            .ok()
            .map(|c| c.value().to_string())
    }

    /// Saves a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = self.block(self.client().screenshot()).expect("screenshot");
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self.rt.block_on(c.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
