//! Real `dynakv serve` processes on loopback, for process-level tests.

#![allow(dead_code, clippy::unwrap_used)] // shared by several test files

pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dynakv::Error;
use dynakv_actors::client::{Client, Options};
use dynakv_actors::testkit::{check, wait_for};
use netns::Namespaces;
use tempfile::TempDir;

/// The `dynakv` binary next to this test executable (built by
/// `cargo test --workspace`), building it if it is missing or older than
/// the sources (`cargo test --test X` builds only the test).
pub fn binary() -> PathBuf {
    static CHECKED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let bin = exe.parent().unwrap().parent().unwrap().join("dynakv");
            let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let sources = newest(&root.join("src")).max(newest(&root.join("actors/src")));
            if built.is_none_or(|b| sources.is_some_and(|s| s > b)) {
                let mut build = Command::new(env!("CARGO"));
                build.args(["build", "-p", "dynakv-actors", "--bin", "dynakv"]);
                if !cfg!(debug_assertions) {
                    build.arg("--release"); // next to a release test
                }
                let status = build.status().unwrap();
                assert!(status.success(), "building the dynakv binary failed");
            }
            bin
        })
        .clone()
}

/// Runs the `dynakv` CLI; returns (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            if path.is_dir() {
                newest(&path)
            } else {
                e.metadata().and_then(|m| m.modified()).ok()
            }
        })
        .max()
}

/// A port nothing listens on right now, below the kernel's ephemeral range
/// (32768 and up on Linux), so an outgoing connection cannot take it between
/// this check and the child process binding it. Ports are handed out from a
/// per-process counter with a random start, so tests running in parallel in
/// one binary never pick the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 512) as u16 * 20,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 32_000, "ran out of test ports");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct ProcessCluster {
    pub dir: TempDir,
    pub client_addrs: Vec<String>,
    peer_addrs: Vec<String>,
    partitions: u32,
    configs: Vec<PathBuf>,
    procs: Vec<Option<Child>>,
    /// Set when each node runs in its own network namespace. Declared
    /// after `procs`, and `drop` kills the processes first.
    pub net: Option<Namespaces>,
}

impl ProcessCluster {
    /// Writes a config per node (every other node as a seed, `extra` TOML
    /// appended to each) and starts them all, on loopback.
    pub fn start(n: usize, extra: &str) -> ProcessCluster {
        Self::start_sized(n, 1024, extra)
    }

    /// The same, with `partitions` partitions (fewer make anti-entropy
    /// go round them sooner).
    pub fn start_sized(n: usize, partitions: u32, extra: &str) -> ProcessCluster {
        let addrs = (0..n)
            .map(|_| {
                let addr = || format!("127.0.0.1:{}", free_port());
                (addr(), addr())
            })
            .collect();
        Self::start_at(addrs, None, partitions, extra)
    }

    /// The same, each node in its own network namespace of `net`.
    pub fn start_in(net: Namespaces, n: usize, extra: &str) -> ProcessCluster {
        let addrs = (0..n).map(|i| net.addrs(i)).collect();
        Self::start_at(addrs, Some(net), 1024, extra)
    }

    /// `addrs`: each node's client and peer address.
    fn start_at(
        addrs: Vec<(String, String)>,
        net: Option<Namespaces>,
        partitions: u32,
        extra: &str,
    ) -> ProcessCluster {
        let n = addrs.len();
        let mut cluster = ProcessCluster {
            client_addrs: addrs.iter().map(|(c, _)| c.clone()).collect(),
            peer_addrs: addrs.iter().map(|(_, p)| p.clone()).collect(),
            partitions,
            dir: tempfile::tempdir().unwrap(),
            configs: Vec::new(),
            procs: Vec::new(),
            net,
        };
        for i in 0..n {
            let seeds: Vec<&str> = (0..n)
                .filter(|j| *j != i)
                .map(|j| cluster.peer_addrs[j].as_str())
                .collect();
            let path = cluster.write_config(i, &seeds, extra);
            cluster.configs.push(path);
            cluster.procs.push(None);
        }
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster
    }

