"""The talk's first example: echo every WebSocket message back.

    shmchannels serve --routing routing:routes --chdir examples/echo
"""


def ws_message(message):
    # ASGI WebSocket packet-received and send-packet message types
    # both have a "text" key for their textual data.
    message.reply_channel.send({"text": message.content["text"]})


routes = {"websocket.receive": ws_message}
