"""Versioned consumers for the deploy tests: every reply says which code made it."""

import os

VERSION = open(os.environ["DEPLOYAPP_VERSION_FILE"]).read().strip()


def http(message):
    message.reply_channel.send({
        "status": 200,
        "headers": [[b"content-type", b"text/plain"]],
        "content": f"{VERSION} {os.getpid()}".encode(),
    })


def ws_connect(message):
    message.reply_channel.send({"accept": True})


def ws_receive(message):
    message.reply_channel.send({"text": f"{VERSION}:{message['text']}"})


routes = {"http.request": http, "websocket.connect": ws_connect, "websocket.receive": ws_receive}
