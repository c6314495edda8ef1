"""The event recorder writes core/v1 Events and counts repeats instead of piling them up."""
from __future__ import annotations

import asyncio

from kubesmith.client.events import EventRecorder, object_reference


def test_identical_events_are_counted_and_different_ones_are_new(connect, namespace):
    async def main():
        async with connect() as client:
            cm = await client.create("v1 configmaps", {
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "subject"}},
                namespace)
            recorder = EventRecorder(client, "test-controller", host="node-1")
            first = await recorder.record(cm, "Warning", "Broken", "it broke")
            second = await recorder.record(cm, "Warning", "Broken", "it broke")
            assert second["metadata"]["name"] == first["metadata"]["name"]
            assert second["count"] == 2
            assert second["firstTimestamp"] == first["firstTimestamp"]
            other = await recorder.record(cm, "Warning", "Broken", "it broke differently")
            assert other["metadata"]["name"] != first["metadata"]["name"]

            involved = first["involvedObject"]
            assert involved == object_reference(cm)
            assert involved["kind"] == "ConfigMap" and involved["uid"] == cm["metadata"]["uid"]
            assert first["source"] == {"component": "test-controller", "host": "node-1"}
            assert first["reportingComponent"] == "test-controller"
            assert first["type"] == "Warning" and first["reason"] == "Broken"

            recorder.emit(cm, "Normal", "Fine", "all good")       # in the background
            recorder.emit(cm, "Normal", "Fine", "all good")
            await recorder.flush()
            events = await client.list("v1 events", namespace,
                                       field_selector="reason=Fine")
            assert [e["count"] for e in events["items"]] == [2]

            # Cluster-scoped objects get their events in "default"; failures never raise.
            node_event = await recorder.record(
                {"kind": "Node", "apiVersion": "v1", "metadata": {"name": "n1", "uid": "u"}},
                "Normal", "Seen", "node seen")
            assert node_event["metadata"]["namespace"] == "default"
            assert await recorder.record({"metadata": {"name": "x", "namespace": "no-such-ns"}},
                                         "Normal", "Lost", "nowhere") is None
    asyncio.run(main())
