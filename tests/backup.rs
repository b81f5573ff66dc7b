//! Backup and restore, with real `dynakv serve` processes and the CLI: a
//! node backed up, then wiped and restored from the backup, ends up with
//! every write acknowledged before and after the backup (siblings
//! included), writes as a fresh writer, and brings back nothing deleted
//! after the backup. Damaged or incomplete backups are refused whole.

#![allow(clippy::unwrap_used)] // tests panic on purpose

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use dynakv::backup::{Records, Section};
use dynakv::config::StorageSection;
use dynakv::store::Store;
use dynakv_actors::client::Client;
use dynakv_actors::storage::Storage;
use dynakv_actors::testkit::{check, wait_for};
use support::{ProcessCluster, cli};

const WAIT: Duration = Duration::from_secs(60);

/// Every key's live values, sorted (empty: not found).
type Expected = BTreeMap<String, Vec<Vec<u8>>>;

fn sorted(mut values: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    values.sort();
    values
}

/// `dynakv restore` from `from` into `data_dir`, with `-c config` if given.
fn restore(from: &str, data_dir: &str, config: Option<&str>) -> (bool, String, String) {
    let mut args = vec!["restore", "--from", from, "--data-dir", data_dir];
    args.extend(config.map(|c| ["-c", c]).into_iter().flatten());
    cli(&args)
}

/// The data records of the backup in `dir`.
fn backed_up(dir: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let file = std::fs::File::open(dir.join(dynakv::backup::RECORDS_FILE)).unwrap();
    let mut records = Records::new(std::io::BufReader::new(file));
    let mut data = Vec::new();
    while let Some(r) = records.next_record().unwrap() {
        if r.section == Section::Data {
            data.push((r.key, r.value));
        }
    }
    data
}

