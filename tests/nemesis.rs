//! The fault suite on real processes: five `dynakv serve` processes, writers
//! and readers going through the client while a nemesis SIGKILLs and
//! restarts nodes and pauses them (SIGSTOP/SIGCONT: the node stops
//! answering, as if cut off, and comes back with its connections stale).
//! Then everything heals and the recorded history is checked: every
//! acknowledged write is still there unless a later acknowledged write
//! superseded it, nothing superseded comes back, a deleted key stays
//! deleted, and no read ever returned a value nobody wrote.

#![allow(clippy::unwrap_used)] // tests panic on purpose

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynakv::Error;
use dynakv_actors::client::Client;
use dynakv_actors::testkit::eventually;
use support::ProcessCluster;

const NODES: usize = 5;
const WRITERS: usize = 4;
const KEYS_PER_WRITER: usize = 6;
const FAULT_TIME: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(90);

/// What one writer did to one of its keys, in order.
#[derive(Default, Debug)]
struct KeyLog {
    /// Values whose put was acknowledged, in order.
    acked: Vec<Vec<u8>>,
    /// Values attempted after the last acknowledged one (may have applied).
    unacked_since: Vec<Vec<u8>>,
    /// Every value whose put failed: it may have applied, and survive as
    /// a sibling if no later context covered it.
    unacked: BTreeSet<Vec<u8>>,
    /// The key's last acknowledged write was a delete.
    deleted: bool,
}

#[derive(Default)]
struct Record {
    keys: BTreeMap<String, KeyLog>,
    written: BTreeSet<Vec<u8>>,
    phantoms: Vec<(String, Vec<u8>)>,
    acked: usize,
    failed: usize,
    reads: usize,
}

async fn connect(addrs: &[String], i: usize) -> Option<Client> {
    tokio::time::timeout(
        Duration::from_secs(2),
        Client::connect(&addrs[i % addrs.len()], ""),
    )
    .await
    .ok()?
    .ok()
}

/// One writer: its own keys, each a chain of puts that each supersede the
/// last acknowledged one (its context), ending for some keys in a delete.
async fn writer(w: usize, addrs: Vec<String>, record: Arc<Mutex<Record>>, until: Instant) {
    let mut contexts: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut round = 0usize;
    let mut client = None;
    while Instant::now() < until {
        round += 1;
        let k = round % KEYS_PER_WRITER;
        let key = format!("w{w}-k{k}");
        if record
            .lock()
            .unwrap()
            .keys
            .get(&key)
            .is_some_and(|l| l.deleted)
        {
            continue;
        }
        if client.is_none() {
            client = connect(&addrs, w + round).await;
        }
        let Some(c) = &client else { continue };
        let context = contexts.get(&key).cloned().unwrap_or_default();
        // Keys 0 and 1 are deleted after a while.
        let delete = k < 2 && round > 40 * KEYS_PER_WRITER;
        let value = format!("w{w}-k{k}-{round}").into_bytes();
        // Known before it is sent: a reader may see it before the answer.
        record.lock().unwrap().written.insert(value.clone());
        let result = tokio::time::timeout(Duration::from_secs(5), async {
            if delete {
                c.delete(key.as_bytes(), &context, None).await
            } else {
                c.put(key.as_bytes(), &value, &context, None).await
            }
        })
        .await;
        let mut r = record.lock().unwrap();
        let log = r.keys.entry(key.clone()).or_default();
        match result {
            Ok(Ok(written)) => {
                if delete {
                    log.deleted = true;
                } else {
                    log.acked.push(value);
                    log.unacked_since.clear();
                }
                contexts.insert(key, written.context);
                r.acked += 1;
            }
            Ok(Err(_)) | Err(_) => {
                if !delete {
                    log.unacked_since.push(value.clone());
                    log.unacked.insert(value);
                }
                r.failed += 1;
                client = None;
            }
        }
    }
}

/// A reader: gets of random keys; every value must have been written.
async fn reader(i: usize, addrs: Vec<String>, record: Arc<Mutex<Record>>, until: Instant) {
    let mut client = None;
    let mut n = i;
    while Instant::now() < until {
        n += 7;
        if client.is_none() {
            client = connect(&addrs, n).await;
        }
        let Some(c) = &client else { continue };
        let key = format!("w{}-k{}", n % WRITERS, n % KEYS_PER_WRITER);
        match tokio::time::timeout(Duration::from_secs(5), c.get(key.as_bytes(), None)).await {
            Ok(Ok(read)) => {
                let mut r = record.lock().unwrap();
                r.reads += 1;
                for v in read.values {
                    if !r.written.contains(&v) {
                        r.phantoms.push((key.clone(), v));
                    }
                }
            }
            _ => client = None,
        }
    }
}

