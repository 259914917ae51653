from django.urls import path

from chat import views

urlpatterns = [
    path("hello/", views.hello),
    path("login/<str:username>/", views.login_as),
    path("whoami/", views.whoami),
]
