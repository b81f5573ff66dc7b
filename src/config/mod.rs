//! The node configuration: one typed struct, layered and validated.
//!
//! Sources, later ones winning: the defaults in `conf/default.toml` (compiled
//! into the binary, and kept equal to `Config::default()` by a test), the
//! node's own file, then environment variables `DYNAKV__SECTION__KEY`
//! (for example `DYNAKV__CLUSTER__N=5`; lists are comma-separated).
//! Unknown keys are errors, so a typo does not silently fall back to a
//! default. `validate()` runs on every load and explains what is wrong.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use config::{Environment, File, FileFormat};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::node::NodeId;
use crate::partition::validate_partition_count;

mod sections;
pub use sections::*;

/// The annotated defaults, the first configuration layer.
pub const DEFAULT_TOML: &str = include_str!("../../conf/default.toml");

/// Keys whose values are free text: taken from the environment verbatim.
const TEXT_KEYS: [&str; 6] = [
    "node.id",
    "node.data_dir",
    "cluster.name",
    "security.cluster_secret",
    "security.client_token",
    "log.level",
];

/// Largest replication factor accepted: beyond this a write fans out to more
/// nodes than any Dynamo deployment uses, and quorum arithmetic gains nothing.
pub const MAX_N: u8 = 16;
/// Largest weight: a node may be at most this many times a weight-1 node.
pub const MAX_WEIGHT: u32 = 1000;
/// Room a frame needs beyond key and value (ids, context, framing, the
/// namespace a key is in).
const FRAME_OVERHEAD: u64 = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeSection,
    pub cluster: ClusterSection,
    pub storage: StorageSection,
    pub limits: LimitsSection,
    pub timeouts: TimeoutsSection,
    pub gossip: GossipSection,
    pub hints: HintsSection,
    pub anti_entropy: AntiEntropySection,
    pub handoff: HandoffSection,
    pub security: SecuritySection,
    pub tls: TlsSection,
    pub metrics: MetricsSection,
    pub log: LogSection,
    pub testing: TestingSection,
}

impl Config {
    /// The settings of the namespace `default`: `[cluster]`'s N, R and W
    /// and `[limits]`'s, no TTL. A namespace created without some setting
    /// takes it from here.
    pub fn default_namespace(&self) -> crate::namespace::Settings {
        crate::namespace::Settings {
            n: self.cluster.n,
            r: self.cluster.r,
            w: self.cluster.w,
            ttl_ms: 0,
            max_siblings: self.limits.max_siblings,
            max_value_bytes: self.limits.max_value_bytes,
            kind: crate::namespace::Kind::Blob,
        }
    }

