"""cinderlib's remote connection flow, across two real OS processes.

A node process (no backend, ``fail_on_missing_backend=False``) publishes its
connector properties in the key-value store; a controller process (the
FileDriver backend) reads them and connects a volume for that node; the node
loads the connection from the store, attaches it with os-brick from the
stored connection info, writes through the device and records it; the
controller then sees the device on the connection. Both share one SQLite
file. The test drives them line by line over their stdin/stdout.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pgserver
import pytest

ROOT = Path(__file__).resolve().parent.parent
STEP_TIMEOUT = 60  # seconds for any one step of either process

COMMON = textwrap.dedent(
    """\
    import asyncio, json, sys

    import aiocinder

    def persistence(url):
        return {"storage": "postgresql" if url.startswith("postgres") else "sqlite",
                "connection": url}

    def say(**message):
        print(json.dumps(message), flush=True)

    async def hear(expected):
        line = await asyncio.to_thread(sys.stdin.readline)
        command = json.loads(line)
        assert command["do"] == expected, (command, expected)
        return command
    """
)

NODE = COMMON + textwrap.dedent(
    """\
    async def main(db_url, payload):
        await aiocinder.setup(persistence(db_url), fail_on_missing_backend=False,
                              host="node-1")
        try:
            props = await aiocinder.get_connector_properties()
            store = aiocinder.Backend.persistence
            await store.set_key_value(aiocinder.KeyValue("connector:node-1", json.dumps(props)))
            say(step="published", props=props)

            command = await hear("attach")
            vol = await aiocinder.Volume.get_by_id(command["volume_id"])
            assert not aiocinder.Backend.backends  # no backend in this process
            (conn,) = await vol.connections()
            assert conn.id == command["connection_id"] and not conn.attached
            await conn.attach()  # from the stored connection info, with os-brick
            assert vol.local_attach is conn and conn.attached
            with open(conn.path, "r+b") as device:
                device.seek(8192)
                device.write(bytes.fromhex(payload))
                device.flush()
            say(step="attached", device=dict(conn.device), path=conn.path)

            await hear("detach")
            await conn.detach()
            assert vol.local_attach is None
            say(step="detached", device=conn.device)
        finally:
            await aiocinder.shutdown()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)

CONTROLLER = COMMON + textwrap.dedent(
    """\
    async def main(db_url, volumes_dir):
        await aiocinder.setup(persistence(db_url), host="controller")
        try:
            backend = await aiocinder.Backend(
                "files", volume_driver="aiocinder.drivers.file.FileDriver",
                volumes_dir=volumes_dir,
            )
            store = aiocinder.Backend.persistence
            vol = await backend.create_volume(1, name="shared")
            (published,) = await store.get_key_values("connector:node-1")
            connector = json.loads(published.value)
            conn = await vol.connect(connector)
            say(step="connected", volume_id=vol.id, connection_id=conn.id,
                conn_info=dict(conn.conn_info), status=vol.status)

            await hear("check")
            await conn.refresh()
            say(step="seen", device=conn.device, attached=conn.attached,
                local_attach=vol.local_attach is not None)

            await hear("check again")
            await conn.refresh()
            say(step="seen again", device=dict(conn.device), attached=conn.attached)

            await hear("disconnect")
            await conn.disconnect()
            await vol.refresh()  # conn.refresh() let go of this very object
            say(step="disconnected", status=vol.status,
                connections=len(await store.get_connections(volume_id=vol.id)))
        finally:
            await aiocinder.shutdown()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


class Peer:
    """One of the two processes: JSON lines in, JSON lines out, every read bounded."""

    def __init__(self, name: str, script: Path, *args: str, cwd: Path) -> None:
        self.name = name
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            # -W error: any warning, os-brick's included, fails the program
            [sys.executable, "-X", "dev", "-W", "error", str(script), *args],
            cwd=cwd, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines),
                             daemon=True),
            threading.Thread(target=self._collect, args=(self.proc.stderr,), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
        with stream:
            for line in stream:
                lines.put(line)
        lines.put(None)

    def _collect(self, stream: IO[str]) -> None:
        with stream:
            self.stderr.extend(stream)

    def _close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        for reader in self.readers:
            reader.join(STEP_TIMEOUT)

    def expect(self, step: str) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=STEP_TIMEOUT)
        except queue.Empty:
            pytest.fail(f"{self.name} said nothing for {STEP_TIMEOUT} s (waiting for {step!r})")
        if line is None:
            self.proc.wait(STEP_TIMEOUT)
            pytest.fail(f"{self.name} ended (status {self.proc.returncode}) before {step!r}:\n"
                        + "".join(self.stderr))
        message: dict[str, Any] = json.loads(line)
        assert message.pop("step") == step, message
        return message

    def tell(self, do: str, **details: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"do": do, **details}) + "\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        status = self.proc.wait(STEP_TIMEOUT)
        self._close()
        assert status == 0, f"{self.name} exited with {status}:\n" + "".join(self.stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STEP_TIMEOUT)
        if not self.proc.stdin or not self.proc.stdin.closed:
            self._close()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    started: list[Peer] = []
    yield started
    for peer in started:
        peer.kill()


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One store both processes use: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.sqlite'}"
        return
    database = pgserver.require_server().database()
    with asyncio.Runner() as runner:
        dsn = runner.run(database.__aenter__())
        try:
            yield dsn
        finally:
            runner.run(database.__aexit__(None, None, None))


def test_node_attaches_what_the_controller_connected(
    tmp_path: Path, peers: list[Peer], shared_url: str
) -> None:
    db_url = shared_url
    volumes_dir = tmp_path / "volumes"
    (tmp_path / "node.py").write_text(NODE, encoding="utf-8")
    (tmp_path / "controller.py").write_text(CONTROLLER, encoding="utf-8")
    payload = os.urandom(512)

    node = Peer("node", tmp_path / "node.py", db_url, payload.hex(), cwd=tmp_path)
    peers.append(node)
    props = node.expect("published")["props"]
    assert props["host"] == "node-1" and props["ip"]

    controller = Peer("controller", tmp_path / "controller.py", db_url, str(volumes_dir),
                      cwd=tmp_path)
    peers.append(controller)
    connected = controller.expect("connected")
    assert connected["status"] == "in-use"
    assert connected["conn_info"]["driver_volume_type"] == "local"
    volume_file = volumes_dir / f"volume-{connected['volume_id']}"
    assert connected["conn_info"]["data"]["device_path"] == str(volume_file)

    controller.tell("check")
    before = controller.expect("seen")
    assert before == {"device": None, "attached": False, "local_attach": False}

    node.tell("attach", volume_id=connected["volume_id"],
              connection_id=connected["connection_id"])
    attached = node.expect("attached")
    assert attached["path"] == str(volume_file)
    assert attached["device"] == {"type": "local", "path": str(volume_file)}
    with open(volume_file, "rb") as f:
        f.seek(8192)
        assert f.read(len(payload)) == payload  # the node's writes are in the volume

    controller.tell("check again")
    seen = controller.expect("seen again")
    assert seen == {"device": attached["device"], "attached": True}

    node.tell("detach")
    assert node.expect("detached") == {"device": None}
    node.finish()

    controller.tell("disconnect")
    assert controller.expect("disconnected") == {"status": "available", "connections": 0}
    controller.finish()
