"""``INSTALLED_APPS = [..., "shmchannels"]``: Django runs ``shmchannels.checks``
on ``CHANNEL_LAYERS`` with its system checks (``manage.py check``, ``runserver``, ``migrate``)."""

from django.apps import AppConfig


class ShmchannelsConfig(AppConfig):
    name = "shmchannels"
    verbose_name = "shmchannels"

    def ready(self):
        from django.core import checks

        from shmchannels.checks import check_channel_layers

        checks.register(check_channel_layers, "channel_layers")
