"""What the CPU in hand is (/proc/cpuinfo), and a name for the machine under which what was found out on it
is remembered."""
import functools
import hashlib
import platform

import torch


@functools.lru_cache(maxsize=1)
def cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo (empty elsewhere)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if not sep:
                    break
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> frozenset:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    return frozenset(cpuinfo().get("flags", "").split())


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers."""
    info = cpuinfo()
    if not info:
        return platform.processor() or platform.machine()
    return f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"


def machine() -> str:
    """This machine as the caches of `ldm.accel` key it: CPU model and flags, torch version, thread count."""
    flags = hashlib.sha1(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:12]
    return f"{cpu_model()} | flags {flags} | torch {torch.__version__} | {torch.get_num_threads()} threads"
