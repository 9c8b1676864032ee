//! Measures the resident memory one pending key costs: adds N distinct keys (UUID-sized by
//! default, 36 bytes) to a `PendingDeltas` and divides the growth of the process's resident
//! set by N. It prints two figures: right after the adds, which still counts the smaller
//! tables the shards outgrew and freed, and once the allocator has returned the memory it
//! holds free, as mimalloc does by itself after its purge delay (1 s): what the keys hold.
//!
//! cargo run --release -p tally --example pending_memory -- [keys] [key_bytes] [items]
//!
//! With a third argument `items`, the keys are item ids of one tenant (`POST /items`), held as
//! their pending keys: what a million pending ids cost.

use tally::batch::BatchSeq;
use tally::pending::PendingDeltas;

// The same allocator as the `tally` binary, so that the figure is the one it pays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Adds timed against keys already pending.
const ADDS: usize = 10_000_000;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

fn main() {
    let mut args = std::env::args().skip(1);
    let keys: usize = args
        .next()
        .map_or(1_000_000, |a| a.parse().expect("a key count"));
    let key_bytes: usize = args.next().map_or(36, |a| a.parse().expect("a key length"));
    let items = match args.next().as_deref() {
        None => false,
        Some("items") => true,
        Some(other) => panic!("the third argument is `items` or nothing, not {other:?}"),
    };
    // One tenant of 8 bytes, as a customer id might be.
    let prefix = if items {
        tally::item::tenant_prefix("tenant-1")
    } else {
        String::new()
    };
    let names: Vec<String> = (0..keys)
        .map(|i| format!("{prefix}{i:0>width$}", width = key_bytes))
        .collect();
    let what = if items { "item ids" } else { "keys" };

    let before = resident_bytes();
    let pending = PendingDeltas::new(BatchSeq::first(), usize::MAX);
    for name in &names {
        pending.add(name, 1).unwrap();
    }
    let after = resident_bytes();
    assert_eq!(pending.keys(), keys);
    // SAFETY: mi_collect has no preconditions; it only returns free memory to the OS.
    unsafe { libmimalloc_sys::mi_collect(true) };
    let held = resident_bytes();
    // Signed: with few keys, returning freed memory can leave less resident than before.
    let mib = |bytes: i64| bytes as f64 / (1 << 20) as f64;
    let per_key = |bytes: i64| bytes as f64 / keys as f64;
    let (before, after, held) = (before as i64, after as i64, held as i64);
    println!(
        "{keys} pending {what} of {key_bytes} bytes: {:.1} MiB resident, {:.0} bytes per key; \
         once freed memory is returned: {:.1} MiB, {:.0} bytes per key",
        mib(after - before),
        per_key(after - before),
        mib(held - before),
        per_key(held - before),
    );
    // The request path: one thread adding to keys already pending, in a random order.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let order: Vec<usize> = (0..ADDS)
        .map(|_| {
            // xorshift64: a fixed, cheap sequence; no crate needed for this.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % keys as u64) as usize
        })
        .collect();
    let started = std::time::Instant::now();
    for &i in &order {
        pending.add(&names[i], 1).unwrap();
    }
    println!(
        "adds to pending keys: {:.0} ns each ({ADDS} adds, one thread)",
        started.elapsed().as_nanos() as f64 / ADDS as f64
    );
    // The flusher's cut: every shard's map swapped for an empty one, each key copied out.
    let started = std::time::Instant::now();
    let batch = pending.cut(BatchSeq::first().next());
    println!(
        "cut of {} keys: {:.1} ms",
        batch.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
}
