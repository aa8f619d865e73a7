"""Loads each data file named on stdin (one JSON list of [path, in_memory]) and prints one
JSON line per case: {"case", "outcome": "loaded" | "refused" | "error", "message"}.

Run in its own process by test_data_fuzz.py, so that a crash (a segmentation fault) or a
hang is seen as such: before each case it prints {"start": case}, and a watchdog thread
(faulthandler) ends the process when a case runs past its timeout. The process's data
memory is capped, so that an allocation a file dictates fails instead of taking the machine.
"""

import faulthandler
import json
import resource
import sys
import traceback

from pyro_vae.data import load_data, split_chunks
from pyro_vae.errors import DataError
from pyro_vae.spec import DataSpec

TIMEOUT = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
MEMORY = 2 * 2**30  # bytes of data memory beyond what the imports took


def _data_memory() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def one(path: str, in_memory) -> dict:
    try:
        data = load_data(DataSpec(path=path, in_memory=in_memory), seed=0)
        for split in data.splits.values():  # every row read, as training and evaluation read them
            for _ in split_chunks(split):
                pass
        return {"outcome": "loaded", "message": f"{ {k: tuple(v.shape) for k, v in data.splits.items()} }"}
    except DataError as exc:
        return {"outcome": "refused", "message": str(exc)}
    except Exception:  # noqa: BLE001  (what the fuzzer looks for)
        return {"outcome": "error", "message": traceback.format_exc()}


def main() -> None:
    cases = json.load(sys.stdin)
    limit = _data_memory() + MEMORY
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    for path, in_memory in cases:
        print(json.dumps({"start": path}), flush=True)
        faulthandler.dump_traceback_later(TIMEOUT, exit=True)
        result = one(path, in_memory)
        faulthandler.cancel_dump_traceback_later()
        print(json.dumps({"case": path, **result}), flush=True)


if __name__ == "__main__":
    main()
