//! A real Icecast 2.4 (Debian's `icecast2`) for tests: started in the foreground as its own
//! system user (it refuses to run as root) through `setpriv`, with a generated config in a
//! temporary directory, bound to a free port of 127.0.0.1, optionally relaying a mount of
//! another Icecast; killed by PID when dropped. Needs root (scripts/test runs as root and
//! installs `icecast2`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The Debian package's system user and group.
const USER: &str = "icecast2";
const GROUP: &str = "icecast";
/// How long Icecast may take to answer after it is started.
const START_LIMIT: Duration = Duration::from_secs(10);

pub struct Icecast {
    child: Child,
    pub port: u16,
    pub password: String,
    dir: PathBuf,
}

/// A mount of another Icecast for this one to relay (`<relay>`).
pub struct Relay {
    pub port: u16,
    pub mount: &'static str,
}

impl Icecast {
    /// Starts Icecast on `port` of 127.0.0.1 with its config in a fresh directory named after
    /// `name`, and waits (up to 10 s) until it answers.
    pub async fn start(name: &str, port: u16, relay: Option<Relay>) -> Icecast {
        let dir = std::env::temp_dir().join(format!("pcmcast-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let password = format!("pw-{name}-{}", std::process::id());
        let relay = relay.map_or(String::new(), |relay| {
            format!(
                "<relay><server>127.0.0.1</server><port>{}</port><mount>{}</mount>\
                 <local-mount>{}</local-mount><on-demand>0</on-demand>\
                 <relay-shoutcast-metadata>0</relay-shoutcast-metadata></relay>",
                relay.port, relay.mount, relay.mount
            )
        });
        let config = format!(
            "<icecast>
  <location>pcmcast test</location>
  <admin>test@localhost</admin>
  <limits><clients>100</clients><sources>4</sources><source-timeout>10</source-timeout></limits>
  <authentication>
    <source-password>{password}</source-password>
    <admin-user>admin</admin-user>
    <admin-password>{password}</admin-password>
  </authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  {relay}
  <paths>
    <basedir>{dir}</basedir>
    <logdir>{dir}</logdir>
    <webroot>/usr/share/icecast2/web</webroot>
    <adminroot>/usr/share/icecast2/admin</adminroot>
  </paths>
  <logging><accesslog>access.log</accesslog><errorlog>error.log</errorlog><loglevel>3</loglevel></logging>
</icecast>
",
            dir = dir.display()
        );
        std::fs::write(dir.join("icecast.xml"), config).unwrap();
        let chown = Command::new("chown")
            .args(["-R", USER])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(chown.success(), "chown {USER} {}", dir.display());
        let mut icecast = Icecast {
            child: spawn(&dir),
            port,
            password,
            dir,
        };
        icecast.wait_until_up().await;
        icecast
    }

    /// Kills Icecast and starts it again with the same config, on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.child = spawn(&self.dir);
        self.wait_until_up().await;
    }

    async fn wait_until_up(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("icecast2 exited ({status}): {}", self.logs());
            }
            if self.status_json().await.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "icecast2 on port {} did not answer within {START_LIMIT:?}: {}",
                self.port,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What Icecast printed and logged, for failure messages.
    pub fn logs(&self) -> String {
        let read = |file: &str| std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        format!(
            "\n--- stdout ---\n{}\n--- error.log ---\n{}",
            read("stdout.log"),
            read("error.log")
        )
    }

    /// A listener's URL of `mount`.
    pub fn url(&self, mount: &str) -> String {
        format!("http://127.0.0.1:{}{mount}", self.port)
    }

    /// The URL pcmcast pushes to, with the source password.
    pub fn source_url(&self, mount: &str) -> String {
        format!(
            "http://source:{}@127.0.0.1:{}{mount}",
            self.password, self.port
        )
    }

    /// `/status-json.xsl`, if Icecast answers within a second.
    pub async fn status_json(&self) -> Option<Value> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let response = client.get(self.url("/status-json.xsl")).send().await.ok()?;
        if response.status() != 200 {
            return None;
        }
        serde_json::from_slice(&response.bytes().await.ok()?).ok()
    }

    /// What `/status-json.xsl` says about `mount`, if Icecast serves it.
    pub async fn mount_status(&self, mount: &str) -> Option<Value> {
        let status = self.status_json().await?;
        let listen_url = self.url(mount);
        let sources = match &status["icestats"]["source"] {
            Value::Array(sources) => sources.clone(),
            Value::Object(_) => vec![status["icestats"]["source"].clone()],
            _ => return None,
        };
        sources
            .into_iter()
            .find(|source| source["listenurl"] == listen_url.as_str())
    }

    /// Waits until Icecast serves `mount` (bounded by `limit`); returns its status.
    pub async fn wait_for_mount(&self, mount: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.mount_status(mount).await {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "Icecast on port {} did not serve {mount} within {limit:?}: {}",
                self.port,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills Icecast (SIGKILL, by PID) and waits for it to exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Icecast on the config in `dir`; setpriv execs it, so the child's PID is Icecast's.
fn spawn(dir: &Path) -> Child {
    let stdout = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stdout.log"))
        .unwrap();
    Command::new("setpriv")
        .args([
            &format!("--reuid={USER}"),
            &format!("--regid={GROUP}"),
            "--init-groups",
            "icecast2",
            "-c",
        ])
        .arg(dir.join("icecast.xml"))
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().unwrap())
        .stderr(stdout)
        .spawn()
        .expect("setpriv and icecast2 (run the tests as root; scripts/test installs icecast2)")
}

impl Drop for Icecast {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
