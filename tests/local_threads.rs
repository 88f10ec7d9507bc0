//! The threaded runner: three driver threads with real time, wired in
//! memory, elect leaders and serve writes and linearizable reads.

use std::sync::Arc;
use std::time::Duration;

use flotilla::kv::{Command, Op, Response};
use flotilla::local::LocalCluster;

#[tokio::test]
async fn three_driver_threads_elect_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let c = Arc::new(LocalCluster::start(3, 8, 256, Some(dir.path())).unwrap());
    assert!(
        c.wait_for_leaders(Duration::from_secs(20)).await,
        "no leaders within 20 s"
    );
    let cmds: Vec<Command> = (0..200)
        .map(|i| Command {
            client: 1,
            seq: i + 1,
            ack_below: 0,
            fresh: true,
            proposed_ms: 0,
            op: Op::Put {
                key: format!("t{i}").into_bytes(),
                value: i.to_le_bytes().to_vec(),
            },
        })
        .collect();
    let syncs_before = c.syncs();
    let answers = c.write_many(cmds, Duration::from_secs(30)).await.unwrap();
    assert!(answers.iter().all(|r| *r == Response::Written));
    let fsyncs = c.syncs() - syncs_before;
    // 200 writes in flight together share rounds: far fewer than one fsync
    // per write per replica.
    assert!(
        fsyncs < 3 * 200,
        "{fsyncs} fsyncs for 200 writes on 3 replicas"
    );
    for i in 0..200u64 {
        let v = c
            .read(format!("t{i}").as_bytes(), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(v, Some(i.to_le_bytes().to_vec()));
    }
    Arc::into_inner(c).expect("no other owner").stop().unwrap();
}
