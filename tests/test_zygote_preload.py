"""The zygote imports a program once: a later start of the same program does not run the
import machinery again (each page that writes is a copy-on-write fault in the zygote after
every fork). A target whose import failed is tried again on its next start."""

from __future__ import annotations

import os
import socket

import pytest

from otpy.processes import zygote as zygote_module

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def zygote():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    z = zygote_module.Zygote(theirs, os.getpid())
    yield z
    for fd in (z.wake_r, z.wake_w, z.devnull):
        os.close(fd)
    ours.close()
    theirs.close()


def test_a_program_imported_once_is_not_imported_again(zygote, monkeypatch):
    calls = []
    real = zygote_module.import_target
    monkeypatch.setattr(zygote_module, "import_target", lambda target: calls.append(target) or real(target))
    zygote.preload("tests.agents:Echo")
    assert zygote.preload("tests.agents:Echo") is False  # nothing new: a spare forked before is good
    assert calls == ["tests.agents:Echo"]


def test_a_failed_import_is_tried_again(zygote, monkeypatch):
    calls = []

    def failing(target):
        calls.append(target)
        raise ImportError("not yet")

    monkeypatch.setattr(zygote_module, "import_target", failing)
    for _ in range(2):
        with pytest.raises(zygote_module._Refused):
            zygote.preload("tests.agents:Echo")
    assert calls == ["tests.agents:Echo"] * 2
