"""A minimal Django project for the live-blog example."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("LIVEBLOG_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("LIVEBLOG_DEBUG", "") == "1"
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.contenttypes", "posts"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "liveblog_site.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("LIVEBLOG_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# The talk's Group/Channel objects read their bus prefix from here.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "shmchannels.layers.SharedMemoryChannelLayer",
        "CONFIG": {"prefix": os.environ.get("SHMCHANNELS_PREFIX", "liveblog")},
    }
}