#[actix_rt::test]
async fn a_restored_node_has_every_acknowledged_write_and_no_delete_comes_back() {
    // Collection would take a delete within a second (two allowances 300
    // ms apart) if deletes were not kept for an hour.
    let extra = "[anti_entropy]\ninterval_ms = 20\ngc_interval_ms = 200\ngc_grace_ms = 300\n\
                 keep_deleted_ms = 3600000\n";
    let mut cluster = ProcessCluster::start_sized(3, 64, extra);
    for i in 0..3 {
        cluster.wait_formed(i, 3, WAIT).await;
    }
    let addrs = cluster.client_addrs.clone();
    let one = Client::connect(&addrs[0], "").await.unwrap();
    let two = Client::connect(&addrs[1], "").await.unwrap();

    // Before the backup, on every replica: plain keys, a key with two
    // siblings, a deleted key, keys to delete later, and a key written
    // through node 1 (its writer before the restore).
    for i in 0..40 {
        let key = format!("kept-{i}");
        one.put(key.as_bytes(), format!("v1-{i}").as_bytes(), &[], Some(3))
            .await
            .unwrap();
        one.put(format!("doomed-{i}").as_bytes(), b"doomed", &[], Some(3))
            .await
            .unwrap();
    }
    for value in [&b"a"[..], b"b"] {
        one.put(b"sib", value, &[], Some(3)).await.unwrap();
    }
    let w = one.put(b"gone", b"x", &[], Some(3)).await.unwrap();
    one.delete(b"gone", &w.context, Some(3)).await.unwrap();
    one.put(b"probe", b"before", &[], Some(3)).await.unwrap();
    let old_writer = one.inspect(b"probe").await.unwrap().siblings[0].0;

    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup");
    let backup_arg = backup.to_str().unwrap();
    let began = std::time::Instant::now();
    let rate = 20_000;
    let (ok, out, err) = cli(&[
        "backup",
        "--node",
        &addrs[0],
        "--out",
        backup_arg,
        "--max-bytes-per-sec",
        &rate.to_string(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("backed up node node1"), "{out}");
    let manifest = dynakv::backup::Manifest::parse(
        &std::fs::read_to_string(backup.join("manifest.json")).unwrap(),
    )
    .unwrap();
    // Paced: it cannot have taken less than its bytes at that rate.
    let paced = Duration::from_secs_f64(manifest.bytes as f64 / f64::from(rate));
    assert!(
        began.elapsed() >= paced,
        "{:?} < {paced:?}",
        began.elapsed()
    );
    assert_eq!(manifest.node, "node1");
    assert_eq!(manifest.keys, 40 + 40 + 3, "every key node 1 held");
    // A second backup into the same directory is refused.
    let (ok, _, err) = cli(&["backup", "--node", &addrs[0], "--out", backup_arg]);
    assert!(!ok && err.contains("already holds a backup"), "{err}");

    // After the backup, through node 2: new keys, overwrites, a third
    // sibling, and deletes of keys the backup holds.
    for i in 0..40 {
        two.put(format!("new-{i}").as_bytes(), b"v2", &[], Some(2))
            .await
            .unwrap();
        let key = format!("doomed-{i}");
        let read = two.get(key.as_bytes(), Some(2)).await.unwrap();
        two.delete(key.as_bytes(), &read.context, Some(2))
            .await
            .unwrap();
    }
    for i in 0..10 {
        let key = format!("kept-{i}");
        let read = two.get(key.as_bytes(), Some(2)).await.unwrap();
        two.put(key.as_bytes(), b"v2", &read.context, Some(2))
            .await
            .unwrap();
    }
    two.put(b"sib", b"c", &[], Some(2)).await.unwrap();
    let mut expected = Expected::new();
    for key in ["sib", "gone", "probe"]
        .map(String::from)
        .into_iter()
        .chain((0..40).flat_map(|i| {
            [
                format!("kept-{i}"),
                format!("new-{i}"),
                format!("doomed-{i}"),
            ]
        }))
    {
        let read = two.get(key.as_bytes(), Some(2)).await.unwrap();
        expected.insert(key, sorted(read.values));
    }
    assert_eq!(
        expected["sib"],
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );
    assert!(expected["doomed-0"].is_empty() && expected["gone"].is_empty());

    // Node 1 is lost with its disk, and restored from the backup.
    cluster.kill(0);
    let (data_dir, config) = cluster.node_paths(0);
    std::fs::remove_dir_all(&data_dir).unwrap();
    let data_arg = data_dir.to_str().unwrap();
    let config_arg = config.to_str().unwrap();

    // A damaged copy of the backup is refused, and writes nothing.
    let damaged = dir.path().join("damaged");
    std::fs::create_dir(&damaged).unwrap();
    for name in ["manifest.json", "records"] {
        std::fs::copy(backup.join(name), damaged.join(name)).unwrap();
    }
    let mut bytes = std::fs::read(damaged.join("records")).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(damaged.join("records"), bytes).unwrap();
    let damaged_arg = damaged.to_str().unwrap();
    let (ok, _, err) = restore(damaged_arg, data_arg, Some(config_arg));
    assert!(!ok && err.contains("damaged"), "{err}");
    assert!(
        !data_dir.exists(),
        "a refused restore wrote {}",
        data_dir.display()
    );
    // So is a directory that holds no finished backup.
    let (ok, _, err) = restore(dir.path().to_str().unwrap(), data_arg, None);
    assert!(!ok && err.contains("not a finished backup"), "{err}");
    // Into another node's configuration.
    let (_, other_config) = cluster.node_paths(1);
    let other_arg = other_config.to_str().unwrap();
    let (ok, _, err) = restore(backup_arg, data_arg, Some(other_arg));
    assert!(
        !ok && err.contains("configuration is of node \"node2\""),
        "{err}"
    );
    // Older than deletes are kept: refused, unless forced.
    let short_keep = dir.path().join("short-keep.toml");
    std::fs::write(
        &short_keep,
        "[node]\nid = \"node1\"\n\n[anti_entropy]\nkeep_deleted_ms = 1\n",
    )
    .unwrap();
    let short_arg = short_keep.to_str().unwrap();
    let (ok, _, err) = restore(backup_arg, data_arg, Some(short_arg));
    assert!(!ok && err.contains("--force"), "{err}");
    assert!(
        !data_dir.exists(),
        "a refused restore wrote {}",
        data_dir.display()
    );

    let (ok, out, err) = restore(backup_arg, data_arg, Some(config_arg));
    assert!(ok, "{err}");
    assert!(out.contains("83 keys"), "{out}");
    // Into a directory that is not empty, never.
    let (ok, _, err) = restore(backup_arg, data_arg, None);
    assert!(!ok && err.contains("not empty"), "{err}");

    // The restored store holds the backup's records byte for byte:
    // siblings and tombstones as they were.
    {
        let storage = Storage::open(&data_dir, &StorageSection::default(), "node1").unwrap();
        let restored = storage.data().scan(&[], None, usize::MAX).unwrap();
        assert_eq!(restored, backed_up(&backup));
    }

    cluster.start_again(0);
    cluster.wait_formed(0, 3, WAIT).await;
    let one = Client::connect(&addrs[0], "").await.unwrap();

    // A fresh writer: what node 1 coordinates now carries a new actor.
    one.put(b"probe-after", b"after", &[], Some(3))
        .await
        .unwrap();
    let new_writer = one.inspect(b"probe-after").await.unwrap().siblings[0].0;
    assert_ne!(
        new_writer, old_writer,
        "the restored node reused its writer"
    );

    // Anti-entropy brings node 1's own copy of every key to what the
    // cluster acknowledged: the writes made after the backup arrive, and
    // the keys deleted after it stay deleted.
    wait_for(WAIT, "node 1's copies to match the cluster's", || async {
        for (key, values) in &expected {
            let local = one.inspect(key.as_bytes()).await?;
            let live = sorted(
                local
                    .siblings
                    .into_iter()
                    .filter_map(|(_, _, v)| v)
                    .collect(),
            );
            check(&live == values, || {
                format!("{key}: node 1 holds {live:?}, expected {values:?}")
            })?;
        }
        Ok(())
    })
    .await
    .unwrap();
    for (key, values) in &expected {
        let read = one.get(key.as_bytes(), Some(3)).await.unwrap();
        assert_eq!(&sorted(read.values), values, "{key}");
    }
    // The deletes' tombstones are still kept.
    let held = two.inspect(b"doomed-0").await.unwrap().siblings;
    assert!(
        !held.is_empty() && held.iter().all(|(_, _, v)| v.is_none()),
        "{held:?}"
    );
}
