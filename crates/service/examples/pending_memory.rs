//! Measures the resident memory one pending key costs: adds N distinct keys (UUID-sized by
//! default, 36 bytes) to a `PendingDeltas` and divides the growth of the process's resident
//! set by N.
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
    let per_key = (after - before) as f64 / keys as f64;
    println!(
        "{keys} pending {what} of {key_bytes} bytes: {:.1} MiB resident, {per_key:.0} bytes per key",
        (after - before) as f64 / (1 << 20) as f64
    );
}
