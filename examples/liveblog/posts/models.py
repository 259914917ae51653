import json

from django.db import models

from shmchannels import Group


class Post(models.Model):
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    def as_dict(self):
        return {"id": self.pk, "title": self.title, "body": self.body, "created": self.created.isoformat()}

    def save(self, *args, **kwargs):
        super().save(*args, **kwargs)
        # The talk's point: any code that saves a post (a view, the admin,
        # a management command, a cron script) reaches every open browser.
        Group("liveblog").send({"text": json.dumps(self.as_dict())})