    /// Writes node `i`'s config (`extra` TOML appended) and returns its path.
    /// An `extra` with a `[hints]` table replaces the one written here.
    fn write_config(&self, i: usize, seeds: &[&str], extra: &str) -> PathBuf {
        let seeds: Vec<String> = seeds.iter().map(|p| format!("\"{p}\"")).collect();
        let hints = match extra.contains("[hints]") {
            true => "",
            false => "[hints]\ninterval_ms = 200\n\n",
        };
        let toml = format!(
            "[node]\nid = \"node{id}\"\nclient_addr = \"{client}\"\npeer_addr = \"{peer}\"\n\
             data_dir = \"{data}\"\n\n[cluster]\nseeds = [{seeds}]\npartitions = {partitions}\n\n\
             [gossip]\ninterval_ms = 100\nsuspect_after_ms = 1000\ndown_after_ms = 3000\n\n\
             {hints}[timeouts]\nrequest_ms = 2000\nconnect_ms = 500\n{extra}\n",
            id = i + 1,
            client = self.client_addrs[i],
            peer = self.peer_addrs[i],
            data = self.dir.path().join(format!("node{}", i + 1)).display(),
            seeds = seeds.join(", "),
            partitions = self.partitions,
        );
        let path = self.dir.path().join(format!("node{}.toml", i + 1));
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// Starts one more node on loopback, with node 1 as its only seed: it
    /// joins the running cluster. Returns its index.
    pub fn add(&mut self, extra: &str) -> usize {
        assert!(self.net.is_none(), "nodes are added on loopback only");
        let i = self.client_addrs.len();
        self.client_addrs.push(format!("127.0.0.1:{}", free_port()));
        self.peer_addrs.push(format!("127.0.0.1:{}", free_port()));
        let seed = self.peer_addrs[0].clone();
        let path = self.write_config(i, &[&seed], extra);
        self.configs.push(path);
        self.procs.push(None);
        self.spawn(i);
        i
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{}.log", i + 1))
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let mut command = match &self.net {
            Some(net) => net.command(i, &binary()),
            None => Command::new(binary()),
        };
        let child = command
            .args(["serve", "-c"])
            .arg(&self.configs[i])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs[i] = Some(child);
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.procs[i].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for the process to exit; returns its status.
    pub fn terminate(&mut self, i: usize) -> std::process::ExitStatus {
        let mut child = self.procs[i].take().expect("node is running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        child.wait().unwrap()
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to node `i`'s process.
    pub fn signal(&self, i: usize, signal: &str) {
        let child = self.procs[i].as_ref().expect("node is running");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.procs[i].is_some()
    }

    /// Starts node `i` again (after `kill` or `terminate`).
    pub fn start_again(&mut self, i: usize) {
        assert!(self.procs[i].is_none(), "node{} is still running", i + 1);
        self.spawn(i);
    }

    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// Node `i`'s whole log (stderr of every start).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// Waits for node `i`'s process to exit by itself; its status, or None
    /// if it still runs at the deadline.
    pub async fn wait_exit(
        &mut self,
        i: usize,
        deadline: Duration,
    ) -> Option<std::process::ExitStatus> {
        let child = self.procs[i].as_mut().expect("node was started");
        let status = wait_for(deadline, "the process to exit", || {
            let exited = child.try_wait().unwrap();
            async move { exited.ok_or_else(|| Error::Unavailable("it still runs".into())) }
        })
        .await
        .ok();
        if status.is_some() {
            self.procs[i] = None;
        }
        status
    }

    /// The end of node `i`'s log, for failure messages.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Node `i`'s data directory and configuration file.
    pub fn node_paths(&self, i: usize) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join(format!("node{}", i + 1)),
            self.configs[i].clone(),
        )
    }

    /// A cluster-aware client seeded with every node, refreshing its ring
    /// every second.
    pub async fn client(&self) -> std::sync::Arc<Client> {
        let seeds: Vec<&str> = self.client_addrs.iter().map(String::as_str).collect();
        let options = Options {
            ring_refresh: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            ..Options::default()
        };
        std::sync::Arc::new(Client::connect_cluster(&seeds, options).await.unwrap())
    }

    /// Waits until node `i` answers status with a formed ring of `members`.
    pub async fn wait_formed(&self, i: usize, members: usize, deadline: Duration) {
        let what = format!("node{} to form a cluster of {members}", i + 1);
        let formed = wait_for(deadline, &what, || async {
            let status = Client::connect(&self.client_addrs[i], "")
                .await?
                .status()
                .await?;
            check(
                status.members.len() == members && status.members.iter().all(|m| m.owned > 0),
                || format!("it sees {:?}", status.members),
            )
        })
        .await;
        if let Err(e) = formed {
            panic!(
                "{e}; the logs:\n{}",
                (0..self.procs.len())
                    .map(|j| format!("--- node{}\n{}", j + 1, self.log_tail(j)))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}

/// One write of a `Writers` loop: its key and value, when it was sent and
/// when it ended, and how.
pub struct Write {
    pub key: String,
    pub value: u32,
    pub sent: std::time::Instant,
    pub ended: std::time::Instant,
    pub result: Result<(), Error>,
}

/// Reads every acknowledged write of `writes` at `r` and checks that it
/// holds the value written (nothing acknowledged was lost). Returns how
/// many it read.
pub async fn check_acked(client: &Client, writes: &[Write], r: u8) -> usize {
    let acked: Vec<&Write> = writes.iter().filter(|w| w.result.is_ok()).collect();
    for w in &acked {
        let read = client.get(w.key.as_bytes(), Some(r)).await.unwrap();
        assert_eq!(
            read.values,
            vec![w.value.to_le_bytes().to_vec()],
            "{}",
            w.key
        );
    }
    acked.len()
}

/// Write loops through one client, each with one put in flight, on keys
/// `w{writer}-{i}` with value `i`, until stopped.
pub struct Writers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    loops: Vec<tokio::task::JoinHandle<Vec<Write>>>,
}

impl Writers {
    pub fn start(client: std::sync::Arc<Client>, writers: usize) -> Writers {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let loops = (0..writers)
            .map(|w| {
                let (client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
                tokio::spawn(async move {
                    let mut writes = Vec::new();
                    let mut i = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("w{w}-{i}");
                        let sent = std::time::Instant::now();
                        let result = client
                            .put(key.as_bytes(), &i.to_le_bytes(), &[], None)
                            .await
                            .map(|_| ());
                        if result.is_ok() {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        let ended = std::time::Instant::now();
                        writes.push(Write {
                            key,
                            value: i,
                            sent,
                            ended,
                            result,
                        });
                        i += 1;
                    }
                    writes
                })
            })
            .collect();
        Writers { stop, acked, loops }
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `n` writes in all were acknowledged.
    pub async fn acked_at_least(&self, n: usize, deadline: Duration) {
        wait_for(deadline, "acknowledged writes", || async {
            let now = self.acked();
            check(now >= n, || format!("{now} of {n} acknowledged"))
        })
        .await
        .unwrap()
    }

    /// Stops the loops; every write they made.
    pub async fn stop(self) -> Vec<Write> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut writes = Vec::new();
        for l in self.loops {
            writes.extend(l.await.unwrap());
        }
        writes
    }
}
