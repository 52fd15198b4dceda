"""The local broker's storage format gets a cluster id its tool accepts, every time; a cluster's
nodes are configured as one quorum."""

from __future__ import annotations

import base64

from streams.tools.kafka_local import _cluster_id


def test_cluster_ids_are_kafka_uuids_that_never_look_like_an_option() -> None:
    # One plain random UUID in 32 starts with "-" in URL-safe base64 (63 = "_" and 62 = "-"
    # of 64 symbols for the first 6 bits); 2,000 draws make that case all but certain.
    ids = [_cluster_id() for _ in range(2000)]
    assert not any(i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
    for i in ids[:50]:
        assert len(i) == 22
        assert len(base64.urlsafe_b64decode(i + "==")) == 16


def test_a_cluster_node_names_its_id_the_whole_quorum_and_replicates_internal_topics() -> None:
    from pathlib import Path

    from streams.tools.kafka_local import _server_properties

    voters = "1@127.0.0.1:7001,2@127.0.0.1:7002,3@127.0.0.1:7003"
    props = dict(line.split("=", 1) for line in _server_properties(
        Path("/d"), 9093, 7002, node_id=2, voters=voters).splitlines() if line)
    assert (props["node.id"], props["controller.quorum.voters"]) == ("2", voters)
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9093,CONTROLLER://127.0.0.1:7002"
    assert (props["offsets.topic.replication.factor"],
            props["transaction.state.log.min.isr"]) == ("3", "2")
    single = dict(line.split("=", 1) for line in _server_properties(
        Path("/d"), 9092, 7000).splitlines() if line)
    assert (single["node.id"], single["controller.quorum.voters"],
            single["offsets.topic.replication.factor"]) == ("1", "1@127.0.0.1:7000", "1")
