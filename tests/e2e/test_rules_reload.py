"""Rule files while serving: reload all-or-nothing, status, watcher, ConfigMap symlink swap."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import grpc
import pytest
from decide_builders import decide_request
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2 as pb
from smart_dispatch._proto.smartdispatch.v1 import smart_dispatch_pb2_grpc as pb_grpc
from smart_dispatch.config import Settings

SHIPPED = Path(__file__).resolve().parents[2] / "rules" / "default.yaml"
BROKEN = "rules:\n  - name: oops\n    when: {category: otp}\n    then:\n      prefer: [fax]\n"


def marker_rule(n: int) -> str:
    return f"rules:\n  - name: marker_{n}\n    priority: 1\n    when: {{category: otp}}\n    then: {{}}\n"


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    shutil.copy(SHIPPED, directory / "default.yaml")
    (directory / "marker.yaml").write_text(marker_rule(0))
    return directory


@pytest.fixture
def settings(rules_dir: Path) -> Settings:
    return Settings(port=0, rules_dir=rules_dir, watch_rules=False)


@pytest.fixture
def admin(channel: grpc.aio.Channel) -> pb_grpc.RulesAdminServiceStub:
    return pb_grpc.RulesAdminServiceStub(channel)


async def test_decisions_during_twenty_reloads_always_see_one_complete_version(stub, admin, rules_dir):
    # Given: version -> the marker rule that only that version has
    first = (await admin.GetRulesStatus(pb.GetRulesStatusRequest())).status.version
    marker_of = {first: "marker_0"}
    reloading = True

    async def reload_twenty_times() -> None:
        nonlocal reloading
        for n in range(1, 21):
            (rules_dir / "marker.yaml").write_text(marker_rule(n))
            reloaded = await admin.ReloadRules(pb.ReloadRulesRequest())
            assert reloaded.changed
            marker_of[reloaded.status.version] = f"marker_{n}"
        reloading = False

    async def decide_while_reloading(worker: int) -> list[pb.DecideResponse]:
        responses = []
        while reloading:
            responses.append(await stub.Decide(decide_request("otp", user=f"u{worker}-{len(responses)}")))
        return responses

    # When Decides from 8 callers race 20 reloads (each tried in a child process first)
    results = await asyncio.gather(reload_twenty_times(), *(decide_while_reloading(i) for i in range(8)))
    responses = [response for batch in results[1:] for response in batch]

    # Then none failed, and each carries exactly its own version's marker rule
    assert len(marker_of) == 21
    assert len({r.ruleset_version for r in responses}) > 5, "reloads did not interleave with decisions"
    for response in responses:
        markers = [r for r in response.matched_rules if r.startswith("marker_")]
        assert markers == [marker_of[response.ruleset_version]]
        assert response.verdict == pb.VERDICT_SEND


async def test_a_broken_file_keeps_the_old_version_serving_and_status_names_file_and_line(
    stub, admin, rules_dir
):
    before = (await admin.GetRulesStatus(pb.GetRulesStatusRequest())).status
    (rules_dir / "zz_broken.yaml").write_text(BROKEN)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.ReloadRules(pb.ReloadRulesRequest())
    response = await stub.Decide(decide_request("otp"))
    status = (await admin.GetRulesStatus(pb.GetRulesStatusRequest())).status

    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"{rules_dir / 'zz_broken.yaml'}:5: unknown channel 'fax'" in info.value.details()
    assert response.ruleset_version == before.version
    assert status.version == before.version
    assert status.last_error.file == str(rules_dir / "zz_broken.yaml")
    assert status.last_error.line == 5
    assert "unknown channel 'fax'" in status.last_error.message
    assert status.failures_since_load == 1

    # And fixing it clears the error and serves the new content
    (rules_dir / "zz_broken.yaml").unlink()
    (rules_dir / "marker.yaml").write_text(marker_rule(7))
    fixed = await admin.ReloadRules(pb.ReloadRulesRequest())
    assert fixed.changed and not fixed.status.HasField("last_error")
    assert "marker_7" in (await stub.Decide(decide_request("otp"))).matched_rules


async def test_reload_of_unchanged_content_rebuilds_nothing(admin):
    before = (await admin.GetRulesStatus(pb.GetRulesStatusRequest())).status
    again = await admin.ReloadRules(pb.ReloadRulesRequest())

    assert not again.changed
    assert again.status.version == before.version and again.status.reloads == before.reloads


async def _wait_for_version_change(admin, old: str, timeout_s: float = 8.0) -> pb.RulesStatus:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        status = (await admin.GetRulesStatus(pb.GetRulesStatusRequest())).status
        if status.version != old or status.HasField("last_error"):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"rules did not change from {old} within {timeout_s}s")


async def test_watcher_reloads_an_edited_file_and_reports_a_broken_one(make_app, rules_dir):
    async with (
        make_app(rules_dir=rules_dir, rules_poll_s=30.0) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        admin = pb_grpc.RulesAdminServiceStub(channel)
        stub = pb_grpc.SmartDispatchServiceStub(channel)
        old = (await admin.GetRulesStatus(pb.GetRulesStatusRequest())).status.version

        (rules_dir / "marker.yaml").write_text(marker_rule(3))
        edited = await _wait_for_version_change(admin, old)
        assert "marker_3" in (await stub.Decide(decide_request("otp"))).matched_rules

        # A broken file dropped into the directory: old version keeps serving, status says why
        (rules_dir / "broken.yaml").write_text(BROKEN)
        broken = await _wait_for_version_change(admin, "never-equal")
        deadline = asyncio.get_running_loop().time() + 8
        while not broken.HasField("last_error") and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            broken = (await admin.GetRulesStatus(pb.GetRulesStatusRequest())).status
        response = await stub.Decide(decide_request("otp"))

    assert edited.version != old
    assert broken.version == edited.version
    assert (broken.last_error.file, broken.last_error.line) == (str(rules_dir / "broken.yaml"), 5)
    assert response.ruleset_version == edited.version


async def test_configmap_style_symlink_swap_triggers_a_reload(make_app, tmp_path):
    # Given a directory laid out like a mounted Kubernetes ConfigMap
    mount = tmp_path / "configmap"
    mount.mkdir()
    for generation, n in (("..2026_01", 0),):
        (mount / generation).mkdir()
        shutil.copy(SHIPPED, mount / generation / "default.yaml")
        (mount / generation / "marker.yaml").write_text(marker_rule(n))
    os.symlink("..2026_01", mount / "..data")
    for name in ("default.yaml", "marker.yaml"):
        os.symlink(f"..data/{name}", mount / name)

    async with (
        make_app(rules_dir=mount, rules_poll_s=30.0) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        admin = pb_grpc.RulesAdminServiceStub(channel)
        stub = pb_grpc.SmartDispatchServiceStub(channel)
        old = (await admin.GetRulesStatus(pb.GetRulesStatusRequest())).status
        assert "marker_0" in (await stub.Decide(decide_request("otp"))).matched_rules

        # When the kubelet writes a new generation and swaps ..data atomically
        (mount / "..2026_02").mkdir()
        shutil.copy(SHIPPED, mount / "..2026_02" / "default.yaml")
        (mount / "..2026_02" / "marker.yaml").write_text(marker_rule(1))
        os.symlink("..2026_02", mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")
        shutil.rmtree(mount / "..2026_01")

        new = await _wait_for_version_change(admin, old.version)
        response = await stub.Decide(decide_request("otp"))

    # Then the new generation serves; hidden entries are not rule files
    assert not new.HasField("last_error")
    assert "marker_1" in response.matched_rules
    assert sorted(Path(f).name for f in new.files) == ["default.yaml", "marker.yaml"]
