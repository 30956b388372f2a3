"""Command-line option types with declared ranges: the one way a numeric or enumerated option is parsed.

Every such option of every CLI is declared with one of these as its argparse `type=`:

    parser.add_argument("--max-mb", type=options.number(float, gt=0, le=10240, unit="MB"), default=20.0)
    parser.add_argument("--method", type=options.choice("auto", "mean", "rank"), default="auto")

A value outside the declared range (negative, zero where not allowed, NaN, inf, a word, a huge number, a
misspelt choice) is refused while the command line is parsed: `cli.KitParser` prints one line naming the
option, the value and what is allowed, and exits 2 - before any model is loaded or file written. The range
is also appended to the option's --help text. tests/test_options.py walks every CLI's parser and fails on a
numeric or enumerated option that does not use these types.
"""

from __future__ import annotations

import argparse
import difflib
import math
import operator
import re
from typing import Any

from competition.config import Range, not_finite

__all__ = ["Option", "Number", "Choice", "NumberList", "Pattern", "number", "fraction", "port", "choice",
           "number_list", "device", "devices", "python_version", "kaggle_gpu"]


class Option:
    """An argparse `type=` callable: text -> value, or ArgumentTypeError saying what is allowed."""

    def describe(self) -> str:
        """What values are allowed, in words (shown in --help and in every refusal)."""
        raise NotImplementedError

    def parse(self, text: str) -> Any:
        """The value of text, or None when text is not allowed."""
        raise NotImplementedError

    def __call__(self, text: str) -> Any:
        value = self.parse(str(text).strip())
        if value is None:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed: expected {self.describe()}{self.hint(text)}")
        return value

    def hint(self, text: str) -> str:
        """An extra clause for a refusal (e.g. a close choice); '' when none."""
        return ""

    @property
    def __name__(self) -> str:  # argparse names a type by its __name__ in a few messages
        return type(self).__name__.lower()


def _bounds(bound: Range) -> list[tuple[float, str]]:
    """[(limit, operator)] of the limits a Range sets."""
    pairs = [(bound.ge, ">="), (bound.gt, ">"), (bound.le, "<="), (bound.lt, "<")]
    return [(limit, op) for limit, op in pairs if limit is not None]


def within(value: float, bound: Range) -> bool:
    """Whether a finite value satisfies every limit of bound."""
    tests = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
    finite = isinstance(value, int) or math.isfinite(value)
    return finite and all(tests[op](value, limit) for limit, op in _bounds(bound))


def _number(kind: type, text: str) -> float | int | None:
    """text as an int (digits only) or a finite float; None when it is neither."""
    try:
        value = int(text, 10) if kind is int else float(text)
    except ValueError:
        return None
    return value if kind is int or math.isfinite(value) else None


class Number(Option):
    """An int or float within a Range (finite always: NaN and inf are refused)."""

    def __init__(self, kind: type, bound: Range, unit: str = ""):
        if kind not in (int, float):
            raise TypeError(f"options.number: kind must be int or float, not {kind!r}")
        self.kind, self.bound, self.unit = kind, bound, unit

    def describe(self) -> str:
        limits = " and ".join(f"{op} {limit:g}" for limit, op in _bounds(self.bound))
        what = "an integer" if self.kind is int else "a number"
        return f"{what}{' ' + limits if limits else ''}{' (' + self.unit + ')' if self.unit else ''}"

    def parse(self, text: str) -> float | int | None:
        value = _number(self.kind, text)
        return value if value is not None and within(value, self.bound) else None

    def hint(self, text: str) -> str:
        """NaN or an infinity (any spelling) is named as such: a finite number is needed."""
        return " (NaN and infinity are not values here: give a finite number)" if not_finite(text) else ""


class Choice(Option):
    """One of a fixed set of words (exact spelling; a close one is suggested)."""

    def __init__(self, *values: str):
        if not values:
            raise TypeError("options.choice needs at least one value")
        self.values = tuple(values)

    def describe(self) -> str:
        return "one of " + ", ".join(self.values)

    def parse(self, text: str) -> str | None:
        return text if text in self.values else None

    def hint(self, text: str) -> str:
        close = difflib.get_close_matches(str(text).strip().lower(), [v.lower() for v in self.values], n=1)
        return f" (did you mean {self.values[[v.lower() for v in self.values].index(close[0])]!r}?)" if close else ""


