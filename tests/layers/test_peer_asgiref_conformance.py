"""asgiref 1.1.2's ASGI 1 conformance suite against shmchannels.ChannelLayer,
in a virtualenv of its own (.venv-asgi1/) without Django Channels.

See tests/peer/run_asgiref_conformance.py for the runner and
tests/peer/asgiref_conformance_module.py for the test module it runs.
"""

import os

import pytest

from peer.common import PeerSetupError
from peer.run_asgiref_conformance import VENV, run_suite

pytestmark = pytest.mark.slow

#: Every test of asgiref 1.1.2's ConformanceTestCase; all must pass (the
#: suite skips some when a layer lacks an extension or a capacity: none may).
EXPECTED_PASSED = {
    "test_send_recv",
    "test_single_process_receive",
    "test_single_process_receive_error",
    "test_message_expiry",
    "test_new_channel_single_reader",
    "test_new_channel_failures",
    "test_strings",
    "test_groups",
    "test_groups_process",
    "test_group_channels",
    "test_flush",
    "test_flush_groups",
    "test_group_expiry",
    "test_capacity",
    "test_capacity_process",
    "test_capacity_group",
    "test_exceptions",
    "test_message_alteration_after_send",
}


@pytest.fixture(scope="module")
def suite():
    try:
        result = run_suite()
    except PeerSetupError as exc:
        pytest.fail(f"could not run asgiref's ASGI 1 conformance suite:\n{exc}", pytrace=False)
    print()
    print(result.summary())
    return result


def test_all_18_pass(suite):
    assert len(EXPECTED_PASSED) == 18
    assert suite.names("failed", "error") == set(), suite.output[-8000:]
    assert suite.names("skipped", "xfailed") == set(), suite.output[-8000:]
    assert suite.names("passed") == EXPECTED_PASSED, suite.output[-8000:]
    assert set(suite.junit) == EXPECTED_PASSED
    assert suite.returncode == 0, suite.output[-8000:]


def test_ran_in_an_asgi1_environment_on_the_installed_project(suite):
    env = suite.environment
    assert env["asgiref"] == "1.1.2"
    # The non-editable install in the ASGI 1 virtualenv, not this checkout.
    assert os.path.realpath(env["shmchannels_file"]).startswith(os.path.realpath(VENV) + os.sep)
    # Without the channels extra: no Channels, no Django, and importing
    # shmchannels did not try to import Channels' exceptions successfully.
    assert env["channels_installed"] is False
    assert env["django_installed"] is False
    assert env["channels_imported"] is False
    assert env["channelfull_bases"] == ["shmchannels.exceptions.ChannelFull", "builtins.Exception",
                                        "builtins.BaseException", "builtins.object"]


def test_shared_memory_left_clean(suite):
    assert suite.shm_left == [], f"the conformance suite's process left bus files behind: {suite.shm_left}"
