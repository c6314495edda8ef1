"""Pod workers against the in-memory CRI runtime: starts, restarts with back-off,
liveness restarts, init containers, image pull policies and graceful deletion."""
from __future__ import annotations

import asyncio

import pytest

from kubesmith.cri import api
from kubesmith.cri.client import RuntimeError_
from kubesmith.kubelet import cgroups
from kubesmith.kubelet import runtime as cri
from kubesmith.kubelet.pods import PodWorkers, Relister, WorkerDeps
from kubesmith.kubelet.status import StatusManager

from tests.kubelet.conftest import (FakeClient, FakeProbes, FakeRecorder, FakeRuntime,
                                    FakeVolumes, fake_env, make_pod, wait_for)


@pytest.fixture(autouse=True)
def no_real_cgroups(monkeypatch):
    # These tests never run containers: no cgroups to make.
    monkeypatch.setattr(cgroups, "ensure", lambda *a, **k: None)
    monkeypatch.setattr(cgroups, "remove", lambda *a, **k: True)


class Harness:
    def __init__(self, tmp_path, runtime: FakeRuntime):
        self.runtime = runtime
        self.client = FakeClient()
        self.recorder = FakeRecorder()
        self.volumes = FakeVolumes()
        self.probes = FakeProbes()
        self.status = StatusManager(self.client)
        settings = cri.RuntimeSettings(root_dir=str(tmp_path / "root"),
                                       log_root=str(tmp_path / "logs"),
                                       cluster_dns=["10.96.0.10"],
                                       cluster_domain="cluster.local",
                                       resolv_conf=str(tmp_path / "none"))
        self.workers = PodWorkers(WorkerDeps(
            client=self.client, runtime=runtime, settings=settings, status=self.status,
            recorder=self.recorder, volumes=self.volumes, probes=self.probes,
            container_env=fake_env, node_name="node-1", host_ip=lambda: "192.0.2.1"))

    def last_status(self, name="web"):
        found = [p[3]["status"] for p in self.client.patches if p[1] == name]
        return found[-1] if found else None

    def container_state(self, name="app", pod="web"):
        status = self.last_status(pod) or {}
        for entry in (status.get("containerStatuses") or []) + \
                (status.get("initContainerStatuses") or []):
            if entry["name"] == name:
                return entry
        return None

    async def __aenter__(self):
        self.status.start()
        return self

    async def __aexit__(self, *exc):
        await self.workers.stop()
        await self.status.stop()


def run(coroutine):
    asyncio.run(asyncio.wait_for(coroutine, 30))


def test_a_pod_starts_and_reports_running(tmp_path, fake_runtime):
    async def main():
        async with Harness(tmp_path, fake_runtime) as h:
            pod = make_pod(containers=[{"name": "app", "image": "busybox:1.36",
                                        "imagePullPolicy": "IfNotPresent",
                                        "env": [{"name": "A", "value": "1"}]}])
            h.workers.update(pod)
            await wait_for(lambda: (h.last_status() or {}).get("phase") == "Running")
            status = h.last_status()
            assert status["podIP"] == "10.244.0.5"
            assert h.container_state()["ready"] is True
            assert h.container_state()["containerID"].startswith("containerd://container")
            [cid] = fake_runtime.running("app")
            config = fake_runtime.containers[cid]["config"]
            assert [(e.key, e.value) for e in config.envs] == [("A", "1")]
            assert config.log_path == "app/0.log"
            assert [m.container_path for m in config.mounts] == ["/etc/hosts",
                                                                  "/dev/termination-log"]
            assert h.recorder.reasons() == ["Pulled", "Created", "Started"]
            assert h.volumes.setups == ["uid-1"]
            assert h.probes.updates[-1][1] == "10.244.0.5"
            assert "app" in h.probes.updates[-1][2]
            # A sync with nothing new writes nothing.
            writes = h.status.writes
            h.workers.wake("uid-1")
            await asyncio.sleep(0.2)
            assert h.status.writes == writes
    run(main())


