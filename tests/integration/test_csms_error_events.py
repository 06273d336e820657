"""A CSMS failure as the user sees it: the message the provider returns over gRPC (which kubelet
shows as FailedMount and the driver records as FailedToMountSecrets) carries no CSMS request id,
so kubelet's retries repeat one message and their Events aggregate; the request id, which support
asks for, is in the provider's log line.

Runs the real stack of tests/integration/test_driver.py: driver and provider on real sockets, the
CSMS and Kubernetes API emulators over HTTP."""

from __future__ import annotations

import logging
import re

import grpc
import pytest

from dew_csi import kube
from dew_csi.logs import KlogFormatter
from tests.integration.test_driver import (  # noqa: F401  (fixtures)
    Stack,
    api,
    create_pod,
    csms,
    events_for,
    spc_test,
    stack,
)

MISSING_VERSION = '- {objectName: secret_2, objectType: csms, objectVersion: "v9"}\n'
REQUEST_ID = re.compile(r"request.?id", re.IGNORECASE)


async def test_csms_request_ids_stay_in_the_provider_log(
    stack: Stack,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dew_csi.provider")
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(MISSING_VERSION))
    pod = await create_pod(stack)
    details = []
    for _ in range(3):  # kubelet retries the mount
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.node.NodePublishVolume(pod.request)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        details.append(caught.value.details() or "")

    # What reached the driver: actionable, and the same text on every retry.
    assert "secret_2" in details[0]
    assert "'v9'" in details[0]
    assert not REQUEST_ID.search(details[0]), details[0]
    assert details == [details[0]] * 3

    # The provider's log line names each failed CSMS call's request id.
    failures = [r for r in caplog.records if r.getMessage() == "Get secret failed"]
    assert len(failures) == 3
    lines = [KlogFormatter().format(r) for r in failures]
    ids = [re.search(r'request_id="([^"]+)"', line) for line in lines]
    assert all(ids), lines
    request_ids = {m.group(1) for m in ids if m}
    assert len(request_ids) == 3  # CSMS gives every response its own id
    assert all('name="secret_2"' in line and 'version="v9"' in line for line in lines)

    # The driver's Warning Event: one Event for the repeated failure, no request id in it.
    events = await events_for(stack, pod, "FailedToMountSecrets")
    assert len(events) == 1, [e["message"] for e in events]
    message = events[0]["message"]
    assert "'v9'" in message
    assert not REQUEST_ID.search(message), message
    assert not any(request_id in message for request_id in request_ids)