class NumberList(Option):
    """Comma-separated integers, each within a Range, each at most once: `0,2` -> [0, 2] (as_text: the checked
    text itself, for a command that parses it further; '' stays '' as 'not given')."""

    def __init__(self, bound: Range, what: str = "numbers", as_text: bool = False):
        self.item, self.what, self.as_text = Number(int, bound), what, as_text

    def describe(self) -> str:
        return f"comma-separated {self.what}, each once, each {self.item.describe().removeprefix('an ')}"

    def parse(self, text: str) -> list[int] | str | None:
        if self.as_text and text == "":
            return text
        items = [self.item.parse(part.strip()) for part in text.split(",")]
        if not text or None in items or len(set(items)) != len(items):
            return None
        return ",".join(map(str, items)) if self.as_text else items


class Pattern(Option):
    """Text matching a regular expression (device names and the like), described by examples."""

    def __init__(self, regex: str, describe: str):
        self.regex, self.text = re.compile(regex), describe

    def describe(self) -> str:
        return self.text

    def parse(self, text: str) -> str | None:
        return text if self.regex.fullmatch(text) else None


def number(kind: type = float, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, unit: str = "") -> Number:
    """An int or float option within [ge|gt, le|lt] (inclusive ge/le, exclusive gt/lt)."""
    return Number(kind, Range(ge=ge, gt=gt, le=le, lt=lt), unit)


def fraction(low_open: bool = False, high_open: bool = False) -> Number:
    """A float in [0, 1] (ends excluded when asked)."""
    return number(float, gt=0.0 if low_open else None, ge=None if low_open else 0.0,
                  lt=1.0 if high_open else None, le=None if high_open else 1.0)


def port() -> Number:
    """A TCP port to listen on: 1..65535."""
    return number(int, ge=1, le=65535)


def choice(*values: str) -> Choice:
    """One of values, spelt exactly."""
    return Choice(*values)


def number_list(ge: int = 0, le: int = 999, what: str = "numbers", as_text: bool = False) -> NumberList:
    """Comma-separated distinct integers within [ge, le]: `0,1` (as_text: returned as checked text)."""
    return NumberList(Range(ge=ge, le=le), what, as_text)


DEVICE = r"cpu|cuda|cuda:\d{1,2}"


def device(auto: bool = True, empty: bool = False) -> Pattern:
    """A torch device name: auto (when allowed), cpu, cuda or cuda:N ('' too when empty means 'the config's')."""
    regex = "|".join(["auto"] * auto + [DEVICE] + [""] * empty)
    return Pattern(f"(?:{regex})", f"{'auto, ' if auto else ''}cpu, cuda or cuda:N")


class DeviceList(Pattern):
    """A `--devices` list whose CUDA devices must exist on this machine (counted when the option is parsed)."""

    def __call__(self, text: str) -> str:
        value = super().__call__(text)
        check_devices(value, "")  # argparse names the option
        return value


def check_devices(text: str, option: str = "--devices") -> list[str]:
    """The devices of a list (`0,1` -> cuda:0,cuda:1), once every CUDA one is visible; a device listed twice is
    allowed (logged: its processes share it). Raises ArgumentTypeError naming the visible devices otherwise."""
    import logging

    import torch

    names = [f"cuda:{d}" if d.isdigit() else ("cuda:0" if d == "cuda" else d)
             for d in (d.strip() for d in str(text).split(",")) if d]
    count = torch.cuda.device_count()
    absent = [n for n in dict.fromkeys(names) if n.startswith("cuda:") and int(n.split(":")[1]) >= count]
    if absent:
        seen = (f"the visible CUDA devices are {','.join(map(str, range(count)))}" if count else
                "no CUDA device is visible on this machine")
        use = f"{','.join(map(str, range(count)))} or cpu,cpu" if count else "cpu,cpu (one process per cpu entry)"
        raise argparse.ArgumentTypeError(f"{option + ' ' if option else ''}{text!r} names {', '.join(absent)}, but "
                                         f"{seen} - use {use}")
    for name in [n for n in dict.fromkeys(names) if names.count(n) > 1 and n != "cpu"]:
        logging.getLogger(__name__).info("%s %s lists %s %d times: %d processes will share it",
                                         option or "--devices", text, name, names.count(name), names.count(name))
    return names


