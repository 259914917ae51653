"""The Channels tutorial's chat consumers, async and sync, plus the sender's
username (``AuthMiddlewareStack``) in every forwarded message."""

import json

from asgiref.sync import async_to_sync
from channels.generic.websocket import AsyncWebsocketConsumer, WebsocketConsumer


def username_of(scope):
    user = scope.get("user")
    if user is not None and user.is_authenticated:
        return user.username
    return "anonymous"


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{self.room_name}"
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, close_code):
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        message = json.loads(text_data)["message"]
        await self.channel_layer.group_send(self.room_group_name, {
            "type": "chat.message", "message": message, "user": username_of(self.scope), "via": "async",
        })

    async def chat_message(self, event):
        await self.send(text_data=json.dumps({"message": event["message"], "user": event["user"], "via": event["via"]}))


class SyncChatConsumer(WebsocketConsumer):
    def connect(self):
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{self.room_name}"
        async_to_sync(self.channel_layer.group_add)(self.room_group_name, self.channel_name)
        self.accept()

    def disconnect(self, close_code):
        async_to_sync(self.channel_layer.group_discard)(self.room_group_name, self.channel_name)

    def receive(self, text_data=None, bytes_data=None):
        message = json.loads(text_data)["message"]
        async_to_sync(self.channel_layer.group_send)(self.room_group_name, {
            "type": "chat.message", "message": message, "user": username_of(self.scope), "via": "sync",
        })

    def chat_message(self, event):
        self.send(text_data=json.dumps({"message": event["message"], "user": event["user"], "via": event["via"]}))
