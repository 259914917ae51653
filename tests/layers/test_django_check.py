"""``manage.py check`` on a project whose CHANNEL_LAYERS uses
SharedMemoryChannelLayer with channels_redis's keys (issue 13: configuration
errors at start, not a 500 at the first WebSocket), in a real Django
process; and the layer's constructor applying the same rules."""

import subprocess
import sys

import pytest

from shmchannels.layers import SharedMemoryChannelLayer

SETTINGS = '''
SECRET_KEY = "x"
INSTALLED_APPS = ["django.contrib.contenttypes", "channels", "shmchannels"]
CHANNEL_LAYERS = {{"default": {{"BACKEND": "shmchannels.layers.SharedMemoryChannelLayer", "CONFIG": {config}}}}}
'''


def check(tmp_path, config):
    (tmp_path / "checked_settings.py").write_text(SETTINGS.format(config=config))
    return subprocess.run([sys.executable, "-m", "django", "check", "--settings", "checked_settings"],
                          cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)


SUBCLASS = '''
from shmchannels.layers import SharedMemoryChannelLayer


class TunedLayer(SharedMemoryChannelLayer):
    def __init__(self, *, tuning=1, **kwargs):
        self.tuning = tuning
        super().__init__(**kwargs)
'''


@pytest.mark.parametrize("config, code, says", [
    # hosts: channels_redis's forms of one server turn the bridge on; checking connects to nothing
    ('{"prefix": "site", "hosts": [("127.0.0.1", 6379)]}', 0, ["no issues"]),
    ('{"prefix": "site", "hosts": ["redis://10.0.0.5:6379/0"], "host": "web1"}', 0, ["no issues"]),
    ('{"prefix": "site", "hosts": [{"address": "redis://h:6379", "password": "pw"}]}', 0, ["no issues"]),
    ('{"prefix": "site", "hosts": ["redis://a:6379", "redis://b:6379"]}', 1, ["shmchannels.E001", "exactly one"]),
    ('{"prefix": "site", "hosts": [{"sentinels": [("s", 26379)]}]}', 1, ["shmchannels.E001", "Sentinel"]),
    ('{"prefix": "site", "hosts": ["http://x"]}', 1, ["shmchannels.E001", "not a Redis URL"]),
    ('{"prefix": "site", "hosts": ["redis://x:1"], "host": "a.b"}', 1, ["shmchannels.E001", "host must be"]),
    ('{"prefix": "site", "hosts": ["redis://x:1"], "on_disconnect": None}', 1, ["shmchannels.E005"]),
    ('{"prefix": "site", "on_reconnect": None}', 0, ["shmchannels.W001", "never called"]),
    ('{"prefix": "site", "capacity": "many"}', 1, ["shmchannels.E004", "capacity"]),
    ('{"prefix": "site", "expiry_seconds": 5}', 1, ["shmchannels.E002", "'expiry_seconds'"]),
    ('{"prefix": "site", "serializer_format": "pickle"}', 1, ["shmchannels.E003"]),
    ('{"prefix": "site", "serializer_format": "json"}', 0, ["shmchannels.W001", "msgpack"]),
    ('{"prefix": "site", "symmetric_encryption_keys": ["k"]}', 0, ["shmchannels.W002", "0600"]),
    ('{"prefix": "site", "hosts": ["redis://x:1"], "symmetric_encryption_keys": ["k"]}', 0, ["no issues"]),
    ('{"prefix": "site", "cross_host_channels": ["jobs"]}', 0, ["shmchannels.W002", "without 'hosts'"]),
    ('{"prefix": "site", "capacity": 200}', 0, ["no issues"]),
])
def test_manage_py_check_reports_the_layers_config(tmp_path, config, code, says):
    done = check(tmp_path, config)
    out = done.stdout + done.stderr
    assert done.returncode == code, out
    for text in says:
        assert text in out, out


@pytest.mark.parametrize("config, code, says", [
    # a subclass's own keyword is accepted, and only the base keys go through LayerOptions
    ('{"prefix": "site", "tuning": 3}', 0, ["no issues"]),
    ('{"prefix": "site", "tuning": 3, "capacity": 0}', 1, ["shmchannels.E004", "capacity must be at least 1"]),
    ('{"prefix": "site", "tunning": 3}', 1, ["shmchannels.E002", "'tunning'"]),
])
def test_a_subclass_with_its_own_keys_is_checked_by_its_whole_signature(tmp_path, config, code, says):
    (tmp_path / "tuned.py").write_text(SUBCLASS)
    (tmp_path / "checked_settings.py").write_text(
        SETTINGS.format(config=config).replace("shmchannels.layers.SharedMemoryChannelLayer", "tuned.TunedLayer"))
    done = subprocess.run([sys.executable, "-m", "django", "check", "--settings", "checked_settings"],
                          cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == code, out
    for text in says:
        assert text in out, out


def test_the_constructor_applies_the_same_rules():
    with pytest.raises(ValueError, match="exactly one Redis server"):
        SharedMemoryChannelLayer(prefix="t", hosts=["redis://127.0.0.1:6379", "redis://127.0.0.1:6380"])
    with pytest.raises(TypeError, match="'on_disconnect' is not supported with 'hosts'"):
        SharedMemoryChannelLayer(prefix="t", hosts=["redis://127.0.0.1:6379"], on_disconnect=None)
    with pytest.raises(TypeError, match="unknown key"):
        SharedMemoryChannelLayer(prefix="t", expiry_seconds=5)
    layer = SharedMemoryChannelLayer(prefix="t", symmetric_encryption_keys=["k"], serializer_format="json",
                                     random_prefix_length=8, on_disconnect=None, on_reconnect=None)
    assert layer.prefix == "t"
