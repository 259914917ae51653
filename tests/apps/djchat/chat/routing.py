from django.urls import re_path

from . import consumers

websocket_urlpatterns = [
    re_path(r"^ws/chat/(?P<room_name>[A-Za-z0-9_.-]{1,80})/$", consumers.ChatConsumer.as_asgi()),
    re_path(r"^ws/syncchat/(?P<room_name>[A-Za-z0-9_.-]{1,80})/$", consumers.SyncChatConsumer.as_asgi()),
]
