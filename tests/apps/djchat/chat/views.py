from django.contrib.auth import get_user_model, login
from django.http import HttpResponse


def hello(request):
    return HttpResponse("hello", content_type="text/plain")


def login_as(request, username):
    user, _ = get_user_model().objects.get_or_create(username=username)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return HttpResponse(f"logged in {username}", content_type="text/plain")


def whoami(request):
    name = request.user.username if request.user.is_authenticated else "anonymous"
    return HttpResponse(name, content_type="text/plain")
