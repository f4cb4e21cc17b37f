"""`tocsin demo`: a simulated site watched by a real daemon."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import click

from tocsin import logs
from tocsin.cli.base import (
    fail,
    main,
)
from tocsin.cli.daemon import STOP_REPORT_AFTER, report_stuck_tasks
from tocsin.config import ConfigError

# -- demo ----------------------------------------------------------------------------------------


@main.command("demo")
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop after this many seconds (default: run until Ctrl-C).",
)
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="The API's HOST:PORT.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the database, config and secrets here (default: a temporary folder, removed).",
)
@click.option("--mqtt-host", default="127.0.0.1", show_default=True, help="An MQTT broker to use.")
@click.option("--mqtt-port", default=1883, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--speed",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.1, max=10),
    help="Time scale of the scenario and the windows (2: twice as fast).",
)
def demo(
    duration: float | None,
    listen: str,
    state_dir: Path | None,
    mqtt_host: str,
    mqtt_port: int,
    speed: float,
) -> None:
    """Run tocsin on a simulated site: devices fail and recover, tickets open, auto-resolve and
    reopen, and a webhook receiver prints each signed delivery. SIGTERM or SIGINT stops it."""
    from tocsin.demo.run import DemoError, DemoOptions, run_demo

    logs.configure("error", "auto")  # the receiver's lines tell the story
    options = DemoOptions(
        listen=listen,
        state_dir=state_dir,
        duration=duration,
        speed=speed,
        mqtt_host=mqtt_host,
        mqtt_port=mqtt_port,
    )

    def say(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            stop.set()
            loop.call_later(STOP_REPORT_AFTER, report_stuck_tasks)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await run_demo(options, stop, out=say)

    try:
        asyncio.run(serve())
    except DemoError as exc:
        fail(str(exc))
    except ConfigError as exc:  # a bug in the demo's own config, not the user's
        fail(f"the demo's config is invalid: {exc}", 1)
    except OSError as exc:
        fail(f"cannot start: {exc.strerror or exc}", 1)
