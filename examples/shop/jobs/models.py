from django.db import models


class Posting(models.Model):
    title = models.CharField(max_length=200)
    open = models.BooleanField(default=True)

    def __str__(self) -> str:
        return self.title
