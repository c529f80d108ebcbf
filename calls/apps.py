from django.apps import AppConfig


class CallsConfig(AppConfig):
    name = "calls"
    verbose_name = "Voice calls"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Side effects leave the domain through its port (calls.services.effects): bind it to the
        # Celery tasks and the media layer here, once per process, before any request is served.
        from calls import tasks
        from calls.media import control

        tasks.register_effect_handlers()
        control.register()

        # Behind a tunnel or proxy, webhooks keep the public Host: admit the publicUrl host and
        # webhookSecurity.allowedHosts. A broken config must not stop manage.py itself from running
        # (``voicecall setup`` reports it), so errors are left to the commands that need the config.
        from django.conf import settings

        from calls.config import ConfigError, get_config

        try:
            config = get_config()
        except ConfigError:
            return
        from urllib.parse import urlsplit

        hosts = list(config.webhook_security.allowed_hosts)
        if config.public_url:
            hosts.append(urlsplit(config.public_url).hostname or "")
        for host in hosts:
            if host and host not in settings.ALLOWED_HOSTS and "*" not in settings.ALLOWED_HOSTS:
                settings.ALLOWED_HOSTS.append(host)