def devices(empty: bool = False) -> Pattern:
    """A comma-separated list of devices, one process each: `0,1` (GPU numbers), `cuda:0,cuda:1` or `cpu,cpu`."""
    item = rf"(?:\d{{1,2}}|{DEVICE})"
    return DeviceList(rf"{item}(?:,{item})*{'|' if empty else ''}", "comma-separated devices: GPU numbers (0,1), "
                   "cuda:N or cpu")


def python_version() -> Pattern:
    """A Python version to fetch wheels for: 3.N ('' = this interpreter's)."""
    return Pattern(r"|3\.\d{1,2}", "a Python version such as 3.11")


def kaggle_gpu() -> Pattern:
    """A Kaggle GPU machine shape (the kit's kernel trains on a GPU): Nvidia..., e.g. NvidiaTeslaT4 (2x T4)."""
    return Pattern(r"Nvidia[A-Za-z0-9]{2,40}", "a Kaggle GPU machine shape such as NvidiaTeslaT4 (2x T4)")


# Kaggle's machine shapes (`kaggle kernels push --accelerator`, kernel-metadata.json machine_shape) as the kaggle CLI's
# docs list them (docs/kernels.md, "Accelerators available as of Sep 2026"), by kind; "cpu" is the kit's word for a
# kernel without accelerator (Kaggle has no shape name for it). Kaggle adds shapes: a well-formed Nvidia... name not
# listed here is passed on with a warning (see Accelerator); add it here once it is known.
KAGGLE_MACHINES = {"NvidiaTeslaT4": "gpu", "NvidiaTeslaT4Highmem": "gpu", "NvidiaL4": "gpu", "NvidiaL4X1": "gpu",
                   "NvidiaTeslaA100": "gpu", "NvidiaH100": "gpu", "NvidiaRtxPro6000": "gpu", "TpuV5E8": "tpu",
                   "TpuV6E8": "tpu", "cpu": "cpu"}
# retired shape -> what Kaggle runs instead (the kaggle CLI 2.x warns about these; the session is substituted)
RETIRED_MACHINES = {"NvidiaTeslaP100": "NvidiaTeslaT4", "TpuV38": "TpuV5E8", "Tpu1VmV38": "TpuV5E8", "TpuV232": "cpu",
                    "TpuV2256": "cpu"}
# short names people type -> the listed shape they mean (suggested, never accepted: the refusal names the shape)
MACHINE_ALIASES = {"t4": "NvidiaTeslaT4", "teslat4": "NvidiaTeslaT4", "nvidiat4": "NvidiaTeslaT4",
                   "t4x2": "NvidiaTeslaT4", "gput4": "NvidiaTeslaT4", "gput4x2": "NvidiaTeslaT4",
                   "gpu": "NvidiaTeslaT4", "cuda": "NvidiaTeslaT4", "nvidia": "NvidiaTeslaT4",
                   "t4highmem": "NvidiaTeslaT4Highmem", "l4": "NvidiaL4",
                   "l4x1": "NvidiaL4X1", "a100": "NvidiaTeslaA100", "nvidiaa100": "NvidiaTeslaA100",
                   "h100": "NvidiaH100", "rtxpro6000": "NvidiaRtxPro6000", "rtx6000": "NvidiaRtxPro6000",
                   "tpu": "TpuV5E8", "tpuv5": "TpuV5E8", "v5e8": "TpuV5E8", "tpuv6": "TpuV6E8", "v6e8": "TpuV6E8",
                   "p100": "NvidiaTeslaP100", "teslap100": "NvidiaTeslaP100", "nvidiap100": "NvidiaTeslaP100",
                   "tpuv3": "TpuV38", "none": "cpu", "nogpu": "cpu"}