def test_crashing_container_restarts_with_back_off(tmp_path, fake_runtime):
    async def main():
        async with Harness(tmp_path, fake_runtime) as h:
            h.workers.update(make_pod())
            await wait_for(lambda: fake_runtime.running("app"))
            fake_runtime.exit(fake_runtime.running("app")[0], 1)
            h.workers.wake("uid-1")
            # First restart at once, with the restart count in the config.
            await wait_for(lambda: len(fake_runtime.named("app")) == 2
                           and fake_runtime.running("app"))
            second = fake_runtime.running("app")[0]
            assert fake_runtime.containers[second]["config"].metadata.attempt == 1
            assert fake_runtime.containers[second]["config"].log_path == "app/1.log"
            fake_runtime.exit(second, 2)
            h.workers.wake("uid-1")
            await wait_for(lambda: (h.container_state() or {}).get("state", {})
                           .get("waiting", {}).get("reason") == "CrashLoopBackOff")
            entry = h.container_state()
            assert entry["restartCount"] == 1
            assert entry["lastState"]["terminated"]["exitCode"] == 2
            assert entry["state"]["waiting"]["message"].startswith(
                "back-off 10s restarting failed container=app pod=web_default(uid-1)")
            assert "BackOff" in h.recorder.reasons()
            assert not fake_runtime.running("app")
            # The oldest exited container is removed; the newest stays for --previous.
            assert len(fake_runtime.named("app")) == 1
    run(main())


def test_failed_liveness_kills_and_restarts(tmp_path, fake_runtime):
    async def main():
        async with Harness(tmp_path, fake_runtime) as h:
            h.workers.update(make_pod())
            await wait_for(lambda: fake_runtime.running("app"))
            first = fake_runtime.running("app")[0]
            h.probes.live_failure[("uid-1", "app")] = "Liveness probe failed: boom"
            h.workers.wake("uid-1")
            await wait_for(lambda: fake_runtime.running("app")
                           and fake_runtime.running("app")[0] != first)
            assert ("uid-1", "app") in h.probes.resets
            killing = [m for _, r, m in h.recorder.events if r == "Killing"]
            assert killing == ["Container app failed liveness probe, will be restarted"]
            stop = [c for c in fake_runtime.calls if c[0] == "stop_container"]
            assert stop == [("stop_container", first, 30)]
            await wait_for(lambda: (h.container_state() or {}).get("restartCount") == 1)
    run(main())


