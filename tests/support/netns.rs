//! Real separate hosts for process tests: each node in its own network
//! namespace, its veth link plugged into a bridge in the root namespace
//! (where the test's clients run). Faults act on the links: a link taken
//! down cuts a node off from everyone; links moved to a second bridge,
//! which the root namespace has no address on, split the cluster with
//! the clients on the majority side.
//!
//! Needs root and iproute2; `Namespaces::create` says why it cannot run
//! otherwise, and tests then skip this part.

use std::process::Command;

/// Port every node listens on for clients and peers, in its namespace.
const CLIENT_PORT: u16 = 7001;
const PEER_PORT: u16 = 7002;

pub struct Namespaces {
    tag: String,
    subnet: String,
    nodes: usize,
}

/// iproute2's `ip`: on the PATH, or where Debian puts it (a PATH without
/// the sbin directories is common for non-login shells).
/// Looked up once per test process.
fn ip_program() -> &'static str {
    static FOUND: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    FOUND.get_or_init(|| {
        ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("ip")
    })
}

/// Runs `ip args...`; the error says what failed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new(ip_program())
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Namespaces {
    /// One namespace per node, linked to a bridge; Err says why not.
    pub fn create(nodes: usize) -> Result<Namespaces, String> {
        // SAFETY-free check: root is uid 0 in /proc/self/status's Uid line.
        let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("");
        if uid != "0" {
            return Err("not running as root".into());
        }
        let pid = std::process::id();
        let net = Namespaces {
            tag: format!("dk{pid}"),
            subnet: format!("10.77.{}", pid % 250),
            nodes,
        };
        net.remove(); // leftovers of an earlier process with this pid
        net.build().inspect_err(|_| net.remove())?;
        Ok(net)
    }

    fn build(&self) -> Result<(), String> {
        let (main, side) = (self.bridge("b"), self.bridge("c"));
        for b in [&main, &side] {
            ip(&["link", "add", b, "type", "bridge"])?;
            // Bridged frames skip iptables (with br_netfilter loaded, a
            // host firewall such as Docker's FORWARD policy would drop
            // them). Older iproute2 lacks the option: go on without it.
            let _ = ip(&["link", "set", b, "type", "bridge", "nf_call_iptables", "0"]);
            ip(&["link", "set", b, "up"])?;
        }
        ip(&[
            "addr",
            "add",
            &format!("{}.254/24", self.subnet),
            "dev",
            &main,
        ])?;
        for i in 0..self.nodes {
            let (ns, host, inner) = (self.namespace(i), self.host_link(i), self.inner_link(i));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &host, "master", &main])?;
            ip(&["link", "set", &host, "up"])?;
            let addr = format!("{}/24", self.ip(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        // What starting a node needs (it fails in some containers).
        ip(&["netns", "exec", &self.namespace(0), "true"])
    }

    /// Deletes everything (namespaces take their veth ends with them).
    fn remove(&self) {
        for i in 0..self.nodes {
            let _ = ip(&["netns", "del", &self.namespace(i)]);
        }
        for b in ["b", "c"] {
            let _ = ip(&["link", "del", &self.bridge(b)]);
        }
    }

    fn bridge(&self, which: &str) -> String {
        format!("{}{which}", self.tag)
    }

    fn namespace(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    fn host_link(&self, i: usize) -> String {
        format!("{}h{i}", self.tag)
    }

    fn inner_link(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    /// Node `i`'s client and peer addresses.
    pub fn addrs(&self, i: usize) -> (String, String) {
        let ip = self.ip(i);
        (format!("{ip}:{CLIENT_PORT}"), format!("{ip}:{PEER_PORT}"))
    }

    /// A command that runs `program` inside node `i`'s namespace.
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new(ip_program());
        c.args(["netns", "exec", &self.namespace(i)]).arg(program);
        c
    }

    /// Node `i`'s link goes down: nobody reaches it, it reaches nobody.
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", &self.host_link(i), "down"]).unwrap();
    }

    /// The `group`'s links move to the side bridge: they reach each other
    /// only, and the clients reach only the others.
    pub fn split(&self, group: &[usize]) {
        for &i in group {
            ip(&[
                "link",
                "set",
                &self.host_link(i),
                "master",
                &self.bridge("c"),
            ])
            .unwrap();
        }
    }

    /// Every link up and on the main bridge again.
    pub fn heal(&self) {
        for i in 0..self.nodes {
            let host = self.host_link(i);
            ip(&["link", "set", &host, "master", &self.bridge("b")]).unwrap();
            ip(&["link", "set", &host, "up"]).unwrap();
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.remove();
    }
}
