//! What the commands print: text for people, `--json` for scripts. A
//! reader that went away (`dynakv status | head`) ends a command quietly.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use dynakv::crdt::{FieldReading, Reading};
use dynakv::handoff::PlanReport;
use dynakv::namespace::Info;
use dynakv::wire::{LocalCopy, StatusReport};
use dynakv::{Error, Result};
use dynakv_actors::client::{ReadResult, TypedResult};
use serde_json::json;

/// Writes to stdout. A reader that went away (`dynakv status | head -3`)
/// ends the command quietly instead of with a panic and a backtrace (Rust
/// ignores SIGPIPE, so `println!` panics on a closed pipe); any other write
/// error ends it with a message and a failure.
pub fn emit(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(text) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: writing to stdout: {e}");
            std::process::exit(1);
        }
        std::process::exit(0);
    }
}

/// `println!` through `emit`.
macro_rules! say {
    ($($arg:tt)*) => {
        emit(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// A value as text when it is UTF-8, else as base64.
/// A value or key as a line of text: itself when it is UTF-8, else its
/// JSON form (base64).
pub fn text(value: &[u8]) -> String {
    match show(value) {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

pub fn show(value: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(value) {
        Ok(s) => json!(s),
        Err(_) => json!({ "base64": B64.encode(value) }),
    }
}

/// A data type's value as JSON: `{"value": N}`, `{"members": [...]}` or
/// `{"fields": {NAME: VALUE}}` (a register's value, its concurrent values
/// as a list, or a counter's number).
fn reading_json(reading: &Reading) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    match reading {
        Reading::Counter(value) => out.insert("value".into(), json!(value)),
        Reading::Set(members) => {
            let members: Vec<_> = members.iter().map(|m| show(m)).collect();
            out.insert("members".into(), json!(members))
        }
        Reading::Map(fields) => {
            let fields: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .map(|f| (text(&f.name), field_json(&f.value)))
                .collect();
            out.insert("fields".into(), json!(fields))
        }
    };
    out
}

fn field_json(value: &FieldReading) -> serde_json::Value {
    match value {
        FieldReading::Count(n) => json!(n),
        FieldReading::Values(values) if values.len() == 1 => show(&values[0]),
        FieldReading::Values(values) => json!(values.iter().map(|v| show(v)).collect::<Vec<_>>()),
        // A set field: an object, so it never reads as a register's values.
        FieldReading::Members(members) => {
            json!({ "members": members.iter().map(|m| show(m)).collect::<Vec<_>>() })
        }
    }
}

/// A data type's value: as JSON, `reading_json` with the context a
/// removal sends back (sets and maps); as text, the number, each member on
/// a line, or each field as `NAME = VALUE`, then the context.
pub fn print_typed(typed: &TypedResult, as_json: bool) {
    let context = B64.encode(&typed.context);
    let counter = matches!(typed.reading, Reading::Counter(_));
    if as_json {
        let mut out = reading_json(&typed.reading);
        if !counter {
            out.insert("context".into(), json!(context));
        }
        return say!("{}", serde_json::Value::Object(out));
    }
    match &typed.reading {
        Reading::Counter(value) => return say!("{value}"),
        Reading::Set(members) => {
            for m in members {
                say!("{}", text(m));
            }
        }
        Reading::Map(fields) => {
            for f in fields {
                say!("{} = {}", text(&f.name), field_json(&f.value));
            }
        }
    }
    say!("context: {context}");
}

pub fn print_plan(report: &PlanReport, as_json: bool) -> Result<()> {
    if as_json {
        let text = serde_json::to_string(report).map_err(|e| Error::Internal(e.to_string()))?;
        say!("{text}");
        return Ok(());
    }
    if report.partitions > 0 {
        say!(
            "{} partitions after the change; the largest about {} bytes",
            report.partitions,
            report.largest_bytes
        );
    }
    say!("{} partitions would change owner", report.moves);
    if report.rows.is_empty() {
        say!("no data would move");
        return Ok(());
    }
    say!(
        "{:<16} {:>9} {:>14} {:>9} {:>14}",
        "node",
        "receives",
        "bytes",
        "sends",
        "bytes"
    );
    for r in &report.rows {
        say!(
            "{:<16} {:>9} {:>14} {:>9} {:>14}",
            r.node.as_str(),
            r.receive,
            r.receive_bytes,
            r.send,
            r.send_bytes
        );
    }
    Ok(())
}

pub fn print_local(local: &LocalCopy, as_json: bool) {
    let reading = local
        .reading
        .as_ref()
        .map(|r| serde_json::Value::Object(reading_json(r)));
    let siblings: Vec<_> = local
        .siblings
        .iter()
        .map(|(actor, counter, value)| {
            json!({
                "dot": format!("{actor:016x}:{counter}"),
                "value": value.as_deref().map(show),
            })
        })
        .collect();
    if as_json {
        say!(
            "{}",
            json!({
                "node": local.node.as_str(),
                "partition": local.partition,
                "siblings": siblings,
                "context": B64.encode(&local.context),
                "typed": reading,
            })
        );
        return;
    }
    say!("node {} partition {}", local.node, local.partition);
    if let Some(reading) = reading {
        say!("{reading}");
    } else if local.siblings.is_empty() {
        say!("(no local copy)");
    }
    for (actor, counter, value) in &local.siblings {
        match value {
            Some(v) => say!("{actor:016x}:{counter}  {}", show(v)),
            None => say!("{actor:016x}:{counter}  (tombstone)"),
        }
    }
}

/// Bytes as B, KiB, MiB, GiB or TiB with one decimal.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn print_status(s: &StatusReport, as_json: bool) -> Result<()> {
    if as_json {
        let text = serde_json::to_string(s).map_err(|e| Error::Internal(e.to_string()))?;
        say!("{text}");
        return Ok(());
    }
    say!(
        "cluster {}  (asked {}, {} partitions, N={})",
        s.cluster,
        s.node,
        s.partitions,
        s.n
    );
    say!(
        "{:<16} {:<8} {:<8} {:>10} {:>10} {:>6} {:>8} {:>8} {:>6} {:>8}  {:<21} {:<21}",
        "member",
        "state",
        "liveness",
        "load",
        "keys",
        "owns",
        "replicas",
        "hints",
        "weight",
        "protocol",
        "peer",
        "client"
    );
    let total: u32 = s.members.iter().map(|m| m.owned).sum();
    for m in &s.members {
        let share = if total == 0 {
            0.0
        } else {
            100.0 * f64::from(m.owned) / f64::from(total)
        };
        let (load, keys) = match m.load {
            Some(l) => (human_bytes(l.bytes), l.keys.to_string()),
            None => ("?".into(), "?".into()),
        };
        say!(
            "{:<16} {:<8} {:<8} {:>10} {:>10} {:>5.1}% {:>8} {:>8} {:>6} {:>8}  {:<21} {:<21}",
            m.node.as_str(),
            m.state,
            m.liveness,
            load,
            keys,
            share,
            m.replicated,
            m.hints_pending,
            m.weight,
            m.protocol.map_or("?".into(), |v| v.to_string()),
            m.peer_addr,
            m.client_addr
        );
    }
    if s.members.iter().any(|m| m.load.is_none()) {
        say!("(? = the member did not answer; hints count only members that did)");
    }
    if s.members.iter().any(|m| m.protocol.is_none()) {
        say!("(protocol ? = no link to the member is open, or this node speaks protocol 4)");
    }
    for note in &s.notes {
        say!("note: {note}");
    }
    Ok(())
}

/// `ns show` (one namespace) and `ns list` (every one).
pub fn print_namespaces(infos: &[Info], shown: bool, as_json: bool) -> Result<()> {
    let object = |i: &Info| {
        let s = &i.settings;
        json!({
            "name": i.name,
            "type": s.kind.as_str(),
            "n": s.n,
            "r": s.r,
            "w": s.w,
            "ttl_ms": s.ttl_ms,
            "max_siblings": s.max_siblings,
            "max_value_bytes": s.max_value_bytes,
        })
    };
    if as_json {
        match infos {
            [one] if shown => say!("{}", object(one)),
            _ => {
                let all: Vec<_> = infos.iter().map(object).collect();
                say!("{}", json!({ "namespaces": all }));
            }
        }
        return Ok(());
    }
    say!(
        "{:<24} {:<6} {:>3} {:>3} {:>3} {:>12} {:>12} {:>15}",
        "namespace",
        "type",
        "n",
        "r",
        "w",
        "ttl",
        "max_siblings",
        "max_value_bytes"
    );
    for i in infos {
        let s = &i.settings;
        let ttl = if s.ttl_ms == 0 {
            "none".to_string()
        } else {
            humantime::format_duration(std::time::Duration::from_millis(s.ttl_ms)).to_string()
        };
        say!(
            "{:<24} {:<6} {:>3} {:>3} {:>3} {:>12} {:>12} {:>15}",
            i.name,
            s.kind.as_str(),
            s.n,
            s.r,
            s.w,
            ttl,
            s.max_siblings,
            s.max_value_bytes
        );
    }
    Ok(())
}

/// `mget`: each key's siblings and context, or its error, in order.
pub fn print_reads(keys: &[String], reads: &[Result<ReadResult>], as_json: bool) {
    if as_json {
        let results: Vec<_> = keys
            .iter()
            .zip(reads)
            .map(|(key, read)| match read {
                Ok(read) => json!({
                    "key": key,
                    "values": read.values.iter().map(|v| show(v)).collect::<Vec<_>>(),
                    "context": B64.encode(&read.context),
                }),
                Err(e) => json!({ "key": key, "error": e.to_string() }),
            })
            .collect();
        say!("{}", json!({ "results": results }));
        return;
    }
    for (key, read) in keys.iter().zip(reads) {
        match read {
            Ok(read) if read.values.is_empty() => say!("{key}\t(not found)"),
            Ok(read) => {
                for v in &read.values {
                    say!("{key}\t{}", text(v));
                }
            }
            Err(e) => say!("{key}\terror: {e}"),
        }
    }
}
