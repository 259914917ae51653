"""Settings of the ``djchat`` test project (see ``djchat/asgi.py`` for how it
is served and migrated).

Environment:

* ``DJCHAT_DB``: a directory (a temp dir of the test) that holds the SQLite
  database ``db.sqlite3``; defaults to the system temp dir.
* ``DJCHAT_PREFIX``: the shared-memory bus prefix of the channel layer, the
  same as ``shmchannels serve --prefix``.
"""

import os
import tempfile

SECRET_KEY = "djchat-shmchannels-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "channels",
    "chat",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

ROOT_URLCONF = "djchat.urls"
ASGI_APPLICATION = "djchat.asgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(os.environ.get("DJCHAT_DB") or tempfile.gettempdir(), "db.sqlite3"),
        # two workers may write sessions at the same time
        "OPTIONS": {"timeout": 20},
    }
}

SESSION_ENGINE = "django.contrib.sessions.backends.db"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# fast, insecure hashing: users are created per test
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "shmchannels.layers.SharedMemoryChannelLayer",
        "CONFIG": {"prefix": os.environ.get("DJCHAT_PREFIX", "djchat"), "capacity": 1000},
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