KIND_WORDS = {"gpu": "a GPU shape", "tpu": "a TPU shape", "cpu": "no accelerator (a CPU kernel)"}


def machine_key(text: str) -> str:
    """A machine name compared without case, spaces, dashes, dots or underscores: 'Nvidia Tesla-T4' -> nvidiateslat4."""
    return re.sub(r"[\s_.\-]+", "", str(text)).lower()


class Accelerator(Option):
    """A Kaggle machine shape of the allowed kinds, spelt as Kaggle spells it whatever the case, spaces or dashes
    typed; a near miss (NvidiaTeslaT4x2, T4, P100, gpu, tpu, a retired shape) is refused naming the shape meant; a
    well-formed Nvidia... name that is near no listed shape is passed on as typed (Kaggle adds shapes: warned by
    `unlisted`, and its speed factor is assumed)."""

    def __init__(self, kinds: tuple = ("gpu",), why: str = ""):
        self.kinds, self.why = tuple(kinds), why
        self.names = {machine_key(n): n for n in KAGGLE_MACHINES}

    def describe(self) -> str:
        names = ", ".join(n for n, k in KAGGLE_MACHINES.items() if k in self.kinds)
        more = " (an unlisted NvidiaXxx shape is passed on with a warning)" if "gpu" in self.kinds else ""
        return f"a Kaggle machine shape: {names}{more}"

    def parse(self, text: str) -> str | None:
        key = machine_key(text)
        if key in self.names:
            return self.names[key] if KAGGLE_MACHINES[self.names[key]] in self.kinds else None
        if self.meant(key) or "gpu" not in self.kinds or not re.fullmatch(r"nvidia[a-z0-9]{2,40}", key):
            return None
        return "Nvidia" + re.sub(r"[\s_.\-]+", "", text)[6:]  # the typed spelling after 'Nvidia'

    def meant(self, key: str) -> str:
        """The listed (or retired) shape a near miss means; '' when key is near none."""
        retired = {machine_key(n): n for n in RETIRED_MACHINES}
        if key in retired or key in MACHINE_ALIASES:
            return retired.get(key) or MACHINE_ALIASES[key]
        counted = [n for k, n in self.names.items() if re.fullmatch(re.escape(k) + r"x\d{1,2}", key)]  # ...T4x2
        known = {**self.names, **retired}
        close = [k for k in difflib.get_close_matches(key, list(known), n=3, cutoff=0.85)
                 if re.sub(r"\d", "", k) != re.sub(r"\d", "", key)]  # H200 is another GPU, not a typo of H100
        return counted[0] if counted else (known[close[0]] if close else "")

    def hint(self, text: str) -> str:
        key = machine_key(text)
        pick = next(n for n, k in KAGGLE_MACHINES.items() if k in self.kinds)
        name = self.names.get(key) or self.meant(key)
        if not name:
            loose = difflib.get_close_matches(key, list(self.names), n=1, cutoff=0.6)
            return f" (did you mean {self.names[loose[0]]}?)" if loose else ""
        if name in RETIRED_MACHINES:
            new = RETIRED_MACHINES[name]
            return (f" ({name} is retired on Kaggle: its sessions run on {new} instead - pass "
                    f"{new if KAGGLE_MACHINES[new] in self.kinds else pick})")
        if KAGGLE_MACHINES[name] not in self.kinds:
            return f" ({name} is {KIND_WORDS[KAGGLE_MACHINES[name]]}: {self.why or 'not usable here'} - pass {pick})"
        return f" (did you mean {name}?)"

    @staticmethod
    def unlisted(name: str) -> str:
        """A warning for a shape passed on without being listed ('' for a listed one)."""
        if name in KAGGLE_MACHINES:
            return ""
        return (f"--accelerator {name} is not among the Kaggle machine shapes the kit lists (competition/options.py "
                f"KAGGLE_MACHINES): passed on as typed; Kaggle refuses it if it has no such shape")


def accelerator(kinds: tuple = ("gpu",), why: str = "") -> Accelerator:
    """A Kaggle machine shape (`--accelerator`) of the given kinds (gpu, cpu, tpu); why: why the others are refused."""
    return Accelerator(kinds, why)
