"""The talk's offloading example: a view hands slow work to a background channel.

POST /images (raw image body) stores the upload, sends a job on the
``thumbnail`` channel and answers 202 at once; a worker (of a separate pool
if you like: ``shmchannels worker --only-channels thumbnail``) makes the
thumbnail.  GET /images/<id> tells whether it is ready.

    shmchannels serve --wsgi app:application --routing app:routes --exclude-channels thumbnail
    shmchannels worker --routing app:routes --only-channels thumbnail
"""

import json
import os
import uuid

from shmchannels import Channel

MEDIA = os.environ.get("THUMBNAIL_MEDIA", os.path.join(os.path.dirname(os.path.abspath(__file__)), "media"))
SIZE = (128, 128)


def _json(start_response, status, payload):
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def application(environ, start_response):
    method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
    if method == "POST" and path == "/images":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        data = environ["wsgi.input"].read(length)
        image_id = uuid.uuid4().hex
        os.makedirs(MEDIA, exist_ok=True)
        with open(os.path.join(MEDIA, image_id + ".orig"), "wb") as f:
            f.write(data)
        Channel("thumbnail").send({"id": image_id})  # sent when this consumer returns
        return _json(start_response, "202 Accepted", {"id": image_id, "status": f"/images/{image_id}"})
    if method == "GET" and path.startswith("/images/"):
        image_id = path.rsplit("/", 1)[1]
        ready = os.path.exists(os.path.join(MEDIA, image_id + ".thumb.png"))
        return _json(start_response, "200 OK", {"id": image_id, "ready": ready})
    return _json(start_response, "404 Not Found", {"error": "not found"})


def thumbnail(message):
    """Runs in a worker: the slow part, off the request path."""
    from PIL import Image

    image_id = message["id"]
    if not all(c in "0123456789abcdef" for c in image_id):
        return
    src = os.path.join(MEDIA, image_id + ".orig")
    with Image.open(src) as im:
        im.thumbnail(SIZE)
        tmp = os.path.join(MEDIA, image_id + ".thumb.tmp.png")
        im.save(tmp, "PNG")
    os.replace(tmp, os.path.join(MEDIA, image_id + ".thumb.png"))  # readers never see half a file


routes = {"thumbnail": thumbnail}
