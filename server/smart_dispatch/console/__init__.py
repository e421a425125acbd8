"""The web console on the admin HTTP port: server-rendered pages (Jinja2, autoescaped, no
scripts, nothing fetched from elsewhere) over `api.operations.Operations`, the same answers the
gRPC API gives. Routes: routes.py; sessions, scopes and CSRF: auth.py; pages: views.py."""

from smart_dispatch.console.routes import mount_console

__all__ = ["mount_console"]
