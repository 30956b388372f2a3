"""The one way the kit runs the kaggle CLI: an argument list (never a shell string), a timeout, credentials
masked in everything it returns, and failures turned into one message that says what to do.

Used by `competition.submit` (uploads) and `competition.kaggle_kernel` (datasets, kernels, outputs). The kaggle CLI
(2.x) reads credentials itself, in this order: an API token (KAGGLE_API_TOKEN, the token or a file holding it,
else ~/.kaggle/access_token), a legacy key (KAGGLE_USERNAME / KAGGLE_KEY, else ~/.kaggle/kaggle.json or
$KAGGLE_CONFIG_DIR/kaggle.json), then the OAuth login `kaggle auth login` keeps in ~/.kaggle/credentials.json.
The kit never reads a key except to mask it. KIT_KAGGLE_TIMEOUT (seconds, default 300) bounds one CLI call; it is
read and checked when a call is made, so a bad value fails that call with one line, never an import.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from competition import options
from competition.errors import KitError

log = logging.getLogger(__name__)
TIMEOUT_S = 300.0  # default seconds to wait for one kaggle CLI call (KIT_KAGGLE_TIMEOUT overrides)
TIMEOUT_RANGE = options.number(float, gt=0, le=86400, unit="seconds")


class KaggleError(KitError, RuntimeError):
    """A kaggle CLI call failed; the message says why and what to do."""


def config_dir() -> Path:
    """Where the kaggle CLI keeps kaggle.json / access_token."""
    return Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")


def timeout_s() -> float:
    """KIT_KAGGLE_TIMEOUT (seconds, read now), else 300; a bad value is refused naming the variable."""
    raw = os.environ.get("KIT_KAGGLE_TIMEOUT", "").strip()
    if not raw:
        return TIMEOUT_S
    value = TIMEOUT_RANGE.parse(raw)
    if value is None:
        raise KaggleError(f"KIT_KAGGLE_TIMEOUT={raw!r} is not allowed: expected {TIMEOUT_RANGE.describe()}; fix it "
                          f"or unset it (default {TIMEOUT_S:g})")
    return value


def token_files() -> list[Path]:
    """Files the kaggle CLI may read an API token from (kaggle 2.x: ~/.kaggle/access_token[.txt], or the file
    KAGGLE_API_TOKEN names), plus the same names in $KAGGLE_CONFIG_DIR."""
    names = ("access_token", "access_token.txt")
    files = [folder / n for folder in dict.fromkeys((config_dir(), Path.home() / ".kaggle")) for n in names]
    env = os.environ.get("KAGGLE_API_TOKEN", "")
    return files + ([Path(env)] if env and len(env) < 4096 and Path(env).is_file() else [])


def secrets() -> list[str]:
    """Every credential value this process could see, for masking (never printed, never logged)."""
    found = [os.environ.get(k, "") for k in ("KAGGLE_KEY", "KAGGLE_API_TOKEN")]
    try:
        found.append(str(json.loads((config_dir() / "kaggle.json").read_text()).get("key", "")))
    except (OSError, ValueError, AttributeError):
        pass
    for file in token_files():
        try:
            found.append(file.read_text().strip())
        except (OSError, UnicodeDecodeError):
            pass
    return [s for s in found if len(s) >= 6]


def redact(text: str) -> str:
    """text with every known credential replaced by ***."""
    for secret in secrets():
        text = text.replace(secret, "***")
    return text


def username(explicit: str = "") -> str:
    """The Kaggle user that owns datasets and kernels: --user, else KAGGLE_USERNAME, else kaggle.json's username."""
    if explicit:
        return explicit
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    try:
        name = json.loads((config_dir() / "kaggle.json").read_text()).get("username", "")
    except (OSError, ValueError, AttributeError):
        name = ""
    if not name:
        raise KaggleError("no Kaggle user name: pass --user NAME or set KAGGLE_USERNAME (an API token from `kaggle "
                          "auth login`, ~/.kaggle/access_token or KAGGLE_API_TOKEN does not say whose it is offline), "
                          "or put a legacy kaggle.json (with its username) in ~/.kaggle/")
    return name


CREDENTIALS = ("no valid Kaggle credentials: run `kaggle auth login` (kaggle 2.x), or save an API token from "
               "kaggle.com > Settings > API > Generate New Token in ~/.kaggle/access_token (mode 600) or in "
               "KAGGLE_API_TOKEN; a legacy key also works: put kaggle.json in ~/.kaggle/ (mode 600) or set "
               "KAGGLE_USERNAME and KAGGLE_KEY")


def failure_kind(output: str) -> str:
    """What a failed call's output says went wrong: credentials | 403 | 404 | 400 | '' (unrecognised)."""
    text = output.lower()
    if "kaggle.json" in text or "could not find" in text and "credential" in text or "401" in text \
            or "unauthorized" in text or "authentication required" in text or "invalid credentials" in text \
            or "kaggle auth login" in text or "access_token" in text:
        return "credentials"
    if "403" in text or "forbidden" in text:
        return "403"
    if "404" in text or "not found" in text or "could not find competition" in text:
        return "404"
    if "400" in text or "bad request" in text:
        return "400"
    return ""


def explain_failure(output: str, what: str) -> str:
    """Map kaggle CLI failure output to a message saying what to do (output already redacted)."""
    return {"credentials": CREDENTIALS,
            "403": f"403 Forbidden for {what}: accept the competition's rules on its Kaggle page (Join Competition) "
                   f"and check the slug / user name",
            "404": f"404: {what} not found - check the slug (competition.slug in competition.yaml) and the user name",
            "400": f"400 Bad Request for {what}: Kaggle refused the request (daily limit, metadata, or file format); "
                   f"the CLI said: {last_line(output)}",
            }.get(failure_kind(output), f"{what} failed: {last_line(output)}")


def last_line(output: str) -> str:
    """The last line of a CLI output (300 characters at most), for error messages."""
    return output.strip().splitlines()[-1][:300] if output.strip() else "no output"


def find_cli(kaggle: str = "kaggle") -> str:
    """The kaggle executable: on PATH, else beside this interpreter (run.sh uses .venv/bin/python without
    putting .venv/bin on PATH)."""
    exe = shutil.which(kaggle) or shutil.which(kaggle, path=str(Path(sys.executable).parent))
    if exe is None:
        raise KaggleError("the kaggle CLI is not installed in this environment: pip install kaggle six")
    return exe


def run(args: list[str], what: str, kaggle: str = "kaggle", check: bool = True,
        timeout: float | None = None) -> tuple[int, str]:
    """Run `kaggle ARGS`; return (exit code, redacted stdout+stderr). check=True raises KaggleError on a non-zero
    exit. The kaggle CLI must be on PATH (pip install kaggle six)."""
    timeout = timeout or timeout_s()
    exe = find_cli(kaggle)
    log.info("kaggle %s", " ".join(args))
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise KaggleError(f"the kaggle CLI gave no answer in {timeout:g} s ({what}); it MAY have gone through - check "
                          f"on kaggle.com before retrying") from None
    output = redact((proc.stdout or "") + (proc.stderr or ""))
    if check and proc.returncode != 0:
        raise KaggleError(explain_failure(output, what))
    return proc.returncode, output
