from shmchannels import Group


def connect(message):
    Group("liveblog").add(message.reply_channel)
    message.reply_channel.send({"accept": True})


def disconnect(message):
    Group("liveblog").discard(message.reply_channel)
