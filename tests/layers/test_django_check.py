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


@pytest.mark.parametrize("config, code, says", [
    ('{"prefix": "site", "hosts": [("127.0.0.1", 6379)]}', 1, ["shmchannels.E001", "'hosts'"]),
    ('{"prefix": "site", "capacity": "many"}', 1, ["shmchannels.E004", "capacity"]),
    ('{"prefix": "site", "expiry_seconds": 5}', 1, ["shmchannels.E002", "'expiry_seconds'"]),
    ('{"prefix": "site", "serializer_format": "pickle"}', 1, ["shmchannels.E003"]),
    ('{"prefix": "site", "symmetric_encryption_keys": ["k"]}', 0, ["shmchannels.W001", "0600"]),
    ('{"prefix": "site", "capacity": 200}', 0, ["no issues"]),
])
def test_manage_py_check_reports_the_layers_config(tmp_path, config, code, says):
    done = check(tmp_path, config)
    out = done.stdout + done.stderr
    assert done.returncode == code, out
    for text in says:
        assert text in out, out


def test_the_constructor_applies_the_same_rules():
    with pytest.raises(TypeError, match="'hosts' is a channels_redis key"):
        SharedMemoryChannelLayer(prefix="t", hosts=["redis://127.0.0.1:6379"])
    with pytest.raises(TypeError, match="unknown key"):
        SharedMemoryChannelLayer(prefix="t", expiry_seconds=5)
    layer = SharedMemoryChannelLayer(prefix="t", symmetric_encryption_keys=["k"], serializer_format="json",
                                     random_prefix_length=8, on_disconnect=None, on_reconnect=None)
    assert layer.prefix == "t"