def test_init_containers_run_in_order(tmp_path, fake_runtime):
    async def main():
        async with Harness(tmp_path, fake_runtime) as h:
            pod = make_pod(initContainers=[
                {"name": "one", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent"},
                {"name": "two", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent"}])
            h.workers.update(pod)
            await wait_for(lambda: fake_runtime.running("one"))
            assert not fake_runtime.named("two") and not fake_runtime.named("app")
            config = fake_runtime.containers[fake_runtime.running("one")[0]]["config"]
            assert dict(config.labels)["io.kubernetes.container.type"] == "init"
            fake_runtime.exit(fake_runtime.running("one")[0], 0)
            h.workers.wake("uid-1")
            await wait_for(lambda: fake_runtime.running("two"))
            fake_runtime.exit(fake_runtime.running("two")[0], 0)
            h.workers.wake("uid-1")
            await wait_for(lambda: fake_runtime.running("app"))
            await wait_for(lambda: (h.last_status() or {}).get("phase") == "Running")
            assert len(fake_runtime.named("one")) == 1     # never restarted
    run(main())


def test_run_to_completion_stops_the_sandbox(tmp_path, fake_runtime):
    async def main():
        async with Harness(tmp_path, fake_runtime) as h:
            h.workers.update(make_pod(restartPolicy="Never"))
            await wait_for(lambda: fake_runtime.running("app"))
            fake_runtime.exit(fake_runtime.running("app")[0], 0)
            h.workers.wake("uid-1")
            await wait_for(lambda: (h.last_status() or {}).get("phase") == "Succeeded")
            h.workers.wake("uid-1")
            await wait_for(lambda: all(s["state"] == api.SANDBOX_NOTREADY
                                       for s in fake_runtime.sandboxes.values()))
            assert h.container_state()["state"]["terminated"]["reason"] == "Completed"
            assert len(fake_runtime.named("app")) == 1
    run(main())


def test_image_pull_policies(tmp_path, fake_runtime):
    async def main():
        async with Harness(tmp_path, fake_runtime) as h:
            never = make_pod(name="never", uid="u-never", containers=[
                {"name": "app", "image": "missing:1", "imagePullPolicy": "Never"}])
            h.workers.update(never)
            await wait_for(lambda: ((h.container_state(pod="never") or {}).get("state") or {})
                           .get("waiting", {}).get("reason") == "ErrImageNeverPull")
            assert h.container_state(pod="never")["state"]["waiting"]["message"] == \
                'Container image "missing:1" is not present with pull policy of Never'
            fake_runtime.pull_error = RuntimeError_("PullImage", None, "no registry reachable")
            failing = make_pod(name="pull", uid="u-pull", containers=[
                {"name": "app", "image": "example.com/app:1", "imagePullPolicy": "IfNotPresent"}])
            h.workers.update(failing)
            await wait_for(lambda: ((h.container_state(pod="pull") or {}).get("state") or {})
                           .get("waiting", {}).get("reason") == "ErrImagePull")
            h.workers.wake("u-pull")
            await wait_for(lambda: ((h.container_state(pod="pull") or {}).get("state") or {})
                           .get("waiting", {}).get("reason") == "ImagePullBackOff")
            assert ("pull_image", "example.com/app:1") in fake_runtime.calls
            # A locally imported kubesmith.local image is used as it is, even with Always.
            fake_runtime.add_image("kubesmith.local/busybox:latest")
            local = make_pod(name="local", uid="u-local", containers=[
                {"name": "app", "image": "kubesmith.local/busybox:latest",
                 "imagePullPolicy": "Always"}])
            h.workers.update(local)
            await wait_for(lambda: (h.last_status("local") or {}).get("phase") == "Running")
            assert ("pull_image", "kubesmith.local/busybox:latest") not in fake_runtime.calls
            # A missing local image is an error without a pull (no registry serves it).
            missing = make_pod(name="missing", uid="u-missing", containers=[
                {"name": "app", "image": "kubesmith.local/nothing:latest",
                 "imagePullPolicy": "IfNotPresent"}])
            h.workers.update(missing)
            await wait_for(lambda: ((h.container_state(pod="missing") or {}).get("state") or {})
                           .get("waiting", {}).get("reason") == "ErrImagePull")
            assert ("pull_image", "kubesmith.local/nothing:latest") not in fake_runtime.calls
            # Always pulls other images.
            fake_runtime.pull_error = None
            always = make_pod(name="always", uid="u-always", containers=[
                {"name": "app", "image": "busybox:1.36", "imagePullPolicy": "Always"}])
            h.workers.update(always)
            await wait_for(lambda: (h.last_status("always") or {}).get("phase") == "Running")
            assert ("pull_image", "busybox:1.36") in fake_runtime.calls
    run(main())


def test_deletion_runs_pre_stop_then_stops_and_deletes(tmp_path, fake_runtime):
    async def main():
        async with Harness(tmp_path, fake_runtime) as h:
            pod = make_pod(containers=[{
                "name": "app", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent",
                "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo bye"]}}}}])
            h.workers.update(pod)
            await wait_for(lambda: fake_runtime.running("app"))
            cid = fake_runtime.running("app")[0]
            deleting = dict(pod, metadata=dict(pod["metadata"],
                                               deletionTimestamp="2026-01-01T00:00:00Z",
                                               deletionGracePeriodSeconds=20))
            h.workers.update(deleting)
            await wait_for(lambda: h.client.deletes)
            assert ("exec_sync", cid, ["sh", "-c", "echo bye"]) in fake_runtime.calls
            stop = [c for c in fake_runtime.calls if c[0] == "stop_container"][0]
            assert stop[1] == cid and 2 <= stop[2] <= 20
            assert not fake_runtime.containers and not fake_runtime.sandboxes
            assert h.volumes.teardowns == ["uid-1"]
            assert h.client.deletes == [("v1 pods", "web", "default", {
                "grace_period_seconds": 0, "preconditions": {"uid": "uid-1"}})]
            final = h.last_status()
            assert final["phase"] == "Failed"
            assert h.container_state()["state"]["terminated"]["exitCode"] == 143
            order = [c[0] for c in fake_runtime.calls]
            assert order.index("exec_sync") < order.index("stop_container") \
                < order.index("stop_pod_sandbox")
            assert "Killing" in h.recorder.reasons()
            assert not h.workers.running("uid-1")
            assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").iterdir())
    run(main())


