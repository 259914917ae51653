"""The benchmark's hello world as a Django view, served through WSGI as a
project would serve it (bench/http.py: shmchannels --wsgi, gunicorn gthread).

    shmchannels serve --pythonpath bench/apps --wsgi bench_django:application
    gunicorn -w 2 -k gthread --threads 4 --pythonpath bench/apps bench_django:application

One module is the settings, the URLconf and the view: DEBUG off, the usual
request middleware of a new project that needs no database (security,
common, clickjacking), no apps.
"""

from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only-not-secret",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=[
            "django.middleware.security.SecurityMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.clickjacking.XFrameOptionsMiddleware",
        ],
        USE_TZ=True,
    )

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402


def hello(request):
    return HttpResponse(b"Hello, world!", content_type="text/plain")


urlpatterns = [path("", hello)]

application = get_wsgi_application()
