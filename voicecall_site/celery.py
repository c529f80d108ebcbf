"""The Celery app. Broker: Redis when REDIS_URL is set, else kombu's filesystem transport under var/."""

import os

from celery import Celery

from voicecall_site.compat import keep_kombu_redis_conninfo

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voicecall_site.settings")

keep_kombu_redis_conninfo()

app = Celery("voicecall")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["calls"])