def test_a_failed_mount_is_reported_and_retried(tmp_path, fake_runtime):
    async def main():
        async with Harness(tmp_path, fake_runtime) as h:
            h.volumes.fail = RuntimeError('configmap "cfg" not found')
            h.workers.update(make_pod())
            await wait_for(lambda: "FailedMount" in h.recorder.reasons())
            await wait_for(lambda: h.last_status() is not None)
            assert h.last_status()["phase"] == "Pending"
            assert not fake_runtime.sandboxes
    run(main())


def test_relist_wakes_changed_pods_and_reports_orphans(fake_runtime):
    async def main():
        changed, orphans = [], []
        relister = Relister(fake_runtime, changed.append, orphans.append,
                            known=lambda uid: uid == "uid-1")
        pod = make_pod()
        settings = cri.RuntimeSettings()
        sandbox = await fake_runtime.run_pod_sandbox(cri.sandbox_config(pod, settings))
        await relister.relist()
        assert changed == ["uid-1"] and orphans == []
        changed.clear()
        await relister.relist()
        assert changed == []
        await fake_runtime.stop_pod_sandbox(sandbox)
        other = make_pod(name="other", uid="uid-2")
        await fake_runtime.run_pod_sandbox(cri.sandbox_config(other, settings))
        await relister.relist()
        assert sorted(changed) == ["uid-1", "uid-2"] and orphans == ["uid-2"]
    run(main())


