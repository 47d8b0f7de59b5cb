//! Two producer processes and two consumer processes sharing one [`Queue`] in shared memory.
//!
//! Each producer puts `(producer, sequence number)` messages; each consumer takes messages until the
//! queue is closed and drained, and returns what it got. The parent closes the queue once both producers
//! have finished, then checks that every message was received exactly once, and that each consumer saw
//! each producer's messages in the order they were put (the queue is FIFO).
//!
//! ```text
//! cargo run --release --example queue_producer_consumer               # 200000 messages per producer
//! cargo run --release --example queue_producer_consumer -- --n 1000
//! ```

use std::process::ExitCode;
use std::time::Instant;

use mproc::{Error, Process, Queue};

const PRODUCERS: u32 = 2;
const CONSUMERS: u32 = 2;

/// A message: who sent it and its sequence number at that producer.
type Msg = (u32, u64);

/// Puts `count` messages from producer `id`.
fn produce((queue, id, count): (Queue<Msg>, u32, u64)) -> u64 {
    for seq in 0..count {
        queue.put(&(id, seq)).expect("put");
    }
    count
}

/// Takes messages until the queue is closed and drained.
fn consume(queue: Queue<Msg>) -> Vec<Msg> {
    let mut got = Vec::new();
    loop {
        match queue.get() {
            Ok(m) => got.push(m),
            Err(Error::Closed) => return got,
            Err(e) => panic!("get failed: {e}"),
        }
    }
}

fn check(per_consumer: &[Vec<Msg>], n: u64) -> Result<(), String> {
    // FIFO per producer, as seen by each consumer.
    for (c, got) in per_consumer.iter().enumerate() {
        let mut last = vec![None::<u64>; PRODUCERS as usize];
        for &(p, seq) in got {
            let slot = last.get_mut(p as usize).ok_or(format!(
                "consumer {c} got a message from unknown producer {p}"
            ))?;
            if slot.is_some_and(|prev| prev >= seq) {
                return Err(format!(
                    "consumer {c} got producer {p}'s message {seq} after {}",
                    slot.unwrap_or_default()
                ));
            }
            *slot = Some(seq);
        }
    }
    // Exactly once overall.
    let mut seen = vec![vec![0u8; n as usize]; PRODUCERS as usize];
    for &(p, seq) in per_consumer.iter().flatten() {
        let count = seen[p as usize]
            .get_mut(seq as usize)
            .ok_or(format!("message {seq} from producer {p} was never sent"))?;
        *count += 1;
    }
    for (p, counts) in seen.iter().enumerate() {
        if let Some(seq) = counts.iter().position(|&c| c != 1) {
            return Err(format!(
                "producer {p}'s message {seq} was received {} times",
                counts[seq]
            ));
        }
    }
    Ok(())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut n: u64 = 200_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--n", Some(v)) => n = v.parse()?,
            _ => return Err("usage: queue_producer_consumer [--n MESSAGES_PER_PRODUCER]".into()),
        }
    }

    let queue: Queue<Msg> = Queue::new(1024)?;
    let t = Instant::now();
    let mut consumers = (0..CONSUMERS)
        .map(|_| {
            let mut p = Process::new(consume, queue.clone())?;
            p.start()?;
            Ok(p)
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let mut producers = (0..PRODUCERS)
        .map(|id| {
            let mut p = Process::new(produce, (queue.clone(), id, n))?;
            p.start()?;
            Ok(p)
        })
        .collect::<Result<Vec<_>, Error>>()?;

    let mut sent = 0;
    for p in &mut producers {
        sent += p.join()?;
    }
    // Everything is in (or through) the queue: closing it lets the consumers drain it and stop.
    queue.close();
    let per_consumer = consumers
        .iter_mut()
        .map(|c| c.join())
        .collect::<Result<Vec<_>, Error>>()?;
    let elapsed = t.elapsed();

    check(&per_consumer, n)?;
    let received: usize = per_consumer.iter().map(Vec::len).sum();
    assert_eq!(received as u64, sent);
    for (i, got) in per_consumer.iter().enumerate() {
        println!("consumer {i} received {} messages", got.len());
    }
    println!(
        "{PRODUCERS} producers -> {CONSUMERS} consumers: {sent} messages, each received exactly once and in \
         order per producer, in {:.3} s ({:.2} M messages/s, process start-up included)",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64() / 1e6
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("queue_producer_consumer: error: {e}");
            ExitCode::FAILURE
        }
    }
}
