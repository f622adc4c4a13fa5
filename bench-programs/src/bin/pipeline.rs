//! pipeline: a realistic Rust workload: a crossbeam-channel pipeline of heap
//! messages. A source thread builds requests (a key string, a text body, a
//! vector of numbers), worker threads turn each into a summary (new strings
//! and vectors) and drop the request, and the sink keeps a running index by
//! key plus a window of the latest summaries (which therefore live a while)
//! and drops the rest. Nearly every object is freed by a thread other than
//! the one that allocated it.

use std::collections::{HashMap, VecDeque};
use std::thread;

use bench_programs::{Args, Rng};

const MESSAGES: u64 = 600_000;
const KEYS: u64 = 4096;
const WINDOW: usize = 20_000;
const WORDS: [&str; 12] =
    ["ok", "error", "timeout", "retry", "user", "order", "cart", "payment", "shipped", "cancelled", "queued", "done"];

struct Request {
    id: u64,
    key: String,
    body: String,
    values: Vec<u64>,
}

struct Summary {
    id: u64,
    key: String,
    words: Vec<String>,
    total: u64,
}

fn request(rng: &mut Rng, id: u64) -> Request {
    let key = format!("tenant-{}/queue-{}", rng.below(KEYS / 64), rng.below(64));
    let mut body = String::with_capacity(64);
    for i in 0..rng.range(2, 24) {
        if i > 0 {
            body.push(' ');
        }
        body.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    let values = (0..rng.below(32)).map(|_| rng.below(1 << 20)).collect();
    Request { id, key, body, values }
}

fn summarize(r: Request) -> Summary {
    let words = r.body.split(' ').filter(|w| w.len() > 3).map(str::to_uppercase).collect();
    Summary { id: r.id, key: r.key, words, total: r.values.iter().sum() }
}

fn main() {
    let args = Args::parse();
    let started = bench_programs::start();
    let messages = args.scaled(MESSAGES, 100);
    let workers = args.threads_or(bench_programs::cpus().max(2));
    let (req_tx, req_rx) = crossbeam_channel::bounded::<Request>(1024);
    let (sum_tx, sum_rx) = crossbeam_channel::bounded::<Summary>(1024);

    let source = thread::spawn(move || {
        let mut rng = Rng::new(99);
        for id in 0..messages {
            req_tx.send(request(&mut rng, id)).expect("workers gone");
        }
    });
    let pool: Vec<_> = (0..workers)
        .map(|_| {
            let (rx, tx) = (req_rx.clone(), sum_tx.clone());
            thread::spawn(move || {
                for r in rx {
                    tx.send(summarize(r)).expect("sink gone");
                }
            })
        })
        .collect();
    drop((req_rx, sum_tx));

    let mut index: HashMap<String, (u64, u64)> = HashMap::new();
    let mut window: VecDeque<Summary> = VecDeque::with_capacity(WINDOW);
    let mut checksum = 0u64;
    for s in sum_rx {
        let e = index.entry(s.key.clone()).or_default();
        e.0 += 1;
        e.1 = e.1.wrapping_add(s.total);
        checksum = checksum.wrapping_add(s.id ^ s.words.iter().map(|w| w.len() as u64).sum::<u64>());
        if window.len() == WINDOW {
            window.pop_front();
        }
        window.push_back(s);
    }
    source.join().expect("source panicked");
    for w in pool {
        w.join().expect("worker panicked");
    }
    let mut keys: Vec<_> = index.into_iter().collect();
    keys.sort();
    checksum = keys.iter().fold(checksum, |c, (k, (n, t))| bench_programs::fnv1a(c, k.as_bytes()) ^ n ^ t);
    bench_programs::finish("pipeline", checksum, started);
}
