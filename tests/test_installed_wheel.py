"""Telex as a user gets it: the wheel built from this checkout, installed into a fresh venv
outside the repository, works without the checkout (schemas ship inside it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SDK_ROUND_TRIP = textwrap.dedent("""
    import pipeline
    from pipeline.codec import AvroCodec
    from pipeline.sdk import OutboundMessage

    message = OutboundMessage(account_id="acct-1", channel="sms", sender="+14155550100",
                              recipient="+14155550123", body="hello", idempotency_key="k-1")
    request = message.to_request(1_800_000_000_000)
    codec = AvroCodec()
    decoded = codec.decode(codec.encode("message_requested", request),
                           expected="message_requested")
    assert decoded["message_id"] == request["message_id"], decoded
    print(pipeline.__file__)
""")


def _run(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_wheel_installed_outside_the_repo_runs_the_cli_and_the_sdk(tmp_path: Path) -> None:
    """Build the wheel, install it (with its dependencies) into a new venv in a temporary
    directory, and from there: `telex --help`, `telex demo --help`, and an SDK request encoded
    and decoded with the schemas the wheel carries, imported from the venv, not the repo."""
    # Built from a copy: setuptools builds in the source tree (build/, *.egg-info), and stale
    # files left there by an earlier build would end up in the wheel.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "state", ".telex", "__pycache__", "*_cache",
        ".hypothesis", "results"))
    wheels = tmp_path / "wheels"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                  str(source)], cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    [wheel] = wheels.glob("telex-*.whl")
    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    installed = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                      "--disable-pip-version-check", str(wheel)], cwd=tmp_path, timeout=280)
    assert installed.returncode == 0, installed.stderr

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    helped = _run([str(venv / "bin" / "telex"), "--help"], cwd=outside)
    assert helped.returncode == 0 and "worker" in helped.stdout, helped.stderr
    demo = _run([str(venv / "bin" / "telex"), "demo", "--help"], cwd=outside)
    assert demo.returncode == 0 and "usage" in demo.stdout.lower(), demo.stderr
    sdk = _run([str(venv / "bin" / "python"), "-c", SDK_ROUND_TRIP], cwd=outside)
    assert sdk.returncode == 0, sdk.stderr
    assert Path(sdk.stdout.strip()).is_relative_to(venv), sdk.stdout