def test_termination_message_from_the_file_or_the_log(tmp_path, fake_runtime):
    async def main():
        async with Harness(tmp_path, fake_runtime) as h:
            pod = make_pod(restartPolicy="Never", containers=[
                {"name": "app", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent"},
                {"name": "logs", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent",
                 "terminationMessagePolicy": "FallbackToLogsOnError"}])
            h.workers.update(pod)
            await wait_for(lambda: len(fake_runtime.running()) == 2)
            message_file = cri.termination_message_file(str(tmp_path / "root"), "uid-1",
                                                        "app", 0)
            with open(message_file, "w") as out:
                out.write("all done")
            [logs_id] = fake_runtime.running("logs")
            log_path = tmp_path / "logs.log"
            log_path.write_text("2026-01-01T00:00:00.000000000Z stderr F first\n"
                                "2026-01-01T00:00:00.100000000Z stderr F it broke\n")
            fake_runtime.containers[logs_id]["config"].log_path = str(log_path)
            fake_runtime.exit(fake_runtime.running("app")[0], 0)
            fake_runtime.exit(logs_id, 3)
            h.workers.wake("uid-1")
            await wait_for(lambda: (h.last_status() or {}).get("phase") == "Failed")
            app = h.container_state("app")["state"]["terminated"]
            assert app["message"] == "all done" and app["reason"] == "Completed"
            logs = h.container_state("logs")["state"]["terminated"]
            assert logs["message"] == "first\nit broke" and logs["exitCode"] == 3
    run(main())


def test_a_changed_image_restarts_the_container(tmp_path, fake_runtime):
    async def main():
        async with Harness(tmp_path, fake_runtime) as h:
            fake_runtime.add_image("busybox:1.37")
            pod = make_pod()
            h.workers.update(pod)
            await wait_for(lambda: fake_runtime.running("app"))
            first = fake_runtime.running("app")[0]
            h.workers.wake("uid-1")
            await asyncio.sleep(0.1)
            assert fake_runtime.running("app") == [first]       # same spec: left alone
            changed = make_pod(containers=[{"name": "app", "image": "busybox:1.37",
                                            "imagePullPolicy": "IfNotPresent"}])
            h.workers.update(changed)
            await wait_for(lambda: fake_runtime.running("app")
                           and fake_runtime.running("app")[0] != first)
            config = fake_runtime.containers[fake_runtime.running("app")[0]]["config"]
            assert config.image.user_specified_image == "busybox:1.37"
            assert "Container app definition changed, will be restarted" in \
                [m for _, r, m in h.recorder.events if r == "Killing"]
    run(main())


def test_sidecar_init_containers_keep_running(tmp_path, fake_runtime):
    async def main():
        async with Harness(tmp_path, fake_runtime) as h:
            pod = make_pod(restartPolicy="Never", initContainers=[
                {"name": "proxy", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent",
                 "restartPolicy": "Always"},
                {"name": "setup", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent"}])
            h.workers.update(pod)
            await wait_for(lambda: fake_runtime.running("proxy"))
            h.workers.wake("uid-1")
            await wait_for(lambda: fake_runtime.running("setup"))
            fake_runtime.exit(fake_runtime.running("setup")[0], 0)
            h.workers.wake("uid-1")
            await wait_for(lambda: fake_runtime.running("app"))
            await wait_for(lambda: (h.last_status() or {}).get("phase") == "Running")
            proxy = h.container_state("proxy")
            assert "running" in proxy["state"] and proxy["ready"] is True
            # The sidecar is restarted when it dies, even with restartPolicy Never.
            fake_runtime.exit(fake_runtime.running("proxy")[0], 1)
            h.workers.wake("uid-1")
            await wait_for(lambda: fake_runtime.running("proxy"))
            assert len(fake_runtime.named("proxy")) == 2
            # The app ends: the pod succeeds and its sidecar is stopped.
            fake_runtime.exit(fake_runtime.running("app")[0], 0)
            h.workers.wake("uid-1")
            await wait_for(lambda: (h.last_status() or {}).get("phase") == "Succeeded")
            h.workers.wake("uid-1")
            await wait_for(lambda: not fake_runtime.running())
    run(main())


def test_pulls_use_the_image_pull_secrets(tmp_path, fake_runtime):
    import base64
    import json

    async def main():
        async with Harness(tmp_path, fake_runtime) as h:
            config = {"auths": {"registry.example.com": {"username": "u", "password": "p"}}}
            h.client.objects[("v1 secrets", "default", "regcred")] = {
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": base64.b64encode(
                    json.dumps(config).encode()).decode()}}
            pod = make_pod(imagePullSecrets=[{"name": "regcred"}, {"name": "missing"}],
                           containers=[{"name": "app", "image": "registry.example.com/app:2",
                                        "imagePullPolicy": "IfNotPresent"}])
            h.workers.update(pod)
            await wait_for(lambda: fake_runtime.running("app"))
            [auth] = fake_runtime.pull_auths
            assert (auth.username, auth.password) == ("u", "p")
            assert "Pulling" in h.recorder.reasons() and "Pulled" in h.recorder.reasons()
    run(main())


def test_admission_rejects_what_the_node_cannot_hold(tmp_path, fake_runtime):
    async def main():
        async with Harness(tmp_path, fake_runtime) as h:
            h.workers.deps.node_allocatable = lambda: {"cpu": "1", "memory": "1Gi", "pods": "2"}
            h.workers.update(make_pod(name="a", uid="u-a"))
            await wait_for(lambda: (h.last_status("a") or {}).get("phase") == "Running")
            big = make_pod(name="big", uid="u-big", containers=[{
                "name": "app", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent",
                "resources": {"requests": {"cpu": "2"}}}])
            h.workers.update(big)
            await wait_for(lambda: (h.last_status("big") or {}).get("phase") == "Failed")
            status = h.last_status("big")
            assert status["reason"] == "OutOfcpu"
            assert status["message"] == ("Pod was rejected: Node didn't have enough resource: "
                                         "cpu, requested: 2000, used: 0, capacity: 1000")
            assert "OutOfcpu" in h.recorder.reasons()
            h.workers.update(make_pod(name="b", uid="u-b"))
            await wait_for(lambda: (h.last_status("b") or {}).get("phase") == "Running")
            h.workers.update(make_pod(name="c", uid="u-c"))
            await wait_for(lambda: (h.last_status("c") or {}).get("reason") == "OutOfpods")
            assert not [c for c in fake_runtime.calls if c[0] == "run_pod_sandbox"][2:]
            # The refusal stays (a later sync keeps reason and message).
            h.workers.wake("u-c")
            await asyncio.sleep(0.1)
            assert h.last_status("c")["reason"] == "OutOfpods"
    run(main())


def test_active_deadline_kills_the_pod(tmp_path, fake_runtime):
    async def main():
        async with Harness(tmp_path, fake_runtime) as h:
            h.workers.update(make_pod(activeDeadlineSeconds=1))
            await wait_for(lambda: fake_runtime.running("app"))
            await wait_for(lambda: (h.last_status() or {}).get("phase") == "Failed", timeout=8)
            status = h.last_status()
            assert status["reason"] == "DeadlineExceeded"
            assert not fake_runtime.running()
            assert "DeadlineExceeded" in h.recorder.reasons()
    run(main())


def test_lifecycle_handlers(fake_runtime):
    from aiohttp import web

    from kubesmith.kubelet.pods import run_handler

    async def main():
        seen = []

        async def hook(request):
            seen.append((request.path, request.headers.get("X-Why")))
            return web.Response(status=500 if request.path == "/fail" else 200)
        app = web.Application()
        app.add_routes([web.get("/{tail:.*}", hook)])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        container = {"name": "app", "ports": [{"name": "hooks", "containerPort": port}]}
        try:
            ok = await run_handler(fake_runtime, {"httpGet": {
                "path": "stop", "port": "hooks",
                "httpHeaders": [{"name": "X-Why", "value": "bye"}]}},
                container_id="c1", container=container, pod_ip="127.0.0.1", timeout=5)
            assert ok is None and seen == [("/stop", "bye")]
            failed = await run_handler(fake_runtime, {"httpGet": {"path": "/fail", "port": port}},
                                       container_id="c1", container=container,
                                       pod_ip="127.0.0.1", timeout=5)
            assert "HTTP status 500" in failed
            fake_runtime.exec_results["c1"] = (2, b"", b"nope")
            failed = await run_handler(fake_runtime, {"exec": {"command": ["false"]}},
                                       container_id="c1", container=container,
                                       pod_ip="127.0.0.1", timeout=5)
            assert "exited with 2" in failed and "nope" in failed
            started = asyncio.get_running_loop().time()
            assert await run_handler(fake_runtime, {"sleep": {"seconds": 0.2}},
                                     container_id="c1", container=container,
                                     pod_ip="127.0.0.1", timeout=5) is None
            assert asyncio.get_running_loop().time() - started >= 0.2
        finally:
            await runner.cleanup()
    run(main())
