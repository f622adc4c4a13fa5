//! json: a realistic Rust workload: a large JSON document (generated here,
//! deterministically) parsed into a `serde_json::Value` tree, walked, indexed
//! by one of its fields, serialized back to text, and dropped, a few times
//! over. Millions of small strings, vectors and map nodes with one lifetime,
//! freed together, plus the document's buffers growing by doubling.

use std::collections::HashMap;
use std::fmt::Write;

use bench_programs::{Args, Rng, FNV_OFFSET};
use serde_json::Value;

const RECORDS: u64 = 25_000;
const ROUNDS: u64 = 3;
const WORDS: [&str; 16] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima",
    "mike", "november", "oscar", "papa",
];
const CITIES: [&str; 8] = ["Lisbon", "Oslo", "Quito", "Hanoi", "Perth", "Accra", "Lima", "Riga"];
const EVENTS: [&str; 5] = ["login", "logout", "purchase", "refund", "view"];

fn words(rng: &mut Rng, n: usize, out: &mut String) {
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
}

/// The document: `{"meta": {...}, "users": [record, ...]}`, about 700 bytes a record.
fn document(records: u64) -> String {
    let mut rng = Rng::new(2024);
    let mut s = String::new();
    write!(s, r#"{{"meta":{{"version":3,"generator":"bench-programs","records":{records}}},"users":["#).unwrap();
    for id in 0..records {
        if id > 0 {
            s.push(',');
        }
        let city = CITIES[rng.below(CITIES.len() as u64) as usize];
        write!(
            s,
            r#"{{"id":{id},"name":"user_{:08x}","email":"u{id}@example.com","active":{},"score":{:.3},"address":{{"street":"{} {} street","city":"{city}","zip":"{:05}"}},"tags":["#,
            rng.next_u64() as u32,
            rng.chance(70),
            rng.below(1_000_000) as f64 / 997.0,
            rng.below(999) + 1,
            WORDS[rng.below(16) as usize],
            rng.below(100_000),
        )
        .unwrap();
        for t in 0..rng.below(8) {
            if t > 0 {
                s.push(',');
            }
            write!(s, r#""{}-{}""#, WORDS[rng.below(16) as usize], rng.below(100)).unwrap();
        }
        s.push_str(r#"],"history":["#);
        for h in 0..rng.below(10) {
            if h > 0 {
                s.push(',');
            }
            write!(
                s,
                r#"{{"ts":{},"event":"{}","value":{:.2}}}"#,
                1_700_000_000 + rng.below(10_000_000),
                EVENTS[rng.below(EVENTS.len() as u64) as usize],
                rng.below(100_000) as f64 / 100.0
            )
            .unwrap();
        }
        s.push_str(r#"],"bio":""#);
        let n = rng.range(3, 30);
        words(&mut rng, n, &mut s);
        s.push_str("\"}");
    }
    s.push_str("]}");
    s
}

/// A hash of the tree's shape and contents.
fn walk(v: &Value, h: u64) -> u64 {
    let mix = |h: u64, x: u64| (h ^ x).wrapping_mul(0x0100_0000_01b3);
    match v {
        Value::Null => mix(h, 1),
        Value::Bool(b) => mix(h, 2 + *b as u64),
        Value::Number(n) => mix(h, n.as_f64().unwrap_or(0.0).to_bits()),
        Value::String(s) => bench_programs::fnv1a(h, s.as_bytes()),
        Value::Array(a) => a.iter().fold(mix(h, a.len() as u64), |h, v| walk(v, h)),
        Value::Object(o) => {
            o.iter().fold(mix(h, o.len() as u64), |h, (k, v)| walk(v, bench_programs::fnv1a(h, k.as_bytes())))
        }
    }
}

fn main() {
    let args = Args::parse();
    let started = bench_programs::start();
    let text = document(args.scaled(RECORDS, 10));
    let mut checksum = text.len() as u64;
    for _ in 0..ROUNDS {
        let doc: Value = serde_json::from_str(&text).expect("the generated document parses");
        checksum = walk(&doc, checksum);
        // An index by city of the ids and tags: new strings and vectors
        // that live as long as the tree.
        let mut by_city: HashMap<String, Vec<(u64, Vec<String>)>> = HashMap::new();
        for user in doc["users"].as_array().expect("users is an array") {
            let city = user["address"]["city"].as_str().unwrap_or_default().to_owned();
            let tags = user["tags"]
                .as_array()
                .map_or(Vec::new(), |t| t.iter().filter_map(|t| t.as_str()).map(str::to_uppercase).collect());
            by_city.entry(city).or_default().push((user["id"].as_u64().unwrap_or(0), tags));
        }
        let mut cities: Vec<_> = by_city.iter().map(|(c, v)| (c.clone(), v.len())).collect();
        cities.sort();
        checksum = cities.iter().fold(checksum, |h, (c, n)| bench_programs::fnv1a(h, c.as_bytes()) ^ *n as u64);
        let out = serde_json::to_string(&doc).expect("a Value serializes");
        checksum = checksum.wrapping_add(out.len() as u64);
        drop((by_city, out, doc));
    }
    checksum = bench_programs::fnv1a(checksum ^ FNV_OFFSET, &text.as_bytes()[..64.min(text.len())]);
    bench_programs::finish("json", checksum, started);
}