    /// Loads the layers: embedded defaults, then `file` (if given), then the
    /// process environment.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        Config::load_with_env(file, None)
    }

    /// As `load`, with the environment given as a map (for tests) instead of
    /// read from the process.
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Config> {
        let mut vars: HashMap<String, String> = env.unwrap_or_else(|| std::env::vars().collect());
        let mut builder =
            config::Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        // Free text is taken as it is: parsing would turn "0123" into 123.
        for key in TEXT_KEYS {
            let var = format!("DYNAKV__{}", key.replace('.', "__").to_uppercase());
            if let Some(value) = vars.remove(&var) {
                builder = builder
                    .set_override(key, value)
                    .map_err(|e| Error::Config(e.to_string()))?;
            }
        }
        if let Some(path) = file {
            if !path.is_file() {
                return Err(Error::Config(format!(
                    "configuration file {} not found",
                    path.display()
                )));
            }
            builder = builder.add_source(File::from(path).format(FileFormat::Toml));
        }
        let environment = Environment::with_prefix("DYNAKV")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("cluster.seeds")
            .source(Some(vars));
        let config: Config = builder
            .add_source(environment)
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses one TOML document on top of the defaults (no environment).
    pub fn from_toml(text: &str) -> Result<Config> {
        let config: Config = config::Config::builder()
            .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
            .add_source(File::from_str(text, FileFormat::Toml))
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value and the relations between them.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        NodeId::new(self.node.id.clone()).map_err(|e| Error::Config(format!("node.id: {e}")))?;
        check_addr("node.client_addr", &self.node.client_addr)?;
        check_addr("node.peer_addr", &self.node.peer_addr)?;
        if self.node.client_addr == self.node.peer_addr {
            return bad("node.client_addr and node.peer_addr must differ".into());
        }
        if !self.metrics.addr.is_empty() {
            check_addr("metrics.addr", &self.metrics.addr)?;
        }
        if self.node.data_dir.as_os_str().is_empty() {
            return bad("node.data_dir is empty".into());
        }
        self.tls.validate()?;
        self.testing.versions()?;
        if !(1..=MAX_WEIGHT).contains(&self.node.weight) {
            return bad(format!(
                "node.weight = {} must be between 1 and {MAX_WEIGHT}",
                self.node.weight
            ));
        }

        let c = &self.cluster;
        if c.name.is_empty() || c.name.len() > 64 {
            return bad("cluster.name must be 1 to 64 bytes".into());
        }
        validate_partition_count(c.partitions)
            .map_err(|e| Error::Config(format!("cluster.{e}")))?;
        if !(1..=MAX_N).contains(&c.n) {
            return bad(format!("cluster.n = {} must be between 1 and {MAX_N}", c.n));
        }
        for (name, q) in [("r", c.r), ("w", c.w)] {
            if q == 0 {
                return bad(format!(
                    "cluster.{name} = 0: at least one replica must answer"
                ));
            }
            if q > c.n {
                return bad(format!(
                    "cluster.{name} = {q} is greater than cluster.n = {}: a quorum cannot exceed the replicas",
                    c.n
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for seed in &c.seeds {
            check_addr("cluster.seeds", seed)?;
            if !seen.insert(seed) {
                return bad(format!("cluster.seeds lists {seed} twice"));
            }
        }

        if !(4..=1024).contains(&self.storage.memtable_mb) {
            return bad(format!(
                "storage.memtable_mb = {} must be between 4 and 1024",
                self.storage.memtable_mb
            ));
        }
        if self.storage.fsync_interval_ms == 0 {
            return bad("storage.fsync_interval_ms must be positive".into());
        }

        let l = &self.limits;
        if l.max_key_bytes == 0
            || l.max_value_bytes == 0
            || l.max_siblings == 0
            || l.max_connections == 0
            || l.max_in_flight == 0
            || l.max_in_flight_per_connection == 0
            || l.max_batch == 0
            || l.large_write_bytes == 0
        {
            return bad("limits.* must all be positive".into());
        }
        if (1..100).contains(&l.small_p99_bound_percent) {
            return bad(format!(
                "limits.small_p99_bound_percent = {} must be 0 (large writes never slowed) or at least 100",
                l.small_p99_bound_percent
            ));
        }
        let needed = u64::from(l.max_key_bytes) + u64::from(l.max_value_bytes) + FRAME_OVERHEAD;
        if u64::from(l.max_frame_bytes) < needed {
            return bad(format!(
                "limits.max_frame_bytes = {} cannot carry a key of {} and a value of {} bytes (needs at least {needed})",
                l.max_frame_bytes, l.max_key_bytes, l.max_value_bytes
            ));
        }

        let t = &self.timeouts;
        for (name, ms) in [
            ("request_ms", t.request_ms),
            ("connect_ms", t.connect_ms),
            ("read_spare_ms", t.read_spare_ms),
        ] {
            if ms == 0 {
                return bad(format!("timeouts.{name} must be positive"));
            }
        }
        let g = &self.gossip;
        if g.interval_ms == 0 {
            return bad("gossip.interval_ms must be positive".into());
        }
        if g.suspect_after_ms <= g.interval_ms || g.down_after_ms < g.suspect_after_ms {
            return bad(format!(
                "gossip timeouts must satisfy interval_ms ({}) < suspect_after_ms ({}) <= down_after_ms ({})",
                g.interval_ms, g.suspect_after_ms, g.down_after_ms
            ));
        }
        let ae = &self.anti_entropy;
        if ae.interval_ms == 0
            || ae.max_bytes_per_sec == 0
            || ae.gc_interval_ms == 0
            || ae.gc_batch == 0
        {
            return bad("anti_entropy.* must all be positive".into());
        }
        let t = &self.handoff;
        if t.chunk_keys == 0 || t.max_bytes_per_sec == 0 || t.interval_ms == 0 {
            return bad("handoff.* must all be positive".into());
        }
        let h = &self.hints;
        if h.batch_size == 0 || h.interval_ms == 0 {
            return bad("hints.batch_size and hints.interval_ms must be positive".into());
        }
        Ok(())
    }

    /// This node's id (validated by `validate`).
    pub fn node_id(&self) -> NodeId {
        NodeId::new(self.node.id.clone()).expect("validated at load")
    }
}

/// Accepts `host:port` with a non-empty host (a name or an IP, IPv6 in
/// brackets) and a port from 1 to 65535. Names are resolved when used.
pub fn check_addr(what: &str, addr: &str) -> Result<()> {
    let err = |why: &str| {
        Err(Error::Config(format!(
            "{what}: {addr:?} {why}; expected host:port"
        )))
    };
    let Some((host, port)) = addr.rsplit_once(':') else {
        return err("has no port");
    };
    if host.is_empty() {
        return err("has no host");
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return err("is an IPv6 address without brackets");
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        return err("is not a host name");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => err("has a bad port"),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn err(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn default_toml_matches_the_defaults_in_code() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn the_example_configurations_load() {
        let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
        let mut files = vec![conf.join("dynakv.toml")];
        for i in 1..=3 {
            files.push(conf.join(format!("local/node{i}.toml")));
        }
        for file in files {
            let c = Config::load_with_env(Some(&file), env(&[])).unwrap();
            assert!(c.node.id.starts_with("node"), "{}", file.display());
        }
        // the environment conf/docker-compose.yml gives node2
        let c = Config::load_with_env(
            None,
            env(&[
                ("DYNAKV__CLUSTER__NAME", "compose"),
                ("DYNAKV__CLUSTER__SEEDS", "node1:7101,node2:7101,node3:7101"),
                ("DYNAKV__NODE__DATA_DIR", "/var/lib/dynakv"),
                ("DYNAKV__METRICS__ADDR", "0.0.0.0:9101"),
                ("DYNAKV__SECURITY__CLUSTER_SECRET", "0123456789"),
                ("DYNAKV__NODE__ID", "node2"),
                ("DYNAKV__NODE__CLIENT_ADDR", "node2:7001"),
                ("DYNAKV__NODE__PEER_ADDR", "node2:7101"),
            ]),
        )
        .unwrap();
        assert_eq!(c.cluster.seeds.len(), 3);
        assert_eq!(c.security.cluster_secret, "0123456789", "kept as text");
        assert_eq!(c.metrics.addr, "0.0.0.0:9101");
    }

    #[test]
    fn layers_override_in_order() {
        let dir = std::env::temp_dir().join(format!("dynakv-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("node.toml");
        std::fs::write(
            &file,
            "[node]\nid = \"from-file\"\n[cluster]\nn = 5\nr = 3\n",
        )
        .unwrap();
        let c = Config::load_with_env(
            Some(&file),
            env(&[
                ("DYNAKV__CLUSTER__R", "4"),
                ("DYNAKV__CLUSTER__SEEDS", "a:1,b:2"),
            ]),
        )
        .unwrap();
        assert_eq!(c.node.id, "from-file");
        assert_eq!(c.cluster.n, 5);
        assert_eq!(c.cluster.r, 4);
        assert_eq!(c.cluster.w, 2, "untouched keys keep their default");
        assert_eq!(c.cluster.seeds, vec!["a:1", "b:2"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn environment_values_are_type_checked() {
        let e = Config::load_with_env(None, env(&[("DYNAKV__CLUSTER__N", "abc")])).unwrap_err();
        assert!(e.to_string().contains("cluster.n"), "{e}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = Config::load(Some(Path::new("/nonexistent/dynakv.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dynakv.toml"), "{e}");
    }

    #[test]
    fn bad_values_are_explained() {
        assert!(err("[cluster]\nr = 4").contains("cluster.r = 4 is greater than cluster.n = 3"));
        assert!(err("[cluster]\nw = 4").contains("cluster.w = 4"));
        assert!(err("[cluster]\nr = 0").contains("cluster.r = 0"));
        assert!(err("[cluster]\npartitions = 1000").contains("not a power of two"));
        assert!(err("[node]\nid = \"\"").contains("node id is empty"));
        assert!(err("[node]\nid = \"a b\"").contains("node.id"));
        assert!(err("[node]\npeer_addr = \"localhost\"").contains("has no port"));
        assert!(err("[node]\nclient_addr = \"h:99999\"").contains("bad port"));
        assert!(err("[cluster]\nseeds = [\"a:1\", \"a:1\"]").contains("lists a:1 twice"));
        assert!(err("[cluster]\nseeds = [\"nope\"]").contains("cluster.seeds"));
        assert!(err("[node]\nweight = 0").contains("node.weight"));
        assert!(err("[storage]\nfsync = \"sometimes\"").contains("sometimes"));
        assert!(err("[storage]\nmemtable_mb = 2").contains("storage.memtable_mb = 2"));
        assert!(err("[limits]\nmax_frame_bytes = 1000").contains("max_frame_bytes"));
        assert!(err("[timeouts]\nread_spare_ms = 0").contains("timeouts.read_spare_ms"));
        assert!(err("[tls]\ncert = \"c.pem\"").contains("must be set together"));
        assert!(err("[tls]\nrequire_client_cert = true").contains("needs tls.cert"));
        assert!(
            err("[cluster]\nreplicas = 3").contains("replicas"),
            "unknown keys are errors"
        );
    }

    #[test]
    fn addresses() {
        for ok in [
            "127.0.0.1:7001",
            "localhost:1",
            "db-1.example:65535",
            "[::1]:7001",
        ] {
            assert!(check_addr("x", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ":7001",
            "host:",
            "host:0",
            "::1:7001",
            "a b:1",
            "host:port",
        ] {
            assert!(check_addr("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numeric_looking_strings_from_the_environment_stay_strings() {
        let env = Some(
            [
                ("DYNAKV__NODE__ID", "7"),
                ("DYNAKV__NODE__DATA_DIR", "/tmp/x"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        let c = Config::load_with_env(None, env).unwrap();
        assert_eq!(c.node.id, "7");
        assert_eq!(c.node.data_dir, std::path::PathBuf::from("/tmp/x"));
    }

    #[test]
    fn each_node_has_its_own_memtable_size_near_the_configured_one() {
        let storage = StorageSection::default();
        let mib = storage.memtable_mb << 20;
        let sizes: Vec<u64> = (0..50)
            .map(|i| storage.memtable_bytes(&format!("node{i}")))
            .collect();
        for size in &sizes {
            assert!((mib * 3 / 4..=mib * 5 / 4).contains(size), "{size}");
        }
        // Fixed by the id: a restarted node keeps its size.
        assert_eq!(storage.memtable_bytes("node7"), sizes[7]);
        // Spread over the range, not bunched: the conf/local nodes differ
        // by more than a tenth of the size from each other.
        let local: Vec<u64> = ["node1", "node2", "node3"]
            .iter()
            .map(|n| storage.memtable_bytes(n))
            .collect();
        for (i, a) in local.iter().enumerate() {
            for b in &local[i + 1..] {
                assert!(a.abs_diff(*b) > mib / 10, "{local:?}");
            }
        }
        let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(max - min > mib * 4 / 10, "{min}..{max}");
    }
}
