//! Proves the NATS harness of tests/common/nats.rs that the cluster tests stand on: a real
//! 3-node JetStream cluster comes up on loopback ports, takes an R3 stream and acknowledges
//! publishes, keeps acknowledging with one node killed, and takes the node back.

mod common;

use common::nats::NatsCluster;
use std::time::{Duration, Instant};

/// Publishes `body` to `subject` until JetStream acknowledges it (a stream or meta leader may be
/// moving after a node died); returns the ack's stream sequence.
fn publish_acked(cluster: &NatsCluster, subject: &str, body: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        match cluster.request(subject, body) {
            Ok(reply) => {
                let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
                if let Some(seq) = v["seq"].as_u64() {
                    return seq;
                }
                last = reply;
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("publish never acknowledged: {last}\n{}", cluster.logs());
}

/// Creates a file-stored stream `name` on `subject` with `replicas`; the API's answer.
fn create_stream(cluster: &NatsCluster, name: &str, subject: &str, replicas: u32) -> String {
    let config = serde_json::json!({
        "name": name, "subjects": [subject], "num_replicas": replicas, "storage": "file"
    });
    cluster
        .request(
            &format!("$JS.API.STREAM.CREATE.{name}"),
            &config.to_string(),
        )
        .expect("stream create answers")
}

fn stream_info(cluster: &NatsCluster, name: &str) -> serde_json::Value {
    let reply = cluster
        .request(&format!("$JS.API.STREAM.INFO.{name}"), "")
        .expect("stream info");
    serde_json::from_str(&reply).expect("stream info json")
}

#[test]
fn three_node_jetstream_survives_one_node_killed() {
    let mut cluster = NatsCluster::start(3);
    assert_eq!(cluster.urls().split(',').count(), 3);
    for node in &cluster.nodes {
        let jsz = node.monitor("/jsz").expect("monitoring answers");
        assert_eq!(jsz["meta_cluster"]["cluster_size"], 3, "{jsz}");
    }

    let created = create_stream(&cluster, "HARNESS", "harness.log", 3);
    assert!(created.contains("\"num_replicas\":3"), "{created}");
    assert_eq!(publish_acked(&cluster, "harness.log", "one"), 1);

    // Kill the node that leads the stream's replicas: the hardest one to lose.
    let victim = cluster.stream_leader("HARNESS");
    cluster.kill9(victim);
    assert!(!cluster.nodes[victim].is_running());
    cluster.wait_ready();
    assert_eq!(publish_acked(&cluster, "harness.log", "two"), 2);
    assert_eq!(stream_info(&cluster, "HARNESS")["state"]["messages"], 2);

    // Back with the same storage: it rejoins and the stream keeps its history.
    cluster.restart(victim);
    assert_eq!(publish_acked(&cluster, "harness.log", "three"), 3);
    // Its own copy catches up (its monitoring port shows its local replica's state).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let local = cluster.nodes[victim]
            .monitor("/jsz?accounts=true&streams=true")
            .unwrap_or_default();
        let messages =
            local["account_details"][0]["stream_detail"][0]["state"]["messages"].as_u64();
        if messages == Some(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted node did not catch up: {local}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn single_node_jetstream_answers() {
    let cluster = NatsCluster::single();
    let created = create_stream(&cluster, "ONE", "one.log", 1);
    assert!(created.contains("\"name\":\"ONE\""), "{created}");
    assert_eq!(publish_acked(&cluster, "one.log", "x"), 1);
}