/// Faults while the workload runs: at most two nodes faulted at a time.
async fn nemesis(cluster: &mut ProcessCluster, until: Instant) -> Vec<String> {
    let mut log = Vec::new();
    let mut paused: Vec<usize> = Vec::new();
    let mut killed: Vec<usize> = Vec::new();
    let mut step = 0usize;
    while Instant::now() < until {
        step += 1;
        let target = (step * 3) % NODES;
        let busy = paused.contains(&target) || killed.contains(&target);
        if !busy && paused.len() + killed.len() < 2 {
            if step.is_multiple_of(2) {
                cluster.kill(target);
                killed.push(target);
                log.push(format!("SIGKILL node{}", target + 1));
            } else {
                cluster.signal(target, "STOP");
                paused.push(target);
                log.push(format!("SIGSTOP node{}", target + 1));
            }
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Heal the oldest fault.
        if step.is_multiple_of(2) {
            if let Some(i) = killed.first().copied() {
                killed.remove(0);
                cluster.start_again(i);
                log.push(format!("restart node{}", i + 1));
            }
        } else if let Some(i) = paused.first().copied() {
            paused.remove(0);
            cluster.signal(i, "CONT");
            log.push(format!("SIGCONT node{}", i + 1));
        }
    }
    for i in paused {
        cluster.signal(i, "CONT");
    }
    for i in killed {
        cluster.start_again(i);
    }
    log
}

/// Whether the final reads satisfy the history; else what is wrong.
fn judge(key: &str, log: &KeyLog, values: &[Vec<u8>]) -> Result<(), String> {
    let got: BTreeSet<&Vec<u8>> = values.iter().collect();
    let show = |vs: &[Vec<u8>]| {
        vs.iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect::<Vec<_>>()
    };
    // Only failed puts may survive without having been acknowledged.
    if let Some(v) = values
        .iter()
        .find(|v| !log.unacked.contains(*v) && (log.deleted || Some(*v) != log.acked.last()))
    {
        return Err(format!(
            "{key} reads {:?}, superseded by an acknowledged {}; reads {:?}",
            String::from_utf8_lossy(v),
            if log.deleted { "delete" } else { "put" },
            show(values)
        ));
    }
    if log.deleted {
        return Ok(());
    }
    let Some(last) = log.acked.last() else {
        return Ok(());
    };

    // The last acknowledged one survives unless a later attempt (whose
    // context covered it) took effect.
    if !got.contains(last) && log.unacked_since.iter().all(|v| !got.contains(v)) {
        return Err(format!(
            "{key}: acknowledged {:?} was lost; reads {:?}",
            String::from_utf8_lossy(last),
            show(values)
        ));
    }
    Ok(())
}

#[actix_rt::test]
async fn nothing_acknowledged_is_lost_under_kills_and_pauses() {
    let mut cluster = ProcessCluster::start(
        NODES,
        "[storage]\nfsync = \"always\"\n[anti_entropy]\ninterval_ms = 20\n",
    );
    for i in 0..NODES {
        cluster.wait_formed(i, NODES, WAIT).await;
    }
    let record = Arc::new(Mutex::new(Record::default()));
    let until = Instant::now() + FAULT_TIME;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        tasks.push(actix_rt::spawn(writer(
            w,
            cluster.client_addrs.clone(),
            record.clone(),
            until,
        )));
    }
    for i in 0..2 {
        tasks.push(actix_rt::spawn(reader(
            i,
            cluster.client_addrs.clone(),
            record.clone(),
            until,
        )));
    }
    let faults = nemesis(&mut cluster, until).await;
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..NODES {
        cluster.wait_formed(i, NODES, WAIT).await;
    }

    // Heal: every key must read (R = N) as the history says, within the
    // deadline (hints and anti-entropy repair what the faults left).
    let record = std::mem::take(&mut *record.lock().unwrap());
    let healed = eventually(WAIT, "every key to read as the history says", || async {
        for (key, log) in &record.keys {
            let c = connect(&cluster.client_addrs, key.len())
                .await
                .ok_or_else(|| Error::Unavailable("no connection".into()))?;
            let read = c.get(key.as_bytes(), Some(3)).await?;
            judge(key, log, &read.values).map_err(Error::Internal)?;
        }
        Ok(())
    })
    .await;
    assert!(
        healed.is_ok(),
        "after healing: {healed:?}\nfaults: {faults:?}\nlog of node1:\n{}",
        cluster.log_tail(0)
    );
    assert!(
        record.phantoms.is_empty(),
        "phantom reads: {:?}",
        &record.phantoms[..record.phantoms.len().min(10)]
    );
    assert!(
        faults.len() >= 8,
        "the nemesis injected too little: {faults:?}"
    );
    assert!(
        record.acked > 100,
        "only {} writes acknowledged",
        record.acked
    );
    eprintln!(
        "nemesis: {} faults, {} writes acknowledged, {} failed, {} reads",
        faults.len(),
        record.acked,
        record.failed,
        record.reads
    );
}
