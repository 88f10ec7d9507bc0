//! Encoding and decoding of the frames peers exchange: a batch of Raft
//! append messages, from a heartbeat-sized frame to a large append, as the
//! transport does it (rkyv with validation, then back to raft-rs types).
//!
//! `cargo bench --bench frame`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flotilla::transport::frame::Frame;
use flotilla::types::{GroupId, NodeId};
use flotilla::wire::message::WireMessage;
use flotilla::wire::{decode, encode};
use raft::eraftpb::{Entry, Message, MessageType};

/// (name, messages in the frame, entries per message, bytes per entry)
const SHAPES: [(&str, usize, usize, usize); 4] = [
    ("heartbeats_32_groups", 32, 0, 0),
    ("append_1x256B", 1, 1, 256),
    ("append_32x16x256B", 32, 16, 256),
    ("append_4x64x4KiB", 4, 64, 4096),
];

fn frame(messages: usize, entries: usize, bytes: usize) -> Frame {
    let batch = (0..messages)
        .map(|g| {
            let msg = Message {
                msg_type: if entries == 0 {
                    MessageType::MsgHeartbeat
                } else {
                    MessageType::MsgAppend
                },
                to: 2,
                from: 1,
                term: 7,
                log_term: 7,
                index: 100,
                commit: 100,
                entries: (0..entries)
                    .map(|i| Entry {
                        term: 7,
                        index: 101 + i as u64,
                        data: vec![b'v'; bytes].into(),
                        context: vec![1; 16].into(),
                        ..Default::default()
                    })
                    .collect::<Vec<_>>()
                    .into(),
                ..Default::default()
            };
            (GroupId(g as u64 + 1), WireMessage::from(&msg))
        })
        .collect();
    Frame::Raft {
        from: NodeId(1),
        batch,
    }
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for (name, messages, entries, bytes) in SHAPES {
        let f = frame(messages, entries, bytes);
        let encoded = encode(&f);
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", name), &f, |b, f| {
            b.iter(|| encode(f))
        });
        group.bench_with_input(BenchmarkId::new("decode", name), &encoded, |b, bytes| {
            b.iter(|| {
                let Frame::Raft { batch, .. } = decode::<Frame>("frame", bytes).expect("valid")
                else {
                    unreachable!("a raft frame was encoded")
                };
                batch
                    .into_iter()
                    .map(|(_, m)| m.into_raft().expect("valid"))
                    .collect::<Vec<_>>()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
