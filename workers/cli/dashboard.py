"""`moodwatch dashboard` (serve the page) and `moodwatch dashboard hash-password` (a login entry)."""

from __future__ import annotations

import typer

dashboard_app = typer.Typer(help="The built-in dashboard.", invoke_without_command=True)


@dashboard_app.callback()
def dashboard(ctx: typer.Context) -> None:
    """Serve the built-in dashboard (reads Elasticsearch) on MOODWATCH_DASHBOARD_HOST:PORT."""
    if ctx.invoked_subcommand is not None:
        return
    from workers.common.logs import configure_logging
    from workers.dashboard.server import serve_dashboard
    from workers.dashboard.settings import DashboardSettings

    settings = DashboardSettings()
    configure_logging(settings.log_level, settings.log_json)
    serve_dashboard(settings)


@dashboard_app.command("hash-password")
def hash_password_entry(
    name: str = typer.Argument(..., help="user name"),
    role: str = typer.Argument(..., help="viewer | reviewer | admin"),
) -> None:
    """Prompt for a password and print NAME:ROLE:HASH for MOODWATCH_DASHBOARD_USERS (keep it in a Secret)."""
    from workers.dashboard.auth import ROLE_RANK, hash_password

    if role not in ROLE_RANK or ":" in name or not name.strip():
        raise typer.BadParameter("role must be viewer, reviewer or admin; the name must not contain ':'")
    password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    typer.echo(f"{name}:{role}:{hash_password(password)}")
