"""Aggregated Events as a user sees them: the real kubectl against the API emulator process.

The same Event recorded 4 times (what the driver does while a pod fails to mount) is one Event:
`kubectl get events -o wide` shows COUNT 4, `kubectl describe pod` and `kubectl events` show
"(x4 over ...)", as they do for kubelet's own FailedMount."""

from __future__ import annotations

import re

import pytest

from dew_csi import kube
from tests.conftest import ApiServerProcess
from tests.e2e.conftest import Kubectl

pytestmark = [pytest.mark.kubectl, pytest.mark.e2e]

MESSAGE = 'secret "secret_1" version v9 does not exist in CSMS'


async def test_kubectl_shows_one_event_with_its_count(
    kubectl: Kubectl, emulator: ApiServerProcess
) -> None:
    assert emulator.kubeconfig is not None
    async with kube.Kube.from_kubeconfig(emulator.kubeconfig) as client:
        pod = await client.create(
            kube.POD,
            {
                "metadata": {"name": "events-web", "namespace": "default"},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]},
            },
        )
        for _ in range(4):
            await client.record_event(
                pod, reason="FailedToMountSecrets", message=MESSAGE, warning=True, host="node-1"
            )
        await client.record_event(pod, reason="Other", message="once")

    selector = ("--field-selector", "involvedObject.name=events-web")
    wide = kubectl.run("get", "events", *selector, "-o", "wide").stdout.splitlines()
    header = wide[0].split()
    assert header[:4] == ["LAST", "SEEN", "TYPE", "REASON"]
    assert "COUNT" in header
    [failed] = [line for line in wide if "FailedToMountSecrets" in line]
    assert re.search(r"csi-secrets-store, node-1\s+" + re.escape(MESSAGE) + r"\s+\S+\s+4\s", failed)
    [other] = [line for line in wide if "Other" in line]
    assert re.search(r"once\s+\S+\s+1\s", other)

    described = kubectl.run("describe", "pod", "events-web").stdout
    assert re.search(r"Warning\s+FailedToMountSecrets\s+\S+ \(x4 over \S+\)", described), described

    listed = kubectl.run("events", "--for", "pod/events-web").stdout
    assert re.search(r"\(x4 over \S+\)\s+Warning\s+FailedToMountSecrets", listed), listed
